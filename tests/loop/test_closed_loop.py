"""Closed-loop supervision: a dimension made weak on purpose is diagnosed and pushed, with the reason."""

import lightning as L
import pytest
import torch

from callbacks.closed_loop import ClosedLoopSupervision
from quark_lightning.data.datamodule import AreaWeightedSampler, PromptDataModule
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.loop.loop_state import LoopState
from quark_lightning.loop.metrics import evaluation_metrics, finding_pattern
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.safety import DangerousAdviceScorer
from quark_lightning.scorers.triage import TriageScorer

LENGTH_PATTERN = "length: # words, below the minimum of #"


def weak_matrix():
    # nobody writes 500 words in 12 new tokens: the length rule fails on every answer
    return AlignmentMatrix(
        [
            Dimension(
                "format_rules",
                "format",
                FormatScorer(min_words=500, max_words=900, rules=["length"]),
                target=0.9,
            ),
            Dimension("safety", "fundamental", DangerousAdviceScorer(), risk=3.0, target=1.0),
            # the split of the old safety check: a tiny model ignores red flags (triage fails) and sends
            # nothing to the emergency department (over_triage passes), so areas differ in pass rate
            Dimension("triage", "fundamental", TriageScorer(), risk=3.0, target=1.0),
            Dimension("over_triage", "fundamental", TriageScorer("over_triage"), target=1.0),
        ]
    )


def test_finding_patterns_group_specifics():
    assert finding_pattern("length: 7 words, below the minimum of 500") == LENGTH_PATTERN
    assert finding_pattern("bad pattern 'hedging': \"it depends\"") == "bad pattern '...': '...'"
    # item ids stay: each rubric item is its own group
    assert (
        finding_pattern("missed essential e2: Tells the person to call 999")
        == "missed essential e2: Tells the person to call #"
    )


def test_diagnosis_prints_content_and_examples_that_show_their_group():
    from quark_lightning.loop.metrics import diagnose

    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(4)]
    answers = [f"answer {i}" for i in range(4)]
    e2 = "missed essential e2: Tells the person to call an ambulance now"
    findings = {
        "expert_rubric": [
            [e2, "missed essential e3: Mentions aspirin"],
            [e2],
            [e2],
            ["missed essential e3: Mentions aspirin"],
        ],
        "usefulness": [
            ["misses reference point(s): 'aspirin'"],
            [],
            ["misses reference point(s): 'rest', 'fluids'"],
            [],
        ],
    }
    passed = torch.zeros(4, 2, dtype=torch.bool)
    out = diagnose(prompts, answers, findings, passed, ["expert_rubric", "usefulness"])
    first = out[0]
    assert first["finding"] == e2 and first["count"] == 3 and first["variants"] == 1
    assert [ex["id"] for ex in first["examples"]] == ["q0", "q1"] and all(
        ex["finding"] == e2 for ex in first["examples"]
    )
    e3 = next(d for d in out if d["finding"].startswith("missed essential e3"))
    assert [ex["id"] for ex in e3["examples"]] == ["q3", "q0"]  # an answer no earlier group shows comes first
    refs = next(d for d in out if d["dimension"] == "usefulness")
    assert refs["variants"] == 2 and "'...'" not in refs["finding"] and "'" in refs["finding"]
    for d in out:
        for ex in d["examples"]:
            assert ex["finding"] in findings[d["dimension"]][int(ex["id"][1:])]  # the example shows it
    from quark_lightning.evaluation.report import _diagnosis_section

    text = _diagnosis_section({"diagnosis": out, "num_samples": 4})
    assert f"{e2} (in 3 of 4 answers, 75" in text
    assert "'...'" not in text and "e#" not in text
    assert "1 similar finding(s) in the group" in text


