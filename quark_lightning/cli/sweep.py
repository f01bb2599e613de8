"""Hydra `--multirun` sweeps: every job records how it ended, and the sweep writes one comparison table.

    python train.py --multirun +experiment=smoke optimization=sum,gdpo,rfn,rfn_tadw seed=0,1

Each job runs in its own directory (`hydra.sweep.dir`/`hydra.sweep.subdir`, i.e. `<sweep>/<job number>`).
Under multirun, `cli.entry.run_or_exit` does not exit the process on a job's error (which would end the whole
sweep): it writes `<job dir>/job.json` with `status: failed` and the error's type and message, and returns,
so Hydra launches the next job. A job that finishes writes `status: ok`.

`SweepTable` (a Hydra Callback, registered in conf/train.yaml under `hydra.callbacks`) runs at the end of
the sweep and writes `<sweep>/comparison.md` and `<sweep>/comparison.json`, one row per job:

- the job's overrides (the swept values), its status, and the error of a failed job;
- final training metrics from `<job dir>/summary.json` (the RewardTrend callback): the `end` value of
  `reward` and of each `rewards/<dim>/mean`, a mean over the last `window` steps, as the run prints it;
- held-out metrics from the closed loop's last evaluation (`<job dir>/eval/step_*/metrics.json`, the
  latest step): each dimension's pass rate and mean, and each category's pass rate.

A job with no `job.json` (killed, or it crashed outside Python) is listed as `no record`. When any job did
not finish, the sweep's process exits with status 1 after the table is written.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
import traceback
from typing import Any

from quark_lightning.infra.errors import QuarkError

JOB_FILE = "job.json"
TABLE_NAME = "comparison"


def in_multirun() -> bool:
    """True inside a job of `--multirun` (Hydra's RunMode.MULTIRUN); False in a plain run or outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - no Hydra context: not a sweep
        return False


def job_dir(cfg) -> str:
    """The job's output directory: `run_dir` (= hydra.runtime.output_dir) where set, else Hydra's own."""
    run_dir = cfg.get("run_dir") if hasattr(cfg, "get") else None
    if run_dir:
        return str(run_dir)
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def record_job(cfg, status: str, error: BaseException | None = None) -> str:
    """Write `<job dir>/job.json`: status (ok | failed), the overrides, and a failed job's error."""
    record: dict[str, Any] = {"status": status}
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        record |= {"num": int(hydra_cfg.job.num), "overrides": list(hydra_cfg.overrides.task)}
    except Exception:  # noqa: BLE001 - outside Hydra: no job number or overrides
        pass
    if error is not None:
        record |= {"error_type": type(error).__name__, "error": str(error)}
        if not _is_user_error(error):
            record["traceback"] = "".join(traceback.format_exception(error))[-4000:]
    path = os.path.join(job_dir(cfg), JOB_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(record, fh, indent=2)
    return path


def run_sweep_job(function, cfg):
    """One `--multirun` job: run it, record `ok` or the error in `job.json`; never raise or exit."""
    try:
        result = function(cfg)
    except Exception as err:  # noqa: BLE001 - every failure is recorded; the sweep goes on
        path = record_job(cfg, "failed", err)
        if not _is_user_error(err):
            traceback.print_exception(err, file=sys.stderr)
        print(f"error: {err}\n(this job failed, recorded in {path}; the sweep goes on)", file=sys.stderr)
        return None
    record_job(cfg, "ok")
    return result


def _is_user_error(error: BaseException) -> bool:
    return isinstance(error, QuarkError)


# --------------------------------------------------------------------------------- the comparison table
def _read_json(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def final_metrics(job: str) -> dict[str, float]:
    """`end` of each metric in `<job>/summary.json` (reward, rewards/<dim>/mean); {} without one."""
    summary = _read_json(os.path.join(job, "summary.json")) or {}
    return {k: v["end"] for k, v in (summary.get("metrics") or {}).items() if "end" in v}


def held_out_metrics(job: str) -> dict[str, float]:
    """The closed loop's latest held-out evaluation of `<job>`: `heldout/<dim>/pass_rate`,
    `heldout/<dim>/mean`, `heldout/category/<c>/pass_rate`, and `heldout/step`; {} without one."""
    paths = sorted(glob.glob(os.path.join(job, "eval", "step_*", "metrics.json")))
    data = _read_json(paths[-1]) if paths else None
    if not data or not data.get("history"):
        return {}
    last = data["history"][-1]
    out: dict[str, float] = {"heldout/step": last.get("step")}
    for name, row in (last.get("dimensions") or {}).items():
        if row.get("count"):
            out[f"heldout/{name}/pass_rate"] = row.get("pass_rate")
            out[f"heldout/{name}/mean"] = row.get("mean")
    for name, row in (last.get("categories") or {}).items():
        out[f"heldout/category/{name}/pass_rate"] = row.get("pass_rate")
    return out


def job_row(job: str) -> dict[str, Any]:
    """One job's row: number, overrides, status, error, final and held-out metrics."""
    record = _read_json(os.path.join(job, JOB_FILE))
    if record is None:
        overrides = _read_overrides(job)
        record = {"status": "no record", "overrides": overrides, "error": "the job wrote no job.json"}
    row = {
        "job": os.path.basename(job),
        "overrides": " ".join(record.get("overrides") or []),
        "status": record["status"],
        "error": (f"{record['error_type']}: " if record.get("error_type") else "") + record.get("error", ""),
    }
    row["metrics"] = final_metrics(job) | held_out_metrics(job)
    return row


def _read_overrides(job: str) -> list[str]:
    try:
        from omegaconf import OmegaConf

        return list(OmegaConf.load(os.path.join(job, ".hydra", "overrides.yaml")))
    except Exception:  # noqa: BLE001 - a job that died before Hydra wrote its config
        return []


def job_dirs(sweep_dir: str) -> list[str]:
    """The sweep's job directories (those holding `.hydra/` or `job.json`), in job-number order."""
    dirs = [
        d
        for d in glob.glob(os.path.join(sweep_dir, "*"))
        if os.path.isdir(d)
        and (os.path.isdir(os.path.join(d, ".hydra")) or os.path.exists(os.path.join(d, JOB_FILE)))
    ]
    return sorted(
        dirs, key=lambda d: (0, int(os.path.basename(d))) if os.path.basename(d).isdigit() else (1, d)
    )


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Overrides every job shares (shown once above the table; the rows show what was swept)."""
    if len(rows) < 2:
        return []
    first = rows[0]["overrides"].split()
    return [o for o in first if all(o in r["overrides"].split() for r in rows[1:])]


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Metric keys in a fixed order: reward, rewards/<dim>/mean, then the held-out keys (first-seen order)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["metrics"] if k not in keys]
    order = {"reward": 0}
    return sorted(keys, key=lambda k: (order.get(k, 1 if k.startswith("rewards/") else 2), keys.index(k)))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = ["job", "overrides", "status", *columns, "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["job"], row["overrides"], row["status"], *(row["metrics"].get(c) for c in columns)]
        cells.append(row["error"][:300])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(sweep_dir: str) -> tuple[str, list[dict[str, Any]]]:
    """Write `<sweep_dir>/comparison.{md,json}` from the job directories; returns (markdown path, rows)."""
    rows = [job_row(d) for d in job_dirs(sweep_dir)]
    columns = metric_columns(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    common = common_overrides(rows)
    shown = [dict(r, overrides=" ".join(o for o in r["overrides"].split() if o not in common)) for r in rows]
    title = (
        f"# Sweep comparison: {len(rows)} jobs, {len(rows) - len(failed)} ok, {len(failed)} not\n\n"
        f"Every job: `{' '.join(common) or '(no common overrides)'}`. Training metrics: `end` of "
        "summary.json (mean of the last steps); `heldout/...`: the closed loop's last held-out evaluation.\n\n"
    )
    md_path = os.path.join(sweep_dir, f"{TABLE_NAME}.md")
    with open(md_path, "w") as fh:
        fh.write(title + render_markdown(shown, columns))
    with open(os.path.join(sweep_dir, f"{TABLE_NAME}.json"), "w") as fh:
        json.dump({"sweep_dir": sweep_dir, "columns": columns, "jobs": rows}, fh, indent=2)
    return md_path, rows


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    _HydraCallback = object


class SweepTable(_HydraCallback):
    """Hydra Callback: at the end of a `--multirun`, the comparison table of every job (see module doc)."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        if not os.path.isdir(sweep_dir):
            return
        md_path, rows = write_comparison(sweep_dir)
        failed = [r for r in rows if r["status"] != "ok"]
        print(f"\nSweep of {len(rows)} jobs: comparison table in {md_path} (and .json)")
        for row in failed:
            print(
                f"  job {row['job']} ({row['overrides']}): {row['status']}: {row['error']}", file=sys.stderr
            )
        if failed:
            print(f"{len(failed)} of {len(rows)} jobs did not finish; exit status 1", file=sys.stderr)
            sys.exit(1)
