"""The staged pipeline's bookkeeping (skip, resume, config changes, one stage at a time), SFT data
sources and length bucketing. Stage kinds are replaced by recording fakes: fast, no models."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from quark_lightning.infra.errors import ConfigError
from quark_lightning.stages import kinds, runner
from quark_lightning.stages.stage_settings import STAGE_SETTINGS, GRPOStage, RewardModelStage


class Recorder:
    """A fake stage kind: records each call; can be told to die (like a killed process) once."""

    def __init__(self):
        self.calls: list[str] = []
        self.die_in: str | None = None

    def __call__(self, ctx, spec, stage_dir):
        self.calls.append(spec.name)
        upstream = {n: r.outputs["value"] for n, r in ctx.records.items()}
        if spec.name == self.die_in:
            self.die_in = None
            raise KeyboardInterrupt(f"killed in {spec.name}")
        return {"value": f"{spec.name}:{spec.options.get('lr')}", "saw": upstream}


@dataclass(frozen=True)
class MarkedRewardModelStage(RewardModelStage):
    lr: float = 0.0  # a value the fake stage reports, so a change shows in the fingerprint


@dataclass(frozen=True)
class MarkedGRPOStage(GRPOStage):
    lr: float = 0.0


@pytest.fixture()
def recorder(monkeypatch):
    rec = Recorder()
    for kind in ("sft", "reward_model", "grpo"):
        monkeypatch.setitem(kinds.STAGE_KINDS, kind, rec)
    monkeypatch.setitem(STAGE_SETTINGS, "reward_model", MarkedRewardModelStage)
    monkeypatch.setitem(STAGE_SETTINGS, "grpo", MarkedGRPOStage)
    return rec


SFT_OPTIONS = {
    "sources": {"expert_references": {}},
    "steps": 1,
    "batch_size": 1,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "max_length": 64,
    "bucketing": True,
    "checkpoint_every": 1,
    "lora": {"enabled": False, "r": 4},
}


def make_cfg(tmp_path, **pipeline):
    return OmegaConf.create(
        {
            "run_dir": str(tmp_path / "run"),
            "seed": 1,
            "model": {"kind": "tiny", "cache_dir": "/somewhere"},
            "trainer": {"max_steps": 5},
            "pipeline": {
                "only": None,
                "until": None,
                "rerun_from": None,
                "stages": {
                    "first": {"kind": "sft", "lr": 0.1, **SFT_OPTIONS},
                    "second": {"kind": "reward_model", "lr": 0.2, "experiment": "x", "dimension": "d"},
                    "third": {"kind": "grpo", "lr": 0.3},
                },
                **pipeline,
            },
        }
    )


def test_stages_run_in_order_and_see_earlier_outputs(tmp_path, recorder):
    result = runner.run_pipeline(make_cfg(tmp_path))
    assert recorder.calls == ["first", "second", "third"]
    assert result["stages"]["third"]["saw"] == {"first": "first:0.1", "second": "second:0.2"}
    state = json.loads((tmp_path / "run" / "second" / "stage.json").read_text())
    assert state["status"] == "done" and state["outputs"]["value"] == "second:0.2"
    assert (tmp_path / "run" / "pipeline_summary.md").exists()


def test_rerun_skips_finished_stages(tmp_path, recorder, capsys):
    runner.run_pipeline(make_cfg(tmp_path))
    recorder.calls.clear()
    result = runner.run_pipeline(make_cfg(tmp_path))
    assert recorder.calls == []
    assert "first (sft): done earlier, skipped" in capsys.readouterr().out
    assert result["stages"]["third"]["value"] == "third:0.3"  # recorded outputs come back


def test_interrupted_stage_is_resumed_and_earlier_ones_are_not_redone(tmp_path, recorder, capsys):
    recorder.die_in = "third"
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(make_cfg(tmp_path))
    state = json.loads((tmp_path / "run" / "third" / "stage.json").read_text())
    assert state["status"] == "running"
    recorder.calls.clear()
    runner.run_pipeline(make_cfg(tmp_path))
    assert recorder.calls == ["third"]
    assert "third (grpo): resuming the interrupted stage" in capsys.readouterr().out
    summary = (tmp_path / "run" / "pipeline_summary.md").read_text()
    assert "| third | grpo | resumed |" in summary and "| first | sft | skipped |" in summary


def test_changed_config_stops_with_the_changed_key_and_loses_nothing(tmp_path, recorder):
    runner.run_pipeline(make_cfg(tmp_path))
    cfg = make_cfg(tmp_path)
    cfg.pipeline.stages.second.lr = 0.5
    with pytest.raises(ConfigError) as err:
        runner.run_pipeline(cfg)
    msg = str(err.value)
    assert "stage 'second'" in msg and "stage.lr" in msg and "pipeline.rerun_from=second" in msg
    assert (
        json.loads((tmp_path / "run" / "second" / "stage.json").read_text())["outputs"]["value"]
        == "second:0.2"
    )


def test_root_keys_a_stage_does_not_use_do_not_invalidate_it(tmp_path, recorder):
    runner.run_pipeline(make_cfg(tmp_path))
    cfg = make_cfg(tmp_path)
    cfg.trainer.max_steps = 9  # only the grpo kind depends on `trainer`
    cfg.model.cache_dir = "/elsewhere"  # never part of a fingerprint
    with pytest.raises(ConfigError, match="stage 'third'.*trainer.max_steps"):
        runner.run_pipeline(cfg)
    assert recorder.calls == ["first", "second", "third"]  # first and second were skipped, not redone


def test_rerun_from_moves_old_directories_aside(tmp_path, recorder):
    runner.run_pipeline(make_cfg(tmp_path))
    recorder.calls.clear()
    cfg = make_cfg(tmp_path, rerun_from="second")
    cfg.pipeline.stages.second.lr = 0.5
    result = runner.run_pipeline(cfg)
    assert recorder.calls == ["second", "third"]
    assert result["stages"]["third"]["saw"]["second"] == "second:0.5"
    moved = [d for d in os.listdir(tmp_path / "run") if d.startswith("second.old-")]
    assert len(moved) == 1 and (tmp_path / "run" / moved[0] / "stage.json").exists()


def test_only_runs_one_stage_after_the_earlier_ones(tmp_path, recorder):
    with pytest.raises(ConfigError, match="stage 'first' .* has not finished"):
        runner.run_pipeline(make_cfg(tmp_path, only="second"))
    runner.run_pipeline(make_cfg(tmp_path, until="first"))
    assert recorder.calls == ["first"]
    runner.run_pipeline(make_cfg(tmp_path, only="second"))
    assert recorder.calls == ["first", "second"]


def test_unknown_stage_kind_and_names_are_config_errors(tmp_path, recorder):
    cfg = make_cfg(tmp_path)
    cfg.pipeline.stages.second.kind = "distill"
    with pytest.raises(ConfigError, match=r"pipeline.stages.second.kind: got 'distill'"):
        runner.run_pipeline(cfg)
    with pytest.raises(ConfigError, match=r"pipeline.until: got 'fourth'"):
        runner.run_pipeline(make_cfg(tmp_path, until="fourth"))


def test_dropping_a_stage_with_null(tmp_path, recorder):
    cfg = make_cfg(tmp_path)
    cfg.pipeline.stages.second = None
    runner.run_pipeline(cfg)
    assert recorder.calls == ["first", "third"]


# ---------------------------------------------------------------------------------------- SFT data
def test_sft_sources_drop_held_out_questions_and_duplicates(bundled_records):
    from quark_lightning.data.sft_sources import load_sft_examples

    held_out, train = bundled_records[:10], bundled_records[10:]
    examples, counts = load_sft_examples(
        {"expert_references": {}, "preferred_responses": {}, "liked_feedback": {}}, train, held_out, "x"
    )
    held_questions = {r["messages"][0]["content"] for r in held_out}
    assert not any(e["messages"][0]["content"] in held_questions for e in examples)
    assert counts["expert_references"] == len(train)
    assert counts["preferred_responses"] > 100
    pairs = {(e["messages"][0]["content"], e["reference"]) for e in examples}
    assert len(pairs) == len(examples)  # each (question, answer) once
    with pytest.raises(ConfigError, match=r"x.sources: unknown source\(s\) \['wiki'\]"):
        load_sft_examples({"wiki": {}}, train, held_out, "x")


def test_calculator_explanations_are_worked_solutions_with_the_exact_answer():
    from quark_lightning.data.sft_sources import calculator_explanations

    examples = calculator_explanations(n=3, seed=7)
    assert len(examples) == 3
    for e in examples:
        assert "The answer is" in e["reference"] and len(e["reference"].split()) > 20


def test_length_buckets_cover_every_example_once_and_cut_padding():
    from quark_lightning.stages.sft import LengthBucketBatchSampler, padding_fraction

    lengths = [((i * 37) % 200) + 10 for i in range(203)]
    sampler = LengthBucketBatchSampler(lengths, batch_size=8, seed=3)
    batches = sampler.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert len(batches) == len(sampler) == 26
    plain = LengthBucketBatchSampler(lengths, batch_size=8, seed=3, bucketing=False).batches(0)
    assert sorted(i for b in plain for i in b) == list(range(203)) and len(plain) == 26
    assert padding_fraction(lengths, batches) < 0.5 * padding_fraction(lengths, plain)
    assert sampler.batches(1) != batches  # epochs differ, reproducibly
    assert LengthBucketBatchSampler(lengths, 8, seed=3).batches(0) == batches


def test_padding_fraction_by_hand():
    from quark_lightning.stages.sft import padding_fraction

    # batch [0, 1]: width 4, 3 + 4 real tokens of 8 slots; batch [2]: no padding. 1 pad of 10 slots.
    assert padding_fraction([3, 4, 2], [[0, 1], [2]]) == pytest.approx(0.1)


def test_rerun_from_repeated_after_an_interruption_resumes_instead_of_redoing(tmp_path, recorder):
    runner.run_pipeline(make_cfg(tmp_path))
    cfg = make_cfg(tmp_path, rerun_from="second")
    recorder.die_in = "second"
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(cfg)
    recorder.calls.clear()
    runner.run_pipeline(make_cfg(tmp_path, rerun_from="second"))  # the same command again
    assert recorder.calls == ["second", "third"]
    moved = [d for d in os.listdir(tmp_path / "run") if d.startswith("second.old-")]
    assert len(moved) == 1  # moved aside once (the finished run), not the interrupted redo


def test_wrong_stage_options_are_reported_together_before_anything_runs(tmp_path, recorder):
    cfg = make_cfg(tmp_path)
    cfg.pipeline.stages.first = {"kind": "sft", "sources": {}, "steps": 0, "lr": "fast"}
    cfg.pipeline.stages.second = {"kind": "reward_model", "experiment": "rm_orm"}
    with pytest.raises(ConfigError) as err:
        runner.run_pipeline(cfg)
    msg = str(err.value)
    assert "pipeline.stages.first.steps: got 0, expected an integer >= 1" in msg
    assert "pipeline.stages.first.lr: got 'fast'" in msg and "pipeline.stages.first.sources" in msg
    assert "pipeline.stages.second.dimension: required but not set" in msg
    assert recorder.calls == []


def test_an_attempt_that_failed_under_another_config_is_moved_aside_and_started_over(tmp_path, recorder):
    recorder.die_in = "second"
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(make_cfg(tmp_path))
    cfg = make_cfg(tmp_path)
    cfg.pipeline.stages.second.lr = 0.7  # the user fixed a value
    recorder.calls.clear()
    result = runner.run_pipeline(cfg)
    assert recorder.calls == ["second", "third"]
    assert result["stages"]["second"]["value"] == "second:0.7"
    assert [d for d in os.listdir(tmp_path / "run") if d.startswith("second.old-")]