def test_weak_dimension_is_diagnosed_and_its_weight_and_area_share_rise(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        weak_matrix(),
        GRPOConfig(num_generations=2, lr=1e-3),
        HFGenerateEngine(max_new_tokens=12),
        aggregator="sum",
    )
    loop = ClosedLoopSupervision(
        every_n_steps=2, num_prompts=12, write_reports=False, report_dir=str(tmp_path)
    )
    dm = PromptDataModule(prompts_per_step=2, val_fraction=0.2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[loop],
    )
    trainer.fit(module, datamodule=dm)

    first = loop.history[0]
    assert first["dimensions"]["format_rules"]["pass_rate"] == 0.0
    top = [d for d in first["diagnosis"] if d["dimension"] == "format_rules"][0]
    assert top["template"] == LENGTH_PATTERN and top["share"] == 1.0 and top["examples"]
    assert top["finding"].startswith("length: ") and "#" not in top["finding"]  # printed unmasked
    assert all(finding_pattern(ex["finding"]) == LENGTH_PATTERN for ex in top["examples"])
    gain_actions = [a for a in first["actions"] if a["kind"] == "loop_gain" and a["target"] == "format_rules"]
    assert gain_actions and top["finding"] in gain_actions[0]["reason"]
    assert "loop gain 1.00 -> 2.00" in gain_actions[0]["reason"]
    assert float(module.shaping.weights[0]) == 2.0  # static weight 1 x gain 2: the weak rule now counts double
    sampling = [a for a in first["actions"] if a["kind"] == "sampling"]
    assert sampling and all("sampling share" in a["reason"] for a in sampling)
    assert dm.sampler is not None and abs(sum(dm.sampler.shares().values()) - 1.0) < 1e-6
    assert len(loop.history) >= 2  # start, every 2 steps, end

    restored = ClosedLoopSupervision()
    restored.load_state_dict(loop.state_dict())
    assert len(restored.history) == len(loop.history)
    # the reward state is the module's (RewardShaping), never the callback's: gain and area weights
    assert set(loop.state_dict()) == {"history", "weights_history"}
    saved = module.state_dict()
    assert "shaping.loop_gain" in saved and saved["shaping._extra_state"]["loop"]["area_weights"] == dm.sampler.area_weights


def test_tadw_receives_the_loop_gain():
    from quark_lightning.shaping.tadw import TriFactorWeighting

    w = TriFactorWeighting(risk=[1.0, 1.0], weakness=False, risk_priority=False, redundancy=False, eta=1.0)
    z = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]])  # both vary: both active
    w.update(z, torch.zeros(4, 2), gain=torch.tensor([3.0, 1.0]))
    # factors off (1), static weights 1: w_hat = gain = [3, 1], shares [3/4, 1/4]; floored over K = 2
    # active dimensions with w_min 0.02: w_new = 0.02 + (1 - 2 * 0.02) * [3/4, 1/4] = [0.74, 0.26];
    # eta 1 replaces the starting weights [1/2, 1/2] by w_new
    assert w.weights.tolist() == pytest.approx([0.02 + 0.96 * 0.75, 0.02 + 0.96 * 0.25])  # [0.74, 0.26]


def test_area_weighted_sampler_follows_the_weights():
    sampler = AreaWeightedSampler(["a"] * 8 + ["b"] * 2, seed=0)
    sampler.set_area_weights({"a": 1.0, "b": 9.0})
    drawn = [sampler.areas[i] for _ in range(20) for i in sampler]
    assert drawn.count("b") / len(drawn) > 0.8


def test_evaluation_metrics_per_category_and_area(bundled_records):
    matrix = weak_matrix()
    prompts = bundled_records[:6]
    answers = [p["reference"] for p in prompts]
    m = evaluation_metrics(matrix, prompts, answers, matrix.score(prompts, answers), step=7)
    assert m["step"] == 7 and m["categories"]["format"]["pass_rate"] == 0.0
    assert m["categories"]["fundamental"]["pass_rate"] == 1.0  # references are safe
    assert set(m["areas"]) == {p["area"] for p in prompts}


def _static_shaping(k: int):
    from quark_lightning.shaping.reward_shaping import RewardShaping

    return RewardShaping([f"d{i}" for i in range(k)], [1.0] * k, [1.0] * k, [None] * k)


def _evaluation(means: dict[str, float], rates: dict[str, float]) -> dict:
    return {
        "dimensions": {n: {"mean": means[n], "pass_rate": rates[n]} for n in means},
        "diagnosis": [],
    }


