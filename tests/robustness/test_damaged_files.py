"""Damaged files are input too: a truncated, empty or garbage file a run reads ends it with exit code 2,
the file named and the fix said, never a traceback (issue 23, item 6).

One test per kind of file: a model directory (`model=hf model.name_or_path=...`), a checkpoint to resume
from (`ckpt_path=...`), saved RFN statistics (`optimization.normalization.statistics_path=...`), a saved
reward model, and the judge cache, whose damaged entries are skipped with a warning and asked again (the
cache is an optimization: losing an entry loses one request); then an SFT LoRA adapter
(`model.adapter_path=...`), the model directories of the reward-model scorer and the sentence encoder, the
files pipeline stages write (stage.json, summary.json, evaluation reports, the exported adapter_config.json)
and a zero-byte knowledge base. The model directory, checkpoint, statistics, adapter and stage.json run the
real `train.py` once; the variants of each damage run in-process through the same function the run calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from quark_lightning.infra.checkpointing import CheckpointError, check_checkpoint
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import ModelLoadError, load_causal_lm
from tests.conftest import REPO

# the smallest run: seconds on CPU (the tiny-model keys only apply to model=tiny)
RUN = [
    "trainer.max_steps=1",
    "warmstart.steps=1",
    "rollout.max_new_tokens=8",
    "callbacks.closed_loop=null",
    "save_policy=false",
]
TINY = [
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]


def train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cache = tmp_path / "cache"
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(cache))
    cmd = [
        sys.executable,
        "train.py",
        "+experiment=smoke",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"model.cache_dir={cache}",
        *RUN,
        *overrides,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, path: Path | str) -> None:
    """Exit 2, the damaged file named, the fix said, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(path) in proc.stderr, proc.stderr[-3000:]
    assert "Fix:" in proc.stderr, proc.stderr[-3000:]


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def garbage(path: Path, size: int = 4096) -> Path:
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(size)))  # not random: the same every run
    return path


# ------------------------------------------------------------------------------------- model directories
def damage_model(directory: Path, damage: str) -> Path:
    """Damage one file of a copied model directory; return the damaged file."""
    if damage == "weights_truncated":
        return truncate(directory / "model.safetensors")
    if damage == "weights_garbage":
        return garbage(directory / "model.safetensors")
    if damage == "weights_empty":
        (directory / "model.safetensors").write_bytes(b"")
        return directory / "model.safetensors"
    if damage == "bin_truncated":  # the older pytorch_model.bin format
        from safetensors.torch import load_file

        state = load_file(directory / "model.safetensors")
        (directory / "model.safetensors").unlink()
        torch.save(state, directory / "pytorch_model.bin")
        return truncate(directory / "pytorch_model.bin")
    if damage == "config_truncated":
        return truncate(directory / "config.json")
    if damage == "config_not_object":
        (directory / "config.json").write_text("[1, 2]")
        return directory / "config.json"
    if damage == "config_not_utf8":
        return garbage(directory / "config.json", 300)
    if damage == "tokenizer_truncated":
        return truncate(directory / "tokenizer.json")
    if damage == "size_mismatch":  # config.json edited: the weights no longer fit it
        config = json.loads((directory / "config.json").read_text())
        config["hidden_size"] *= 2
        (directory / "config.json").write_text(json.dumps(config))
        return directory / "config.json"
    raise ValueError(damage)


