"""Reward-model backbones: tiny vs the policy's model, frozen features + trained head, cache keys, validation.

Fast and tiny-model only: the policy backbone is exercised with a tiny `model` config (SmolLM2 is only
composed, never loaded; benchmarks/rm_backbones.py trains on it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from quark_lightning.data.preferences import split_by_question
from tests.conftest import REPO, write_jsonl
from tests.reward_model.test_reward_model import BAD, GOOD, GOOD2, QUESTIONS, fixture_pairs, msgs

TINY = ["model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.vocab_size=512"]


@pytest.fixture()
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", fixture_pairs())


def compose(*overrides):
    from quark_lightning.reward_model.rm_settings import compose_experiment

    return compose_experiment("rm_orm", list(overrides))


def model_group(*overrides):
    """The `model` config a training run would have (what a matrix passes as policy_model: ${model})."""
    return compose(*overrides).model


def train_loss(model, dataset) -> float:
    from quark_lightning.reward_model.pair_datasets import pair_rewards
    from quark_lightning.reward_model.ties_loss import ties_objective

    with torch.no_grad():
        batch = dataset.collate([dataset[i] for i in range(len(dataset))])
        r_a, r_b = pair_rewards(model, batch)
        # L_diff: L_same of a tie is log 2 at best (|Δ| = 0, where an untrained head starts)
        return ties_objective(r_a, r_b, batch["pref"], ties_lambda=1.0).loss_diff.item()


# ------------------------------------------------------------------ frozen features + head
def test_frozen_backbone_trains_only_the_head_on_cached_features(tiny_model_dir):
    import lightning as L

    from quark_lightning.reward_model.pair_datasets import FeaturePairDataset, evaluate_pairs
    from quark_lightning.reward_model.rm_training_module import RewardModelModule
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel, pad_right

    torch.manual_seed(0)
    model = ScalarRewardModel.from_backbone(tiny_model_dir).freeze_backbone()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    train, val = split_by_question(fixture_pairs(), 0.25, seed=0)
    train_set = FeaturePairDataset(model, train, 128, batch_size=5)
    val_set = FeaturePairDataset(model, val, 128, batch_size=5)
    # each distinct (question, answer) text goes through the backbone once: 6 questions x 3 answers
    assert len(train_set) == 18 and train_set.num_texts == 18 and train_set.features.shape == (18, 32)
    # the cached rows are the features of those texts (length-sorted, padded batches change nothing)
    pair = train[0]
    ids, mask = pad_right(
        [model.encode(pair["messages"], pair["response_a"], 128)], model.tokenizer.pad_token_id
    )
    with torch.no_grad():
        direct = model.features(ids, mask)[0]
    assert torch.allclose(train_set.features[train_set.items[0][0]], direct, atol=1e-5)

    loss_before = train_loss(model, train_set)
    module = RewardModelModule(model, lr=1e-2, ties_lambda=1.0)
    opt = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in opt.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.head.parameters()}  # the head alone is optimized
    trainer = L.Trainer(
        max_steps=40, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, val_check_interval=40, check_val_every_n_epoch=None, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_set.loader(6, shuffle=True), val_set.loader(8))
    loss_after = train_loss(model, train_set)
    print(f"\ntrain L_diff {loss_before:.4f} -> {loss_after:.4f}")
    assert loss_after < 0.5 * loss_before  # the head learned
    assert not model.backbone.training  # ScalarRewardModel.train keeps a frozen backbone in eval mode
    assert not any(p.requires_grad for p in model.backbone.parameters())
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k  # not one backbone weight moved
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert "val/pair_accuracy" in trainer.callback_metrics
    assert evaluate_pairs(model, val_set, 8)["pair_accuracy"] == 1.0


def test_feature_dataset_needs_a_frozen_backbone(tiny_model_dir):
    from quark_lightning.reward_model.pair_datasets import FeaturePairDataset
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    with pytest.raises(ValueError, match="frozen backbone"):
        FeaturePairDataset(ScalarRewardModel.from_backbone(tiny_model_dir), fixture_pairs()[:2])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_head_on_features_equals_text_scores_and_saved_model_round_trips(tiny_model_dir, tmp_path, pooling):
    from quark_lightning.reward_model.pair_datasets import extract_features
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    torch.manual_seed(1)
    model = ScalarRewardModel.from_backbone(tiny_model_dir, pooling=pooling).freeze_backbone().eval()
    questions = [msgs(q) for q in QUESTIONS[:4]]
    answers = [GOOD, BAD, GOOD2 * 3, BAD]
    expected = model.score(questions, answers, batch_size=3)
    encoded = [model.encode(q, a, 512) for q, a in zip(questions, answers)]  # score: max_length=512
    assert torch.allclose(
        model.head_scores(extract_features(model, encoded, batch_size=2)), expected, atol=1e-5
    )
    single = torch.cat([model.score([q], [a]) for q, a in zip(questions, answers)])
    assert torch.allclose(single, expected, atol=1e-5)  # right padding changes neither pooling

    model.save_pretrained(str(tmp_path / "rm"))
    meta = json.load(open(tmp_path / "rm" / "reward_model.json"))
    assert meta["pooling"] == pooling
    loaded = ScalarRewardModel.from_pretrained(str(tmp_path / "rm"))
    assert loaded.pooling == pooling and not loaded.backbone_frozen
    assert torch.equal(loaded.score(questions, answers, batch_size=3), expected)


# ------------------------------------------------------------------ backbone choice and cache key
def test_backbone_choice_and_cache_key_per_backbone(tmp_path, tiny_model_dir):
    from quark_lightning.reward_model.rm_backbone import backbone_model_config, train_backbone_mode
    from quark_lightning.reward_model.rm_cache import reward_model_run_dir
    from quark_lightning.reward_model.rm_settings import validate_reward_model_config

    def mode_of(cfg):
        return train_backbone_mode(validate_reward_model_config(cfg), backbone_model_config(cfg))

    cache = str(tmp_path / "cache")
    smollm2 = model_group("model=smollm2")
    hf_a = model_group("model=hf", "model.name_or_path=org/a")
    hf_b = model_group("model=hf", "model.name_or_path=org/b")
    runs = {
        "tiny": reward_model_run_dir("rm_orm", cache, backbone="tiny"),
        "tiny, policy model given": reward_model_run_dir("rm_orm", cache, backbone="tiny", model=smollm2),
        "policy=smollm2": reward_model_run_dir("rm_orm", cache, backbone="policy", model=smollm2),
        "policy=smollm2 lora": reward_model_run_dir(
            "rm_orm", cache, ["reward_model.train_backbone=lora"], backbone="policy", model=smollm2
        ),
        "policy=hf a": reward_model_run_dir("rm_orm", cache, backbone="policy", model=hf_a),
        "policy=hf b": reward_model_run_dir("rm_orm", cache, backbone="policy", model=hf_b),
        "policy=tiny 32": reward_model_run_dir("rm_orm", cache, backbone="policy", model=model_group(*TINY)),
        "online tiny": reward_model_run_dir("rm_online", cache, backbone="tiny"),
        "online smollm2": reward_model_run_dir("rm_online", cache, backbone="policy", model=smollm2),
    }  # fmt: skip
    dirs = {name: str(run_dir) for name, (_, run_dir) in runs.items()}
    # backbone=tiny ignores the policy's model: the same tiny reward model (and cache entry) either way
    assert dirs["tiny"] == dirs["tiny, policy model given"]
    del dirs["tiny, policy model given"]
    assert len(set(dirs.values())) == len(dirs), dirs  # tiny and smollm2 (and every other) never collide
    names = {k: os.path.basename(v) for k, v in dirs.items()}
    assert names["tiny"].startswith("rm_orm-tiny-") and names["policy=smollm2"].startswith("rm_orm-smollm2-")
    assert names["policy=hf a"].startswith("rm_orm-a-") and names["online smollm2"].startswith(
        "rm_online-smollm2-"
    )
    assert all(v.startswith(os.path.join(cache, "reward_models")) for v in dirs.values())
    assert (
        str(reward_model_run_dir("rm_orm", cache, backbone="policy", model=smollm2)[1])
        == dirs["policy=smollm2"]
    )

    modes = {name: mode_of(cfg) for name, (cfg, _) in runs.items()}
    assert modes["tiny"] == modes["policy=tiny 32"] == "full"  # the tiny demo trains as before
    assert modes["policy=smollm2"] == modes["policy=hf a"] == "frozen"  # a pretrained backbone: head only
    assert modes["policy=smollm2 lora"] == "lora"
    cfg, _ = runs["policy=smollm2"]
    assert backbone_model_config(cfg).kind == "smollm2" and cfg.model.cache_dir == smollm2.cache_dir
    cfg, _ = runs["tiny, policy model given"]
    assert backbone_model_config(cfg).kind == "tiny" and backbone_model_config(cfg).cache_dir == cache
    # the stage on its own: the `model` group is the backbone, reward_model.backbone=tiny overrides it
    assert backbone_model_config(compose("model=smollm2")).kind == "smollm2"
    alone = compose("model=smollm2", "reward_model.backbone=tiny")
    assert backbone_model_config(alone).kind == "tiny" and mode_of(alone) == "full"

    # a local policy directory re-trained in place (new weights) is a new backbone
    local = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, local)
    group = model_group("model=hf", f"model.name_or_path={local}")
    first = reward_model_run_dir("rm_orm", cache, backbone="policy", model=group)[1]
    assert reward_model_run_dir("rm_orm", cache, backbone="policy", model=group)[1] == first
    with open(local / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 8)
    assert reward_model_run_dir("rm_orm", cache, backbone="policy", model=group)[1] != first


def test_orm_scorer_trains_a_frozen_policy_backbone_once_and_caches_it(
    tmp_path, tiny_model_dir, pairs_file, capsys
):
    from transformers import AutoModel

    from quark_lightning.reward_model.rm_cache import resolved_scorer_config
    from quark_lightning.scorers.orm import ORMScorer

    # the policy's base model: a local HF directory (what model=hf, or a converted smollm2, resolves to)
    policy = model_group("model=hf", f"model.name_or_path={tiny_model_dir}")
    kwargs = dict(
        train_experiment="rm_orm",
        cache_dir=str(tmp_path / "cache"),
        backbone="policy",
        policy_model=policy,
        train_overrides=[
            f"reward_model.data_path={pairs_file}", "reward_model.steps=30", "reward_model.batch_size=6",
            "reward_model.val_fraction=0.25", "reward_model.lr=3e-3", "~logger",
        ],
    )  # fmt: skip
    scorer = ORMScorer(**resolved_scorer_config(kwargs))  # as the matrix builder does
    out = capsys.readouterr().out
    assert "Training the reward model of +experiment=rm_orm once" in out
    assert "train_backbone=frozen" in out  # auto: a pretrained backbone is frozen
    assert "Frozen backbone: features of 24 distinct texts" in out  # 8 questions x 3 answers, once each
    assert os.path.basename(os.path.dirname(scorer.path)).startswith(
        f"rm_orm-{os.path.basename(tiny_model_dir)}-"
    )
    summary = json.load(open(os.path.join(scorer.path, "reward_model.json")))["summary"]
    assert (summary["backbone"], summary["train_backbone"], summary["pooling"]) == (
        "policy",
        "frozen",
        "last",
    )
    assert summary["backbone_model"] == tiny_model_dir and summary["feature_texts"] == 24
    assert summary["held_out_metrics_after"]["pair_accuracy"] == 1.0
    # frozen means frozen through the real path: the saved backbone is the policy's base model, unchanged
    source = AutoModel.from_pretrained(tiny_model_dir).state_dict()
    saved = AutoModel.from_pretrained(scorer.path).state_dict()
    assert source.keys() == saved.keys() and all(torch.equal(saved[k], source[k]) for k in source)
    prompts = [{"messages": msgs(QUESTIONS[0])}] * 2
    scores = scorer.score(prompts, [GOOD, BAD]).scores
    assert scores[0] > scores[1]

    again = ORMScorer(**resolved_scorer_config(kwargs))  # cached: same directory, nothing trained
    assert again.path == scorer.path and "Training the reward model" not in capsys.readouterr().out
    assert torch.equal(again.score(prompts, [GOOD, BAD]).scores, scores)


def test_medical_matrix_scorer_trains_on_the_runs_model_with_backbone_policy(tmp_path):
    """conf/matrix/medical.yaml: `policy_model: ${model}` hands the run's model to the ORM scorer."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from quark_lightning.matrix.build import scorer_config

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = hydra_compose("train", ["matrix=medical", *TINY, f"model.cache_dir={tmp_path / 'cache'}"])
    scorer_cfg = cfg.matrix.dimensions.correctness_macro.scorer
    assert scorer_cfg.backbone == "tiny" and cfg.matrix.dimensions.online_rm.scorer.backbone == "tiny"
    with open_dict(cfg):
        scorer_cfg.backbone = "policy"
        scorer_cfg.train_overrides = OmegaConf.create(["reward_model.steps=2", "~logger"])
    scorer = instantiate(scorer_config(scorer_cfg))  # what build_matrix does: train, cache, then load
    assert os.path.basename(os.path.dirname(scorer.path)).startswith("rm_orm-tiny-")
    summary = json.load(open(os.path.join(scorer.path, "reward_model.json")))["summary"]
    assert summary["backbone"] == "policy" and summary["train_backbone"] == "full" and summary["steps"] == 2
    # the run's tiny model (hidden 32), not the experiment's default tiny model (hidden 64)
    assert json.load(open(os.path.join(scorer.path, "config.json")))["hidden_size"] == 32


