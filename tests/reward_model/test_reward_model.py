"""The ORM stage: ties loss (hand-computed), data validation, save/load, scorer, end-to-end train.py runs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from quark_lightning.data.preferences import (
    feedback_to_pairs,
    load_online_feedback,
    load_preference_pairs,
    question_key,
    split_by_question,
)
from quark_lightning.data.schema import DataValidationError
from quark_lightning.reward_model.ties_loss import (
    center_loss,
    diff_loss,
    preference_metrics,
    same_loss,
    ties_objective,
)
from tests.conftest import REPO, write_jsonl


def softplus(x: float) -> float:  # -log σ(-x)
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------ fixtures: small pair / feedback files
QUESTIONS = [
    "I have a sore throat and a mild fever since yesterday. What should I do?",
    "My child has a runny nose and a cough. Do they need antibiotics?",
    "I sprained my ankle playing football. How should I look after it?",
    "I get heartburn after big meals. What can help?",
    "How much water should an adult drink in a day?",
    "I feel dizzy when I stand up quickly. Is that serious?",
    "What can I do about a tension headache at work?",
    "I was stung by a bee and the spot is swollen. What should I do?",
]
GOOD = "Rest, drink fluids and use paracetamol if needed. See a doctor if it gets worse or lasts more than a few days."
GOOD2 = (
    "Rest and drink plenty of fluids. Paracetamol can help; see a doctor if it worsens or does not settle."
)
BAD = "Take leftover antibiotics and double the dose. You never need to see a doctor for this."


def msgs(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def fixture_pairs() -> list[dict]:
    rows = []
    for i, q in enumerate(QUESTIONS):
        rows.append(
            {"id": f"pp-{i}a", "messages": msgs(q), "response_a": GOOD, "response_b": BAD, "preference": "a"}
        )
        rows.append(
            {"id": f"pp-{i}b", "messages": msgs(q), "response_a": BAD, "response_b": GOOD2, "preference": "b"}
        )
        rows.append(
            {
                "id": f"pp-{i}c",
                "messages": msgs(q),
                "response_a": GOOD,
                "response_b": GOOD2,
                "preference": "tie",
            }
        )
    return rows


def fixture_feedback() -> list[dict]:
    rows = []
    for i, q in enumerate(QUESTIONS):
        rows.append({"id": f"fb-{i}a", "messages": msgs(q), "response": GOOD, "rating": 1, "tags": []})
        rows.append(
            {"id": f"fb-{i}b", "messages": msgs(q), "response": GOOD2, "rating": 1, "tags": ["helpful"]}
        )
        rows.append(
            {"id": f"fb-{i}c", "messages": msgs(q), "response": BAD, "rating": -1, "tags": ["unsafe"]}
        )
    return rows


@pytest.fixture()
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", fixture_pairs())


# ------------------------------------------------------------------ ties loss, by hand
def test_diff_and_same_losses_by_hand():
    assert diff_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(softplus(-1.0))
    r1, r2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    # margin form, m = 0: −log σ(−|Δ|) = softplus(|Δ|)
    assert same_loss(r1, r2).tolist() == pytest.approx([softplus(1.0), math.log(2.0)])
    # m = 0.5: −log σ(0.5 − 1) = softplus(0.5)
    assert same_loss(r1, r2, margin=0.5)[0].item() == pytest.approx(softplus(0.5))
    # literal transcription: −log σ(|Δ|) = softplus(−|Δ|)
    assert same_loss(r1, r2, literal_paper_form=True).tolist() == pytest.approx(
        [softplus(-1.0), math.log(2.0)]
    )
    assert center_loss(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 2.0])).tolist() == [9.0, 0.0]


def test_ties_objective_by_hand():
    r_a = torch.tensor([2.0, 0.0, 1.0, 1.0])
    r_b = torch.tensor([0.0, 1.0, 1.0, 3.0])
    pref = torch.tensor([1, -1, 0, 0])  # a wins, b wins, tie, tie
    out = ties_objective(r_a, r_b, pref, ties_lambda=0.5, ties_margin=0.0, center_rewards_coefficient=0.1)
    l_diff = (softplus(-2.0) + softplus(-1.0)) / 2  # r_w − r_l = 2 and 1
    l_same = (math.log(2.0) + softplus(2.0)) / 2  # |Δ| = 0 and 2
    l_center = (4 + 1 + 4 + 16) / 4
    assert out.loss_diff.item() == pytest.approx(l_diff)
    assert out.loss_same.item() == pytest.approx(l_same)
    assert out.loss_center.item() == pytest.approx(l_center)
    assert out.loss.item() == pytest.approx(l_diff + 0.5 * l_same + 0.1 * l_center)
    assert (out.n_diff, out.n_same) == (2, 2)
    # λ = 0 is plain Bradley–Terry; a batch without ties has L_same = 0 (not NaN)
    bt = ties_objective(r_a[:2], r_b[:2], pref[:2], ties_lambda=0.0)
    assert bt.loss.item() == pytest.approx(l_diff) and bt.loss_same.item() == 0.0


def test_margin_form_pulls_ties_together_and_literal_form_pushes_them_apart():
    def grad(literal: bool, margin: float = 0.0) -> tuple[float, float]:
        r1, r2 = torch.tensor([0.3], requires_grad=True), torch.tensor([-0.2], requires_grad=True)
        ties_objective(
            r1, r2, torch.tensor([0]), ties_lambda=1.0, ties_margin=margin, literal_paper_form=literal
        ).loss.backward()
        return r1.grad.item(), r2.grad.item()

    # margin form: dL/dΔ = σ(|Δ| − m) · sign(Δ) > 0, so gradient descent shrinks Δ = r1 − r2 = 0.5
    g1, g2 = grad(literal=False)
    assert g1 == pytest.approx(1 / (1 + math.exp(-0.5))) and g2 == pytest.approx(-g1)
    assert grad(literal=False, margin=1.0)[0] == pytest.approx(1 / (1 + math.exp(0.5)))  # weaker below m
    # literal form: dL/dΔ = −σ(−|Δ|) · sign(Δ) < 0, so gradient descent grows Δ
    l1, l2 = grad(literal=True)
    assert l1 == pytest.approx(-1 / (1 + math.exp(0.5))) and l2 == pytest.approx(-l1)
    # one SGD step (lr 0.1) on each: |Δ| shrinks with the margin form, grows with the literal form
    assert abs((0.3 - 0.1 * g1) - (-0.2 - 0.1 * g2)) < 0.5 < abs((0.3 - 0.1 * l1) - (-0.2 - 0.1 * l2))


def test_preference_metrics_by_hand():
    r_a = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.2])
    r_b = torch.tensor([0.0, 1.0, 1.0, 3.0, 0.0])
    pref = torch.tensor([1, 1, -1, 0, 0])  # right, wrong, exact score tie counts wrong; two tie pairs
    m = preference_metrics(r_a, r_b, pref, tie_threshold=0.5)
    assert m["pair_accuracy"] == pytest.approx(1 / 3)
    assert m["pair_margin"] == pytest.approx((2.0 - 1.0 + 0.0) / 3)
    assert m["tie_accuracy"] == pytest.approx(0.5)  # |Δ| = 2 (no), 0.2 (yes)
    assert m["tie_abs_delta"] == pytest.approx(1.1)
    assert math.isnan(preference_metrics(r_a[:1], r_b[:1], pref[:1])["tie_abs_delta"])


# ------------------------------------------------------------------ data
def test_preference_pair_validation_reports_file_line_field(tmp_path):
    good = fixture_pairs()[0]
    broken = write_jsonl(tmp_path / "broken.jsonl", [good, "{not json"])
    with pytest.raises(DataValidationError) as err:
        load_preference_pairs(broken)
    assert err.value.errors == [
        f"{broken}:2: invalid JSON at column 2: Expecting property name enclosed in double quotes "
        "(each line must be one complete JSON object)"
    ]
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            good,
            dict(good, id="x2", preference="A"),
            dict(good, id="x3", response_b="  "),
            dict(good, id="x4", messages=[]),
        ],
    )
    with pytest.raises(DataValidationError) as err:
        load_preference_pairs(path)
    assert err.value.errors == [
        f"{path}:2: field 'preference': got 'A', expected one of 'a', 'b', 'tie' "
        "('a': response_a is better, 'tie': no significant difference)",
        f"{path}:3: field 'response_b': must be a non-empty string, got '  '",
        f'{path}:4: field \'messages\': must be a non-empty list of {{"role", "content"}} objects, got []',
    ]
    same = write_jsonl(tmp_path / "same.jsonl", [dict(good, response_b=good["response_a"])])
    with pytest.raises(
        DataValidationError, match=r"same.jsonl:1: field 'preference': got 'a' but .* identical"
    ):
        load_preference_pairs(same)
    dup = write_jsonl(tmp_path / "dup.jsonl", [good, good])
    with pytest.raises(DataValidationError, match=r"dup.jsonl:2: field 'id': 'pp-0a' already used on line 1"):
        load_preference_pairs(dup)
    with pytest.raises(DataValidationError, match="file not found"):
        load_preference_pairs(str(tmp_path / "missing.jsonl"))


def test_feedback_validation_reports_file_line_field(tmp_path):
    good = fixture_feedback()[0]
    path = write_jsonl(
        tmp_path / "fb.jsonl",
        [
            good,
            dict(good, id="f2", rating=0),
            dict(good, id="f3", rating=True),
            dict(good, id="f4", tags="x"),
        ],
    )
    with pytest.raises(DataValidationError) as err:
        load_online_feedback(path)
    assert err.value.errors == [
        f"{path}:2: field 'rating': got 0, expected 1 (liked) or -1 (disliked)",
        f"{path}:3: field 'rating': got True, expected 1 (liked) or -1 (disliked)",
        f'{path}:4: field \'tags\': must be a list of non-empty strings (e.g. ["verbose", "unsafe"]), '
        "got 'x'",
    ]
    no_id = write_jsonl(tmp_path / "noid.jsonl", [{k: v for k, v in good.items() if k != "id"}])
    assert load_online_feedback(no_id)[0]["id"] == "noid.jsonl:1"  # id is optional


def test_feedback_to_pairs_construction():
    rows = fixture_feedback()[:3]  # one question: two liked, one disliked
    rows.append(dict(rows[0], id="dup", messages=msgs(QUESTIONS[0] + "  ")))  # same question, same answer
    pairs = feedback_to_pairs(rows, ties=True, seed=0)
    preferred = [p for p in pairs if p["preference"] != "tie"]
    ties = [p for p in pairs if p["preference"] == "tie"]
    assert len(preferred) == 2 and len(ties) == 1  # liked×disliked, liked-liked (duplicate counted once)
    for p in preferred:
        winner = p["response_a"] if p["preference"] == "a" else p["response_b"]
        loser = p["response_b"] if p["preference"] == "a" else p["response_a"]
        assert winner in (GOOD, GOOD2) and loser == BAD
    assert {ties[0]["response_a"], ties[0]["response_b"]} == {GOOD, GOOD2}
    assert len(feedback_to_pairs(rows, ties=False)) == 2
    assert len(feedback_to_pairs(rows, ties=True, max_pairs_per_question=1)) == 2  # one of each kind


def test_split_by_question_is_seeded_and_disjoint():
    pairs = fixture_pairs()
    train, val = split_by_question(pairs, 0.25, seed=3)
    assert len(train) + len(val) == len(pairs) and len(val) == 2 * 3  # 2 of 8 questions, 3 pairs each
    assert not {question_key(p["messages"]) for p in train} & {question_key(p["messages"]) for p in val}
    assert split_by_question(pairs, 0.25, seed=3) == (train, val)


# ------------------------------------------------------------------ model, save / load, scorer
@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    torch.manual_seed(0)
    model = ScalarRewardModel.from_backbone(tiny_model_dir)
    out = tmp_path_factory.mktemp("rm") / "reward_model"
    model.save_pretrained(str(out), summary={"ties_lambda": 0.5, "metrics": {"x": float("nan")}})
    return str(out), model


def test_save_and_from_pretrained_round_trip_gives_identical_scores(reward_model_dir):
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    path, model = reward_model_dir
    assert {"config.json", "model.safetensors", "reward_head.safetensors", "reward_model.json"} <= set(
        os.listdir(path)
    )
    meta = json.load(open(os.path.join(path, "reward_model.json")))
    assert meta["base_model_type"] == "llama" and meta["hidden_size"] == meta["head_hidden_size"] == 32
    assert meta["summary"] == {"ties_lambda": 0.5, "metrics": {"x": None}}
    loaded = ScalarRewardModel.from_pretrained(path)
    questions = [msgs(q) for q in QUESTIONS[:3]]
    answers = [GOOD, BAD, GOOD2 * 3]
    model.eval()
    expected = model.score(questions, answers)
    assert torch.equal(loaded.score(questions, answers), expected)
    # batching with right padding changes nothing
    single = torch.cat([loaded.score([q], [a]) for q, a in zip(questions, answers)])
    assert torch.allclose(single, expected, atol=1e-5)
    # a run dir works too (its reward_model/ subdirectory is used)
    assert torch.equal(
        ScalarRewardModel.from_pretrained(os.path.dirname(path)).score(questions, answers), expected
    )


def test_lora_reward_model_is_merged_on_save(tiny_model_dir, tmp_path):
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    model = ScalarRewardModel.from_backbone(tiny_model_dir, lora={"enabled": True, "r": 4, "alpha": 8})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    with torch.no_grad():  # a non-zero adapter, so merging matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    q, a = [msgs(QUESTIONS[0])], [GOOD]
    before = model.score(q, a)
    model.save_pretrained(str(tmp_path / "rm"))
    loaded = ScalarRewardModel.from_pretrained(str(tmp_path / "rm"))
    assert not any("lora" in k for k in loaded.state_dict())
    assert torch.allclose(loaded.score(q, a), before, atol=1e-5)


def test_orm_scorer_scores_a_batch_frozen(reward_model_dir):
    from quark_lightning.scorers.orm import ORMScorer

    path, _ = reward_model_dir
    scorer = ORMScorer(path, batch_size=2)
    assert isinstance(scorer.model, torch.nn.Module) and not scorer.model.training
    assert not any(p.requires_grad for p in scorer.model.parameters())
    prompts = [{"id": f"q{i}", "messages": msgs(q)} for i, q in enumerate(QUESTIONS[:3])]
    result = scorer.score(prompts, [GOOD, BAD, GOOD2])
    assert result.scores.shape == (3,) and result.scores.dtype == torch.float32
    assert torch.isfinite(result.scores).all()
    assert result.findings[1] == [f"reward model score {result.scores[1].item():.2f}"]


def test_orm_scorer_missing_directory_says_how_to_train(tmp_path):
    from quark_lightning.reward_model.scalar_rm import RewardModelLoadError
    from quark_lightning.scorers.orm import ORMScorer

    with pytest.raises(RewardModelLoadError, match=r"does not exist.*python train.py \+experiment=rm_orm"):
        ORMScorer(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RewardModelLoadError, match=r"missing reward_model.json.*python train.py \+experiment=rm_orm"
    ):
        ORMScorer(str(tmp_path / "empty"))


def test_module_training_moves_the_model_and_logs_held_out_metrics(tiny_model_dir):
    import lightning as L

    from quark_lightning.reward_model.pair_datasets import PairDataset, evaluate_pairs
    from quark_lightning.reward_model.rm_training_module import RewardModelModule
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    torch.manual_seed(0)
    model = ScalarRewardModel.from_backbone(tiny_model_dir)
    pairs = fixture_pairs()
    train, val = split_by_question(pairs, 0.25, seed=0)
    train_set, val_set = PairDataset(model, train, 128), PairDataset(model, val, 128)
    head_before = model.head[2].weight.detach().clone()
    module = RewardModelModule(model, lr=3e-3, ties_lambda=1.0, tie_threshold=0.5)
    trainer = L.Trainer(
        max_steps=12, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, val_check_interval=12, check_val_every_n_epoch=None, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_set.loader(6, shuffle=True), val_set.loader(8))
    assert not torch.equal(model.head[2].weight, head_before)
    logged = trainer.callback_metrics
    assert {"rm/loss", "rm/loss_diff", "rm/loss_same", "val/pair_accuracy", "val/tie_accuracy"} <= set(logged)
    assert {"val/tie_abs_delta", "val/pair_margin"} <= set(logged)
    after = evaluate_pairs(model, val_set, 8)
    assert after["pair_accuracy"] == 1.0  # the fixture's bad answer is easy to spot


def test_config_errors_name_the_key():
    from hydra import compose, initialize_config_dir

    from quark_lightning.infra.errors import ConfigError
    from quark_lightning.reward_model.rm_settings import validate_reward_model_config

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(
            "train", ["+experiment=rm_orm", "reward_model.ties_lambda=-1", "reward_model.val_fraction=1"]
        )
        with pytest.raises(ConfigError) as err:
            validate_reward_model_config(cfg)
        ok = compose("train", ["+experiment=rm_online"])
    assert "reward_model.ties_lambda: got -1, expected a number >= 0 (the λ of L_same). Fix:" in str(
        err.value
    )
    assert "reward_model.val_fraction: got 1, expected a number in (0, 1)" in str(err.value)
    validate_reward_model_config(ok)
    assert ok.trainer.max_steps == ok.reward_model.steps and ok.stage == "reward_model"


# ------------------------------------------------------------------ end to end through train.py
def train_rm(tmp_path, experiment, *overrides, cache=None):
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(cache or tmp_path / "cache"), OMP_NUM_THREADS="2"
    )
    cmd = [
        sys.executable, "train.py", f"+experiment={experiment}", f"hydra.run.dir={tmp_path / 'run'}",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.vocab_size=512", *overrides,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def printed_metrics(stdout: str) -> dict[str, float]:
    m = re.search(
        r"held-out pair accuracy: ([\d.]+)\s+tie accuracy: ([\d.na]+)\s+mean \|delta\| on ties: ([\d.na]+)",
        stdout,
    )
    assert m, stdout[-2000:]
    return {"pair_accuracy": float(m[1]), "tie_accuracy": float(m[2]), "tie_abs_delta": float(m[3])}


@pytest.mark.slow
def test_rm_orm_end_to_end(tmp_path, pairs_file):
    from quark_lightning.scorers.orm import ORMScorer

    proc = train_rm(
        tmp_path, "rm_orm", f"reward_model.data_path={pairs_file}", "reward_model.steps=12",
        "reward_model.batch_size=6", "reward_model.val_fraction=0.25", "reward_model.lr=3e-3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = printed_metrics(proc.stdout)
    saved = tmp_path / "run" / "reward_model"
    assert f"Saved reward model: {saved}" in proc.stdout
    meta = json.loads((saved / "reward_model.json").read_text())
    assert meta["summary"]["held_out_metrics_after"]["pair_accuracy"] == pytest.approx(
        metrics["pair_accuracy"], abs=1e-3
    )
    assert meta["summary"]["ties_lambda"] == 0.5 and meta["summary"]["literal_paper_form"] is False
    scorer = ORMScorer(str(saved))
    scores = scorer.score([{"messages": msgs(QUESTIONS[0])}] * 2, [GOOD, BAD]).scores
    assert torch.isfinite(scores).all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in (tmp_path / "run" / "tensorboard" / "reward_model").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"rm/loss", "rm/loss_diff", "rm/loss_same", "val/pair_accuracy", "val/tie_abs_delta"} <= tags


@pytest.mark.slow
def test_rm_online_end_to_end_and_bad_rows_stop_first(tmp_path):
    fb = write_jsonl(tmp_path / "fb.jsonl", fixture_feedback())
    proc = train_rm(
        tmp_path,
        "rm_online",
        f"reward_model.data_path={fb}",
        "reward_model.steps=4",
        "reward_model.val_fraction=0.25",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train 18 pairs (12 preferred, 6 ties" in proc.stdout  # 6 questions × (2 preferred + 1 tie)
    assert (tmp_path / "run" / "reward_model" / "reward_model.json").exists()
    printed_metrics(proc.stdout)

    bad = write_jsonl(
        tmp_path / "bad.jsonl", fixture_feedback()[:2] + [dict(fixture_feedback()[2], rating=5)]
    )
    proc = train_rm(tmp_path / "b", "rm_online", f"reward_model.data_path={bad}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:3: field 'rating': got 5, expected 1 (liked) or -1 (disliked)" in proc.stderr
    assert not (tmp_path / "b" / "cache").exists()  # nothing heavy started


# ------------------------------------------------------------------ the must-show, on the bundled pairs
def run_bundled(tmp_path, *overrides) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from quark_lightning.reward_model.training import run_reward_model

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "+experiment=rm_orm",
                f"run_dir={tmp_path}",
                "~logger",
                f"model.cache_dir={tmp_path.parent / 'cache'}",
                "reward_model.steps=80",
                *overrides,
            ],
        )
    return run_reward_model(cfg)["after"]


@pytest.mark.slow
def test_bundled_pairs_ties_loss_pulls_held_out_ties_together(tmp_path):
    """Held-out accuracy beats chance; λ>0 shrinks |Δ| on held-out ties vs λ=0; the literal form grows it."""
    ties = run_bundled(tmp_path / "ties", "reward_model.ties_lambda=0.5")
    bt = run_bundled(tmp_path / "bt", "reward_model.ties_lambda=0")
    literal = run_bundled(
        tmp_path / "literal", "reward_model.ties_lambda=0.5", "reward_model.literal_paper_form=true"
    )
    print(f"\nbt {bt}\nties {ties}\nliteral {literal}")
    for metrics in (bt, ties, literal):
        assert metrics["pair_accuracy"] > 0.7 and metrics["n_ties"] >= 5
    assert ties["tie_abs_delta"] < 0.75 * bt["tie_abs_delta"]
    assert ties["tie_accuracy"] > bt["tie_accuracy"]
    assert literal["tie_abs_delta"] > bt["tie_abs_delta"] > ties["tie_abs_delta"]