def test_train_py_refuses_a_model_directory_with_a_truncated_weights_file(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damaged = damage_model(model, "weights_truncated")
    proc = train(tmp_path, "model=hf", f"model.name_or_path={model}")
    assert_refused(proc, damaged)
    assert "is damaged" in proc.stderr and "point model.name_or_path at an intact copy" in proc.stderr


@pytest.mark.parametrize(
    "damage",
    [
        "weights_truncated",
        "weights_garbage",
        "weights_empty",
        "bin_truncated",
        "config_truncated",
        "config_not_object",
        "config_not_utf8",
        "tokenizer_truncated",
    ],
)
def test_every_damaged_model_file_is_named(tmp_path, tiny_model_dir, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damaged = damage_model(model, damage)
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(model))
    message = str(info.value)
    assert f"{damaged} is damaged" in message and "Fix:" in message, message


def test_weights_that_do_not_fit_the_config_are_explained(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage_model(model, "size_mismatch")
    with pytest.raises(ModelLoadError, match=r"its weights do not match its config\.json.*Fix:"):
        load_causal_lm(str(model))


def test_a_damaged_tiny_model_cache_says_to_delete_it(tmp_path, tiny_model_dir):
    cached = tmp_path / "cache" / "tiny-llama-0123456789ab"  # where model=tiny keeps what it builds
    shutil.copytree(tiny_model_dir, cached)
    damage_model(cached, "weights_truncated")
    with pytest.raises(ModelLoadError, match=r"Fix: delete the directory .*tiny-llama-0123456789ab"):
        load_causal_lm(str(cached))


# ------------------------------------------------------------------------------------------ checkpoints
def lightning_like_checkpoint(path: Path) -> Path:
    """A file with every key a resumed fit reads (the real ones come from test_kill_resume's runs)."""
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "pytorch-lightning_version": "2.6.0",
            "state_dict": {"policy.w": torch.zeros(64)},
            "loops": {"fit_loop": {}},
            "optimizer_states": [{}],
            "lr_schedulers": [],
        },
        path,
    )
    return path


def damage_checkpoint(tmp_path: Path, damage: str) -> Path:
    path = tmp_path / f"{damage}.ckpt"
    if damage == "truncated":
        return truncate(lightning_like_checkpoint(path))
    if damage == "empty":
        path.write_bytes(b"")
        return path
    if damage == "garbage":
        return garbage(path)
    if damage == "bare_state_dict":  # a valid torch file, but not a Lightning checkpoint
        torch.save({"policy.w": torch.zeros(4)}, path)
        return path
    if damage == "weights_only":  # ModelCheckpoint(save_weights_only=True): nothing to resume from
        torch.save({"state_dict": {"policy.w": torch.zeros(4)}, "global_step": 1, "epoch": 0}, path)
        return path
    if damage == "member_overwritten":  # the zip directory is intact, a member's header is not
        data = bytearray(lightning_like_checkpoint(path).read_bytes())
        middle = len(data) // 2
        data[middle : middle + 512] = bytes(512)
        path.write_bytes(bytes(data))
        return path
    raise ValueError(damage)


def test_train_py_refuses_a_truncated_checkpoint(tmp_path):
    ckpt = damage_checkpoint(tmp_path, "truncated")
    proc = train(tmp_path, *TINY, f"ckpt_path={ckpt}")
    assert_refused(proc, ckpt)
    assert "set ckpt_path=null to start afresh" in proc.stderr


@pytest.mark.parametrize(
    "damage, says",
    [
        ("truncated", "truncated, or not a checkpoint at all"),
        ("empty", "is empty (0 bytes)"),
        ("garbage", "truncated, or not a checkpoint at all"),
        ("bare_state_dict", "is not a Lightning training checkpoint to resume from: it has no state_dict"),
        ("weights_only", "it has no optimizer_states, loops"),
        ("member_overwritten", "is damaged or not loadable"),
    ],
)
def test_every_damaged_checkpoint_is_refused_before_lightning_reads_it(tmp_path, damage, says):
    ckpt = damage_checkpoint(tmp_path, damage)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(str(ckpt))
    message = str(info.value)
    assert message.startswith(f"ckpt_path: {str(ckpt)!r}") and says in message and "Fix:" in message


def test_an_intact_checkpoint_passes_and_a_stage_resuming_by_itself_says_to_delete_it(tmp_path):
    from quark_lightning.reward_model.training import resume_checkpoint

    check_checkpoint(str(lightning_like_checkpoint(tmp_path / "ok.ckpt")))
    check_checkpoint(None)  # not resuming: nothing to check
    run_dir = tmp_path / "rm_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    truncate(lightning_like_checkpoint(run_dir / "checkpoints" / "last.ckpt"))
    with pytest.raises(CheckpointError, match=r"the checkpoint .*last\.ckpt.* Fix: delete that file"):
        resume_checkpoint(str(run_dir))  # the reward-model stage resumes from its run dir on its own


# ----------------------------------------------------------------------------------- saved calibration
def saved_statistics(directory: Path, names: list[str]) -> Path:
    """What the pipeline's rfn_calibration stage writes, from per-prompt statistics of random scores."""
    from quark_lightning.shaping.rfn import save_statistics

    shaping = rfn_shaping(names)
    generator = torch.Generator().manual_seed(0)
    shaping.calibrate(torch.randn(16, len(names), generator=generator), [f"p{i % 4}" for i in range(16)])
    save_statistics(shaping.normalizer, names, str(directory))
    return directory


