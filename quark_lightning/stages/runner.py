"""The staged pipeline: run the paradigm's stages in order, each in its own directory, skip finished ones.

    <run_dir>/
      <stage>/stage.json      status (running | done), fingerprint, outputs, seconds
      <stage>/...             the stage's own outputs (policy/, adapter/, reward_model/, checkpoints/ ...)
      pipeline_summary.md     stage table + every matrix category at the end of RL vs the cloned reference

A stage's **fingerprint** hashes the parts of the config it depends on plus the fingerprints of every
stage before it. Rerunning the same command:

- a stage that is `done` with the same fingerprint is skipped (its recorded outputs feed later stages);
- a stage that is `running` (the process was killed) is run again and resumes from its own checkpoint
  where it has one (SFT, reward-model and RL stages checkpoint; calibration is short and restarts); if
  its config has changed since (e.g. a bad value was fixed), the partial attempt is moved
  aside and the stage starts over;
- a finished stage whose fingerprint changed stops the pipeline with the keys to fix: nothing is overwritten
  unless `pipeline.rerun_from=<stage>` asks for it, and then the old directories are moved aside to
  `<stage>.old-<time>`, not deleted.

`pipeline.only=<stage>` runs one stage (earlier stages must be done); `pipeline.until=<stage>` stops
after it. The stage kinds (what each stage does) are in `quark_lightning/stages/kinds.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.typed import raise_problems, typed, typed_problems
from quark_lightning.infra.errors import ConfigError
from quark_lightning.stages.context import PipelineContext, StageRecord, StageSpec  # also re-exported
from quark_lightning.stages.kinds import STAGE_KINDS
from quark_lightning.stages.stage_files import StageFileError, damaged_file, read_json
from quark_lightning.stages.stage_settings import STAGE_SETTINGS
from quark_lightning.stages.summary import write_summary

STATE_FILE = "stage.json"

# Root-config keys each stage kind depends on (besides its own block and the stages before it).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "sft": ("seed", "model", "data"),
    "reward_model": ("seed",),
    "rfn_calibration": ("seed", "data", "matrix", "optimization", "algorithm", "rollout"),
    "grpo": ("seed", "data", "matrix", "optimization", "algorithm", "rollout", "trainer", "callbacks"),
    "export": (),
}
IGNORED_KEYS = {"cache_dir", "enable_progress_bar", "enable_model_summary"}


# ---------------------------------------------------------------------------------------- specs
def stage_specs(cfg: DictConfig) -> list[StageSpec]:
    """The configured stages in order (a stage set to null is dropped), each with its typed settings
    (stages/stage_settings.py); every wrong kind, unknown key and wrong value of every stage is refused at
    once, before any stage runs."""
    stages = OmegaConf.select(cfg, "pipeline.stages")
    if not stages:
        raise ConfigError(
            "pipeline.stages: no stages configured. Fix: use +experiment=pipeline_demo, or add a "
            "pipeline group (see conf/pipeline/paradigm.yaml)"
        )
    specs, problems = [], []
    for name, options in stages.items():
        if options is None:
            continue
        where, kind = f"pipeline.stages.{name}", options.get("kind")
        if kind not in STAGE_SETTINGS:
            problems.append(
                f"{where}.kind: got {kind!r}, expected one of {sorted(STAGE_SETTINGS)}. Fix: pass {where}.kind=<kind>"
            )
            continue
        values = OmegaConf.to_container(options, resolve=True)
        found = typed_problems(STAGE_SETTINGS[kind], values, where)
        problems += found
        if not found:
            specs.append(StageSpec(str(name), kind, options, typed(STAGE_SETTINGS[kind], values, where)))
    raise_problems(problems, "pipeline")
    return specs


def _select(specs: list[StageSpec], key: str, value: str | None) -> int | None:
    if value is None:
        return None
    names = [s.name for s in specs]
    if value not in names:
        raise ConfigError(
            f"pipeline.{key}: got {value!r}, expected one of {names}. Fix: pass pipeline.{key}=NAME"
        )
    return names.index(value)


# ---------------------------------------------------------------------------------------- fingerprints
def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in sorted(obj.items()) if k not in IGNORED_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def fingerprint_source(cfg: DictConfig, spec: StageSpec) -> dict[str, Any]:
    """What a stage's result depends on: its own block and the root keys of its kind (resolved)."""
    source = {"stage": OmegaConf.to_container(spec.options, resolve=True)}
    for key in KIND_KEYS[spec.kind]:
        value = OmegaConf.select(cfg, key)
        source[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return _strip(source)


def fingerprint(cfg: DictConfig, spec: StageSpec, upstream: str) -> str:
    text = json.dumps(fingerprint_source(cfg, spec), sort_keys=True, default=str) + upstream
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


# ---------------------------------------------------------------------------------------- state files
def read_state(stage_dir: str) -> dict[str, Any] | None:
    path = os.path.join(stage_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    name = os.path.basename(os.path.normpath(stage_dir))
    fix = (
        f"delete the directory {stage_dir}, or pass pipeline.rerun_from={name} (it moves the directory aside), "
        f"to run the stage '{name}' again"
    )
    state = read_json(path, fix, keys=("status", "fingerprint"))
    missing = [k for k in ("outputs", "seconds") if state["status"] == "done" and k not in state]
    if missing:
        raise damaged_file(path, f"its status is done, but it has no {', '.join(missing)}", fix)
    return state


def write_state(stage_dir: str, state: dict[str, Any]) -> None:
    """Atomic: write a temporary file, then rename it over the old one."""
    os.makedirs(stage_dir, exist_ok=True)
    path = os.path.join(stage_dir, STATE_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def move_aside(stage_dir: str) -> str | None:
    if not os.path.exists(stage_dir):
        return None
    target = base = f"{stage_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.exists(target):  # two moves within one second
        target, n = f"{base}-{n}", n + 1
    os.replace(stage_dir, target)
    return target


# ---------------------------------------------------------------------------------------- the run
def _mismatch_error(
    spec: StageSpec, state: dict[str, Any], source: dict[str, Any], stage_dir: str
) -> ConfigError:
    changed = changed_keys(state.get("fingerprint_source", {}), source)
    what = ", ".join(changed[:8]) if changed else "an earlier stage's result"
    return ConfigError(
        f"pipeline stage '{spec.name}' in {stage_dir} was {state.get('status')} with a different "
        f"configuration (changed: {what}). Nothing was overwritten. Fix: pass "
        f"pipeline.rerun_from={spec.name} to redo it and the stages after it (the old directories are "
        "moved aside), or use another hydra.run.dir"
    )


def run_stage(ctx: PipelineContext, spec: StageSpec, upstream: str, index: int, total: int) -> StageRecord:
    stage_dir = os.path.join(ctx.root, spec.name)
    source = fingerprint_source(ctx.cfg, spec)
    fp = fingerprint(ctx.cfg, spec, upstream)
    state = read_state(stage_dir)
    head = f"[pipeline {index}/{total}] {spec.name} ({spec.kind})"
    if state is not None and state.get("fingerprint") != fp:
        if state.get("status") == "done":
            raise _mismatch_error(spec, state, source, stage_dir)
        # interrupted (or failed) under another config: its partial outputs cannot be resumed; keep them aside
        changed = (
            ", ".join(changed_keys(state.get("fingerprint_source", {}), source)[:8]) or "an earlier stage"
        )
        print(
            f"{head}: the interrupted attempt had another config ({changed}); moved to {move_aside(stage_dir)}"
        )
        state = None
    if state is not None and state.get("status") == "done":
        print(f"{head}: done earlier, skipped ({stage_dir})")
        return StageRecord(spec.name, spec.kind, stage_dir, "skipped", state["outputs"], state["seconds"], fp)
    status = "resumed" if state is not None else "ran"
    print(f"\n{head}: {'resuming the interrupted stage' if state else 'starting'} in {stage_dir}")
    started = time.time()
    write_state(stage_dir, {"status": "running", "fingerprint": fp, "fingerprint_source": source,
                            "kind": spec.kind, "started": started})  # fmt: skip
    outputs = STAGE_KINDS[spec.kind](ctx, spec, stage_dir)
    seconds = round(time.time() - started, 1)
    write_state(stage_dir, {"status": "done", "fingerprint": fp, "fingerprint_source": source,
                            "kind": spec.kind, "started": started, "seconds": seconds,
                            "outputs": outputs})  # fmt: skip
    print(f"{head}: done in {seconds:.0f} s")
    return StageRecord(spec.name, spec.kind, stage_dir, status, outputs, seconds, fp)


def expected_fingerprints(cfg: DictConfig, specs: list[StageSpec]) -> list[str]:
    """Each stage's fingerprint under this config (a chain: each includes the one before)."""
    out, upstream = [], ""
    for spec in specs:
        upstream = fingerprint(cfg, spec, upstream)
        out.append(upstream)
    return out


def redo_from(cfg: DictConfig, specs: list[StageSpec], first: int, root: str) -> None:
    """`pipeline.rerun_from`: move the directories of that stage and later ones aside (never delete).

    A stage that is `running` with this very config is kept, so that repeating the same command after
    an interruption resumes it instead of starting it over again."""
    fps = expected_fingerprints(cfg, specs)
    for spec, fp in zip(specs[first:], fps[first:]):
        stage_dir = os.path.join(root, spec.name)
        try:
            state = read_state(stage_dir)
        except StageFileError:  # a damaged stage.json: its directory is moved aside like the others
            state = None
        if state is not None and state.get("status") == "running" and state.get("fingerprint") == fp:
            continue
        moved = move_aside(stage_dir)
        if moved:
            print(f"[pipeline] rerun_from={specs[first].name}: moved {spec.name} aside to {moved}")


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the configured stages; returns every stage's record and the summary path."""
    specs = stage_specs(cfg)  # every stage's settings checked here, before any stage runs
    pipe = cfg.pipeline
    only = _select(specs, "only", pipe.get("only"))
    until = _select(specs, "until", pipe.get("until"))
    rerun_from = _select(specs, "rerun_from", pipe.get("rerun_from"))
    root = str(cfg.run_dir)
    os.makedirs(root, exist_ok=True)
    if rerun_from is not None:
        redo_from(cfg, specs, rerun_from, root)
    last = only if only is not None else (until if until is not None else len(specs) - 1)
    ctx = PipelineContext(cfg=cfg, root=root)
    upstream = ""
    for i, spec in enumerate(specs[: last + 1]):
        if only is not None and i < only:
            record = require_done(ctx, spec, upstream)
        else:
            record = run_stage(ctx, spec, upstream, i + 1, len(specs))
        ctx.records[spec.name] = record
        upstream = record.fingerprint
    summary = write_summary(ctx, specs)
    return {"run_dir": root, "stages": {n: r.outputs for n, r in ctx.records.items()}, "summary": summary}


def require_done(ctx: PipelineContext, spec: StageSpec, upstream: str) -> StageRecord:
    """An earlier stage that `pipeline.only` relies on: it must be done with the same configuration."""
    stage_dir = os.path.join(ctx.root, spec.name)
    state = read_state(stage_dir)
    fp = fingerprint(ctx.cfg, spec, upstream)
    if state is None or state.get("status") != "done":
        raise ConfigError(
            f"pipeline.only: stage '{spec.name}' (needed first) has not finished in {ctx.root}. "
            f"Fix: run it first (pipeline.only={spec.name}), or drop pipeline.only to run every stage"
        )
    if state.get("fingerprint") != fp:
        raise _mismatch_error(spec, state, fingerprint_source(ctx.cfg, spec), stage_dir)
    return StageRecord(spec.name, spec.kind, stage_dir, "skipped", state["outputs"], state["seconds"], fp)