def test_a_dimension_that_cannot_move_has_its_gain_decayed_and_gets_it_back_when_it_moves():
    from types import SimpleNamespace

    names = ["stuck", "moving"]
    matrix = SimpleNamespace(names=names, weights=lambda: torch.ones(2))
    module = SimpleNamespace(matrix=matrix, shaping=_static_shaping(2))
    no_sampler = SimpleNamespace(datamodule=None)
    loop = ClosedLoopSupervision(write_reports=False, patience=3, min_change=0.02, gain_decay=0.5)
    gains, reasons = [], []
    means = [(0.10, 0.1), (0.105, 0.3), (0.11, 0.5), (0.10, 0.6), (0.30, 0.7)]
    for stuck_mean, moving_mean in means:
        metrics = _evaluation({"stuck": stuck_mean, "moving": moving_mean}, {"stuck": 0.0, "moving": 0.5})
        module.shaping.loop.record_means(metrics)  # as ClosedLoopSupervision.evaluate does
        actions = loop.reward_update(no_sampler, module, metrics)
        gains.append(module.shaping.loop_gain.tolist())
        reasons += [a["reason"] for a in actions if a["target"] == "stuck"]
    # both fail (pass rates 0.0 and 0.5): full gains first; `stuck` moved < 0.02 over 3 evaluations -> decays
    assert [g[0] for g in gains] == [2.0, 2.0, 1.5, 1.25, 2.0]  # ... and its full gain back once it moves
    assert [g[1] for g in gains] == [1.5] * 5
    assert (
        "its held-out mean stayed within 0.100..0.110 over 3 evaluations: gain decayed toward 1" in reasons[1]
    )
    assert torch.equal(module.shaping.weights, torch.tensor([2.0, 1.5]))  # static weights x gains


def test_a_format_rule_always_broken_weighs_more_until_it_stops_being_broken():
    from types import SimpleNamespace

    from quark_lightning.matrix import MatrixScores

    fmt = FormatScorer(min_words=3, max_words=50, rules=["length", "clean_ending"])
    dim = SimpleNamespace(scorer=fmt)
    module = SimpleNamespace(
        matrix=SimpleNamespace(names=["format_rules"], dimensions=[dim]), shaping=SimpleNamespace(loop=LoopState())
    )
    loop = ClosedLoopSupervision(write_reports=False, rule_gain=1.0)
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": "?"}]} for i in range(4)]
    short = [
        "Rest.",
        "Drink water.",
        "Sleep",
        "Call now",
    ]  # 1-2 words: length broken (two lack the full stop)
    cut = "Drink plenty of water and rest"  # passes length, breaks clean_ending
    before = fmt.score(prompts[:1], [cut]).scores.item()

    def evaluate(answers):
        result = fmt.score(prompts, answers)
        scored = MatrixScores(["format_rules"], result.scores[:, None], {"format_rules": result.findings})
        rate = float((scored.scores[:, 0] >= 0.9).float().mean())
        metrics = {"dimensions": {"format_rules": {"pass_rate": rate, "mean": 0.0}}}
        return loop.update_rule_weights(module, metrics, prompts, scored)

    actions = evaluate(short)  # every held-out answer breaks `length`, two of them `clean_ending` too
    assert fmt.rule_weights == {"length": 2.0, "clean_ending": 1.5}  # 1 + break rate (4/4, 2/4)
    (length,) = [a for a in actions if a["target"] == "format_rules.length"]
    assert (
        length["evidence"] == ["q0", "q1", "q2", "q3"]
        and "broken by 4 of 4 held-out answers" in length["reason"]
    )
    # the reward of an answer with that failure moves: 0.5 before, `length` now costs 2 of 3.5 units
    assert fmt.score(prompts[:1], ["Rest."]).scores.item() == pytest.approx(1.5 / 3.5)
    # an answer failing the other rule gains relative weight on the part it passes
    assert fmt.score(prompts[:1], [cut]).scores.item() > before
    assert module.shaping.loop.rule_weights == {"format_rules": dict(fmt.rule_weights)}  # the one owner
    actions = evaluate([cut + "."] * 4)  # the failure stops: the dimension passes, weights are undone
    assert fmt.rule_weights == {"length": 1.0, "clean_ending": 1.0}
    assert any("passes its target" in a["reason"] for a in actions)