def rfn_shaping(names: list[str], mode: str = "per_prompt"):
    from quark_lightning.shaping.reward_shaping import RewardShaping

    return RewardShaping(
        names=names,
        weights=[1.0] * len(names),
        risk=[0.5] * len(names),
        targets=[None] * len(names),
        aggregator="rfn",
        normalization={"mode": mode},
    )


def damage_statistics(directory: Path, damage: str) -> Path:
    meta, tensors = directory / "rfn_statistics.json", directory / "rfn_statistics.safetensors"
    if damage == "json_truncated":
        return truncate(meta)
    if damage == "json_empty":
        meta.write_bytes(b"")
        return meta
    if damage == "json_not_utf8":
        return garbage(meta, 200)
    if damage == "tensors_truncated":
        return truncate(tensors, 0.9)
    if damage == "tensors_missing":
        tensors.unlink()
        return tensors
    if damage in ("status_wrong_length", "prompt_means_wrong_length"):
        data = json.loads(meta.read_text())
        if damage == "status_wrong_length":
            data["status"] = data["status"][:1]
        else:
            data["prompt_means"]["p0"] = data["prompt_means"]["p0"][:1]
        meta.write_text(json.dumps(data))
        return meta
    if damage == "tensors_wrong_dimensions":
        from safetensors.torch import save_file

        k = len(json.loads(meta.read_text())["dimensions"]) + 1
        save_file({"mean": torch.zeros(k), "std": torch.ones(k), "count": torch.ones(k).long()}, tensors)
        return tensors
    raise ValueError(damage)


def test_train_py_refuses_truncated_rfn_statistics(tmp_path):
    stats = saved_statistics(tmp_path / "stats", ["a", "b"])  # damaged before its dimensions are compared
    damaged = damage_statistics(stats, "json_truncated")
    proc = train(tmp_path, *TINY, "optimization=rfn", f"optimization.normalization.statistics_path={stats}")
    assert_refused(proc, damaged)
    assert f"delete {stats} to calibrate again" in proc.stderr


@pytest.mark.parametrize(
    "damage, says",
    [
        ("json_truncated", "not valid JSON"),
        ("json_empty", "empty (0 bytes)"),
        ("json_not_utf8", "not UTF-8 text"),
        ("tensors_truncated", "truncated or not a safetensors file"),
        ("tensors_missing", "missing"),
        ("status_wrong_length", "'status' is not a list of 2 strings"),
        ("prompt_means_wrong_length", "'prompt_means' of prompt 'p0' is not a list of 2 numbers"),
        ("tensors_wrong_dimensions", "has shape (3,), but rfn_statistics.json lists 2 dimensions"),
    ],
)
def test_every_damaged_statistics_file_is_named(tmp_path, damage, says):
    stats = saved_statistics(tmp_path / "stats", ["a", "b"])
    damaged = damage_statistics(stats, damage)
    with pytest.raises(ConfigError) as info:
        rfn_shaping(["a", "b"]).load_statistics(str(stats))
    message = str(info.value)
    assert f"{damaged} is damaged" in message and says in message, message
    assert "set it to null to calibrate in this run" in message


def test_intact_statistics_still_load(tmp_path):
    stats = saved_statistics(tmp_path / "stats", ["a", "b"])
    shaping = rfn_shaping(["a", "b"])
    shaping.load_statistics(str(stats))
    assert shaping.calibrated


# --------------------------------------------------------------------------------- saved reward models
@pytest.fixture(scope="module")
def saved_reward_model(tiny_model_dir, tmp_path_factory) -> Path:
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    out = tmp_path_factory.mktemp("reward_model") / "reward_model"
    ScalarRewardModel.from_backbone(tiny_model_dir).save_pretrained(str(out))
    return out