# ------------------------------------------------------------------ validation
def test_bad_backbone_values_are_config_errors_naming_the_key(tmp_path):
    from quark_lightning.infra.errors import ConfigError
    from quark_lightning.reward_model.rm_cache import resolved_scorer_config
    from quark_lightning.reward_model.rm_settings import validate_reward_model_config

    with pytest.raises(ConfigError) as err:
        validate_reward_model_config(
            compose(
                "reward_model.backbone=smollm2",
                "reward_model.train_backbone=half",
                "reward_model.pooling=max",
            )
        )
    msg = str(err.value)
    assert (
        "reward_model.backbone: got 'smollm2', expected 'tiny' or 'policy'. Fix: pass reward_model.backbone=tiny "
        "(the tiny model built in code) or reward_model.backbone=policy (the run's `model`, e.g. model=smollm2)."
    ) in msg
    assert "reward_model.train_backbone: got 'half', expected one of 'auto', 'full', 'lora', 'frozen'." in msg
    assert "reward_model.pooling: got 'max', expected 'last' or 'mean'" in msg
    with pytest.raises(
        ConfigError, match=r"reward_model.lora.enabled: got True, but reward_model.train_backbone"
    ):
        validate_reward_model_config(
            compose("reward_model.lora.enabled=true", "reward_model.train_backbone=frozen")
        )
    # backbone=tiny does not need the `model` group to be usable
    validate_reward_model_config(compose("model=hf", "reward_model.backbone=tiny"))
    with pytest.raises(ConfigError, match="model.name_or_path: got None, expected a hub name"):
        validate_reward_model_config(compose("model=hf", "reward_model.backbone=policy"))
    # a matrix scorer with a bad backbone stops before anything is hashed, built or trained
    with pytest.raises(ConfigError, match="reward_model.backbone: got 'big', expected 'tiny' or 'policy'"):
        resolved_scorer_config({"train_experiment": "rm_orm", "cache_dir": str(tmp_path / "cache"), "backbone": "big"})
    assert not (tmp_path / "cache").exists()


def test_bad_backbone_on_the_command_line_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    cmd = [
        sys.executable,
        "train.py",
        "+experiment=rm_orm",
        "reward_model.backbone=qwen",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "reward_model.backbone: got 'qwen', expected 'tiny' or 'policy'" in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing heavy started


def test_training_a_reward_model_on_demand_leaves_the_callers_random_streams(monkeypatch, tmp_path):
    """A first run (which trains the matrix's reward model) and a rerun (which finds it cached) must sample
    the same answers: training on demand may not advance the run's random streams."""
    import random

    import quark_lightning.reward_model.rm_cache as rmt

    def training_that_draws(cfg):
        torch.rand(7), random.random()
        return {"reward_model_dir": str(tmp_path / "rm")}

    monkeypatch.setattr(rmt, "run_reward_model", training_that_draws)
    torch.manual_seed(3)
    random.seed(3)
    expected = (torch.rand(4), random.random())
    torch.manual_seed(3)
    random.seed(3)
    rmt.ensure_reward_model("rm_orm", str(tmp_path))
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1]
