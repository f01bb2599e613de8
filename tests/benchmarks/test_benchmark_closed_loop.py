"""benchmarks/closed_loop.py --smoke: the whole benchmark pipeline (three loop arms through train.py, held-out
scoring, the never-diagnosed subset, the loop's record, the report) on the tiny model, in a temporary dir."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_closed_loop_smoke_has_three_arms_with_per_dimension_results(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", QUARK_CACHE=str(tmp_path / "cache"))
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "benchmarks/closed_loop.py", "--smoke", "--work", str(work)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((work / "closed_loop.json").read_text())
    assert data["meta"]["smoke"] and data["meta"]["arms"] == ["none", "scalar", "item"]
    results = data["results"]
    assert set(results) == {"base", "none_s0", "scalar_s0", "item_s0"}
    names = results["base"]["dimension_names"]
    assert "format_rules" in names and "safety" in names and "triage" in names
    for run, result in results.items():
        assert result["num_prompts"] == 30  # the whole held-out split (val_fraction 0.2)
        nd = result["never_diagnosed"]
        assert nd["num_prompts"] == 30 - 12  # the loop diagnoses the first num_prompts=12
        assert set(result["dimensions"]) == set(nd["dimensions"]) == set(names)
        for rows in (result["dimensions"], nd["dimensions"]):
            assert all(0 <= rows[n]["pass_rate"] <= 1 for n in ("format_rules", "safety"))
        assert (work / ("base" if run == "base" else run) / "heldout.json").exists()  # the cache
    loops = {arm: results[f"{arm}_s0"]["loop"] for arm in ("none", "scalar", "item")}
    assert loops["none"]["actions_total"] == 0  # update=false: evaluates, changes nothing
    assert all(g == 1.0 for g in loops["none"]["final_gains"].values())
    assert loops["scalar"]["actions"].get("loop_gain", 0) > 0
    item_kinds = set(loops["item"]["actions"]) - {"loop_gain", "sampling"}
    assert item_kinds and not set(loops["scalar"]["actions"]) & item_kinds  # item level only in `item`
    assert all(loop["evaluations"][0] == 0 for loop in loops.values())
    md = (work / "closed_loop.md").read_text()
    assert "never diagnosed" in md and "Partial result" not in md