@pytest.mark.parametrize(
    "damage, file",
    [
        ("truncated", "reward_head.safetensors"),
        ("truncated", "model.safetensors"),
        ("garbage", "reward_model.json"),
        ("truncated", "config.json"),
        ("head_size", "reward_head.safetensors"),
    ],
)
def test_a_damaged_reward_model_directory_names_the_file(tmp_path, saved_reward_model, damage, file):
    from quark_lightning.reward_model.scalar_rm import RewardModelLoadError, ScalarRewardModel

    directory = tmp_path / "reward_model"
    shutil.copytree(saved_reward_model, directory)
    if damage == "truncated":
        truncate(directory / file)
    elif damage == "garbage":
        garbage(directory / file, 200)
    else:  # reward_model.json says another head size than the saved head has
        meta = json.loads((directory / "reward_model.json").read_text())
        meta["head_hidden_size"] += 1
        (directory / "reward_model.json").write_text(json.dumps(meta))
    with pytest.raises(RewardModelLoadError) as info:
        ScalarRewardModel.from_pretrained(str(directory))
    message = str(info.value)
    assert f"{directory / file}" in message and f"Fix: restore {directory}" in message, message


def test_a_damaged_cached_reward_model_says_to_delete_its_run_dir(tmp_path, saved_reward_model):
    from quark_lightning.reward_model.scalar_rm import RewardModelLoadError, ScalarRewardModel

    run_dir = tmp_path / "cache" / "reward_models" / "rm_orm-tiny-0123456789ab"  # ensure_reward_model's
    shutil.copytree(saved_reward_model, run_dir / "reward_model")
    truncate(run_dir / "reward_model" / "reward_head.safetensors")
    with pytest.raises(RewardModelLoadError, match=rf"Fix: delete {run_dir} .*trains it again"):
        ScalarRewardModel.from_pretrained(str(run_dir))


