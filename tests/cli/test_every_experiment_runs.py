"""Every conf/experiment/*.yaml runs end to end, in-process, for one step (issue 14, "must show").

Each experiment is composed with Hydra's compose API (`conf/train.yaml` + `+experiment=NAME`) exactly as
`python train.py +experiment=NAME` composes it, then SHRUNK with overrides so it runs on CPU in seconds, and
handed to `quark_lightning.cli.run.run(cfg)` (what train.py calls). The shrink depends on what the composed
experiment contains (`shrink_overrides`), so a new experiment is covered without editing this file:

- GRPO (`stage: grpo`, and the pipeline's stages): a 1-layer tiny model (`TINY`), 1 RL step of 1 prompt x 2
  completions of at most 8 tokens; a warm start of 1 step; RFN calibration on 2 prompts; the closed loop on
  2 held-out prompts and 1 probe; no policy export (`save_policy=false`; the pipeline keeps it: its export
  stage reads it). The real-model experiments (real_demo, efficacy_real, closed_loop_real: SmolLM2-135M)
  run with `model=tiny` swapped in - SmolLM2 is fetched from PyPI and far too slow for a unit test - and
  keep LoRA on (`model.lora.enabled=true`) as SmolLM2's group has it. Everything else (matrix, aggregator,
  gates, callbacks, loggers, calculator prompts, system prompt) is the experiment's own.
- Matrices with reward-model dimensions (matrix=medical): the ORMScorers' `train_overrides` train each
  reward model for 1 step on a tiny backbone, once per session, cached in the session's `model.cache_dir`
  (the cache key holds the overrides: every experiment of the session reuses the same two).
- Reward-model experiments (`stage: reward_model`: rm_orm, rm_online): 1 optimizer step of 4 pairs.
- Pipelines (`stage: pipeline`): every stage at one step (SFT stages: 1 step of 2 examples; reward-model
  stages: the reward-model shrink as their `overrides`; RFN calibration and GRPO as above; export).

Each run must return its result dict, and what it wrote must exist: the final checkpoint (GRPO), the saved
reward model (reward_model), every stage done and the exported model (pipeline).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from quark_lightning.cli.run import run
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # nine runs, about a minute or two on one core in all

CONF = Path(REPO) / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SECONDS: dict[str, float] = {}

# the smallest tiny model (tests/shaping/test_pinning.py's): 1 layer, hidden 32, vocab 512
TINY = [
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]
# one optimizer step of a reward model (conf/reward_model/orm.yaml), on the smallest tiny backbone
REWARD_MODEL = [
    "reward_model.steps=1",
    "reward_model.batch_size=4",
    "reward_model.eval_batch_size=32",
    "reward_model.val_every_n_steps=1",
    "reward_model.checkpoint_every=1",
    "reward_model.warmup_steps=0",
    *TINY,
]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="train", overrides=overrides)


def quoted_list(items: list[str]) -> str:
    return "[" + ",".join(f"'{i}'" for i in items) + "]"


def grpo_overrides(cfg: DictConfig, pipeline: bool) -> list[str]:
    """One RL step of the composed config `cfg` (its groups decide which keys exist)."""
    o = []
    if cfg.model.kind != "tiny":  # real_demo, efficacy_real, closed_loop_real: SmolLM2 -> the tiny model
        o += ["model=tiny", f"model.lora.enabled={str(bool(cfg.model.lora.enabled)).lower()}"]
    o += TINY
    o += [
        "trainer.max_steps=1",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        "rollout.max_new_tokens=8",
        "algorithm.num_generations=2",
        "data.prompts_per_step=1",
    ]
    if not pipeline:  # the pipeline's export stage reads the RL policy
        o.append("save_policy=false")
    if cfg.warmstart.enabled:
        o += ["warmstart.steps=1", "warmstart.batch_size=2", "warmstart.warmup_steps=0"]
    if cfg.optimization.get("normalization") is not None:
        o.append("optimization.normalization.calibration_prompts=2")
    if (cfg.get("callbacks") or {}).get("closed_loop") is not None:
        o += ["callbacks.closed_loop.num_prompts=2", "callbacks.closed_loop.probe_prompts=1"]
    for name, dim in cfg.matrix.dimensions.items():
        scorer = (dim or {}).get("scorer") or {}
        if str(scorer.get("_target_", "")).endswith("ORMScorer") and scorer.get("train_experiment"):
            o.append(f"matrix.dimensions.{name}.scorer.train_overrides={quoted_list(REWARD_MODEL)}")
    return o


def pipeline_overrides(cfg: DictConfig) -> list[str]:
    """Every stage of the pipeline at one step (conf/pipeline/paradigm.yaml's stage kinds)."""
    o = []
    for name, stage in cfg.pipeline.stages.items():
        if stage is None:
            continue
        at = f"pipeline.stages.{name}"
        if stage.kind == "sft":
            o += [f"{at}.steps=1", f"{at}.batch_size=2", f"{at}.checkpoint_every=1", f"{at}.warmup_steps=0"]
            if "calculator_explanations" in (stage.get("sources") or {}):
                o.append(f"{at}.sources.calculator_explanations.n=2")
        elif stage.kind == "reward_model":
            o.append(f"{at}.overrides={quoted_list(REWARD_MODEL)}")
    return o


def shrink_overrides(experiment: str) -> list[str]:
    cfg = compose_train([f"+experiment={experiment}", "run_dir=/unused"])
    stage = cfg.get("stage", "grpo")
    if stage == "reward_model":
        return [*REWARD_MODEL]
    if stage == "pipeline":
        return [*grpo_overrides(cfg, pipeline=True), *pipeline_overrides(cfg)]
    assert stage == "grpo", f"experiment {experiment}: stage {stage!r} has no shrink in this test"
    return grpo_overrides(cfg, pipeline=False)


@pytest.fixture(scope="module")
def session_cache(tmp_path_factory):
    """The tiny model and the reward models the matrices train on demand: built once for all runs."""
    return tmp_path_factory.mktemp("experiment_cache")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_one_step_in_process(experiment, session_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QUARK_CACHE", str(session_cache))  # judge cache and any default cache_dir
    run_dir = tmp_path / "run"
    overrides = [
        f"+experiment={experiment}",
        *shrink_overrides(experiment),
        f"run_dir={run_dir}",
        f"model.cache_dir={session_cache}",
    ]
    cfg = compose_train(overrides)
    start = time.perf_counter()
    result = run(cfg)
    SECONDS[experiment] = time.perf_counter() - start
    print(f"{experiment}: {SECONDS[experiment]:.1f} s")

    assert isinstance(result, dict) and result
    stage = cfg.get("stage", "grpo")
    if stage == "grpo":
        assert result["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
        assert os.path.isfile(result["checkpoint"])
        assert (run_dir / "summary.json").is_file() or cfg.callbacks.get("reward_trend") is None
    elif stage == "reward_model":
        assert result["reward_model_dir"] == str(run_dir / "reward_model")
        assert (run_dir / "reward_model" / "reward_model.json").is_file()
        assert set(result) >= {"before", "after"}
    else:
        stages = [n for n, s in cfg.pipeline.stages.items() if s is not None]
        assert list(result["stages"]) == stages
        assert os.path.isfile(result["summary"])
        grpo = result["stages"]["grpo"]
        assert os.path.isfile(grpo["checkpoint"])
        export_dir = run_dir / "export"
        assert export_dir.is_dir() and any(export_dir.rglob("*.safetensors"))