# ------------------------------------------------------------------------------------------ judge cache
def test_damaged_judge_cache_entries_are_skipped_with_a_warning_and_asked_again(tmp_path):
    from judge_fixtures import ScriptedJudge

    asks = [[{"role": "user", "content": t}] for t in ("a", "b", "c", "d")]
    ScriptedJudge(lambda text: f"first {text}", cache_dir=str(tmp_path)).complete(asks)
    entries = sorted(tmp_path.glob("*/*.json"))
    assert len(entries) == 4
    truncate(entries[0])  # a copy cut short
    garbage(entries[1], 100)  # a disk error: not UTF-8
    entries[2].write_text('{"model": "scripted"}')  # JSON, but no reply
    judge = ScriptedJudge(lambda text: f"again {text}", cache_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replies = judge.complete(asks)
    messages = [str(w.message) for w in caught if "judge cache" in str(w.message)]
    assert len(messages) == 3
    for entry in entries[:3]:
        assert any(f"skipping the damaged entry {entry}" in m and "asked again" in m for m in messages)
    assert judge.requests == 3 and judge.cache.damaged == 3  # only the damaged entries were asked again
    assert sum(r.text.startswith("again") for r in replies) == 3 and sum(r.cached for r in replies) == 1
    third = ScriptedJudge(lambda text: None, cache_dir=str(tmp_path))  # the new replies replaced them
    assert all(r.cached for r in third.complete(asks)) and third.cache.damaged == 0


# ------------------------------------------------------------------------------------- SFT LoRA adapters
@pytest.fixture(scope="module")
def saved_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter of the tiny model, as the SFT stage saves one (model.adapter_path's directory)."""
    from quark_lightning.models.loading import apply_lora

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    policy = apply_lora(load_causal_lm(tiny_model_dir).model, 4, 8, 0.0, ["q_proj", "v_proj"])
    policy.save_pretrained(str(out))
    return out


def damage_adapter(directory: Path, damage: str) -> Path:
    weights = directory / "adapter_model.safetensors"
    if damage == "weights_truncated":
        return truncate(weights)
    if damage == "weights_empty":
        weights.write_bytes(b"")
        return weights
    if damage == "config_truncated":
        return truncate(directory / "adapter_config.json")
    if damage == "bin_truncated":  # the older adapter_model.bin format, read when there is no safetensors
        from safetensors.torch import load_file

        torch.save(load_file(weights), directory / "adapter_model.bin")
        weights.unlink()
        return truncate(directory / "adapter_model.bin")
    raise ValueError(damage)


def test_train_py_refuses_a_truncated_sft_adapter(tmp_path, tiny_model_dir, saved_adapter):
    adapter = tmp_path / "adapter"
    shutil.copytree(saved_adapter, adapter)
    damaged = damage_adapter(adapter, "weights_truncated")
    proc = train(
        tmp_path, "model=hf", f"model.name_or_path={tiny_model_dir}", f"model.adapter_path={adapter}"
    )
    assert_refused(proc, damaged)
    assert "could not load LoRA adapter" in proc.stderr
    assert "point model.adapter_path at an intact copy" in proc.stderr


@pytest.mark.parametrize(
    "damage", ["weights_truncated", "weights_empty", "config_truncated", "bin_truncated"]
)
def test_every_damaged_adapter_file_is_named(tmp_path, tiny_model_dir, saved_adapter, damage):
    from quark_lightning.models.loading import merge_sft_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(saved_adapter, adapter)
    damaged = damage_adapter(adapter, damage)
    with pytest.raises(ModelLoadError) as info:
        merge_sft_adapter(load_causal_lm(tiny_model_dir).model, str(adapter))
    message = str(info.value)
    assert f"{damaged} is damaged" in message and "Fix:" in message, message


def test_an_intact_adapter_still_merges(tmp_path, tiny_model_dir, saved_adapter):
    from quark_lightning.models.loading import merge_sft_adapter

    merged = merge_sft_adapter(load_causal_lm(tiny_model_dir).model, str(saved_adapter))
    assert not hasattr(merged, "peft_config")  # folded into the base weights


# ------------------------------------------------------- reward-model scorers and the sentence encoder
@pytest.mark.parametrize(
    "loader, what, key",
    [
        ("HFRewardModelScorer", "reward model", "the scorer's name_or_path"),
        ("SentenceEncoder", "sentence encoder", "encoder_path"),
    ],
)
def test_a_damaged_scorer_model_directory_names_the_file(tmp_path, tiny_model_dir, loader, what, key):
    from quark_lightning.scorers.hf_reward_model import HFRewardModelScorer
    from quark_lightning.scorers.retrieval import SentenceEncoder

    load = {"HFRewardModelScorer": HFRewardModelScorer, "SentenceEncoder": SentenceEncoder}[loader]
    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    damaged = damage_model(directory, "weights_truncated")
    with pytest.raises(ModelLoadError) as info:
        load(str(directory))
    message = str(info.value)
    assert message.startswith(f"could not load {what} ") and f"{damaged} is damaged" in message, message
    assert f"Fix: copy or save_pretrained the {what} into {directory} again, or point {key}" in message


# ---------------------------------------------------------------------------- pipeline stage files
def pipeline_cfg(tmp_path: Path, **pipeline):
    from omegaconf import OmegaConf

    stages = {"calibration": {"kind": "rfn_calibration"}, "rl": {"kind": "grpo"}}
    return OmegaConf.create(
        {
            "run_dir": str(tmp_path / "run"),
            "seed": 1,
            "model": {"name_or_path": "base"},
            "pipeline": {"only": None, "until": None, "rerun_from": None, "stages": stages, **pipeline},
        }
    )


@pytest.fixture()
def fake_stages(monkeypatch) -> list[str]:
    """Stage kinds replaced by a fake that records its calls: the bookkeeping runs, no model."""
    from quark_lightning.stages import kinds

    calls: list[str] = []

    def run(ctx, spec, stage_dir):
        calls.append(spec.name)
        return {"value": spec.name}

    for kind in ("rfn_calibration", "grpo"):
        monkeypatch.setitem(kinds.STAGE_KINDS, kind, run)
    return calls


def test_train_py_refuses_a_truncated_stage_json(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "foundation_sft").mkdir(parents=True)  # pipeline_smoke's first stage
    damaged = run_dir / "foundation_sft" / "stage.json"
    damaged.write_text('{"status": "running", "fingerpr')  # a stage.json cut short
    cmd = [sys.executable, "train.py", "+experiment=pipeline_smoke", f"hydra.run.dir={run_dir}"]
    cmd.append(f"model.cache_dir={tmp_path / 'cache'}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_refused(proc, damaged)
    assert f"delete the directory {run_dir / 'foundation_sft'}" in proc.stderr
    assert "pipeline.rerun_from=foundation_sft" in proc.stderr


@pytest.mark.parametrize(
    "content, says",
    [
        ('{"status": "done", "fingerprint": "ab', "not valid JSON"),
        ("", "empty (0 bytes)"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"status": "done", "fingerprint": "ab"}', "its status is done, but it has no outputs, seconds"),
    ],
)
def test_a_damaged_stage_json_is_named_and_rerun_from_moves_it_aside(tmp_path, fake_stages, content, says):
    from quark_lightning.stages.runner import run_pipeline
    from quark_lightning.stages.stage_files import StageFileError

    run_pipeline(pipeline_cfg(tmp_path))
    damaged = tmp_path / "run" / "rl" / "stage.json"
    damaged.write_text(content)
    with pytest.raises(StageFileError) as info:
        run_pipeline(pipeline_cfg(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{damaged} is damaged: ") and says in message, message
    assert f"Fix: delete the directory {damaged.parent}, or pass pipeline.rerun_from=rl" in message
    fake_stages.clear()
    run_pipeline(pipeline_cfg(tmp_path, rerun_from="rl"))  # the fix it names works
    assert fake_stages == ["rl"] and json.loads(damaged.read_text())["status"] == "done"
    assert len(list((tmp_path / "run").glob("rl.old-*"))) == 1  # moved aside, not deleted


def test_a_damaged_rl_summary_json_is_named(tmp_path, monkeypatch):
    import quark_lightning.stages.kinds
    from quark_lightning.stages.context import PipelineContext, StageSpec
    from quark_lightning.stages.kinds import run_grpo_stage
    from quark_lightning.stages.stage_files import StageFileError
    from quark_lightning.stages.stage_settings import GRPOStage

    stage_dir = tmp_path / "run" / "rl"
    stage_dir.mkdir(parents=True)

    def run_grpo(cfg):  # the RewardTrend callback's summary.json, cut short
        (stage_dir / "summary.json").write_text('{"window": 8, "metrics": {"reward": {"start": 0.1')
        return {}

    monkeypatch.setattr(quark_lightning.stages.kinds, "run_grpo", run_grpo)  # where the stage looks it up
    cfg = pipeline_cfg(tmp_path)
    spec = StageSpec("rl", "grpo", cfg.pipeline.stages.rl, GRPOStage(kind="grpo"))
    with pytest.raises(StageFileError, match=r"summary\.json is damaged: not valid JSON .*Fix: delete"):
        run_grpo_stage(PipelineContext(cfg=cfg, root=str(tmp_path / "run")), spec, str(stage_dir))


def test_a_damaged_evaluation_report_or_adapter_config_is_named_at_export(tmp_path, saved_adapter):
    from quark_lightning.stages.context import StageRecord
    from quark_lightning.stages.export import export_adapter, last_evaluation
    from quark_lightning.stages.stage_files import StageFileError

    report = tmp_path / "run" / "rl" / "eval" / "step_000004" / "metrics.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"history": [{"reward": 0.1}, {"rew')
    with pytest.raises(StageFileError) as info:
        last_evaluation(str(report.parent.parent))
    message = str(info.value)
    assert message.startswith(f"{report} is damaged: not valid JSON") and "pipeline.rerun_from=rl" in message

    adapter = tmp_path / "run" / "rl" / "policy"
    shutil.copytree(saved_adapter, adapter)
    truncate(adapter / "adapter_config.json")
    rl = StageRecord(
        "rl", "grpo", str(adapter.parent), "ran", {"adapter": str(adapter), "base": str(tmp_path)}, 1.0, ""
    )
    with pytest.raises(StageFileError) as info:
        export_adapter(rl, str(tmp_path / "export"), merge=False)
    message = str(info.value)
    copied = tmp_path / "export" / "adapter" / "adapter_config.json"
    assert message.startswith(f"{copied} is damaged") and "Fix: pass pipeline.rerun_from=rl" in message, (
        message
    )
    assert str(adapter / "adapter_config.json") in message


# ---------------------------------------------------------------------------------- knowledge bases
def test_a_zero_byte_knowledge_base_is_refused_but_one_without_entries_is_not(tmp_path):
    from quark_lightning.data.schema import DataValidationError
    from quark_lightning.scorers.retrieval import load_knowledge_base

    empty = tmp_path / "kb.jsonl"
    empty.write_bytes(b"")  # a copy cut short
    with pytest.raises(DataValidationError) as info:
        load_knowledge_base(str(empty))
    message = str(info.value)
    assert f"{empty}: the file is empty (0 bytes" in message and "write one JSON object a line" in message
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n")  # no entries on purpose: GARM then scores NaN
    assert load_knowledge_base(str(blank)) == []
