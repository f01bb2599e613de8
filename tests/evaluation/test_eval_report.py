"""Evaluation reports (Markdown, JSON, PNG), summary/comparison tables, and `evaluate.py` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from quark_lightning.evaluation.report import comparison_table, summary_table, write_report
from tests.conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def evaluation(step: int, fmt: float, rubric: float, safety: float, finding: str = "length: # words") -> dict:
    dims = {
        "format_rules": {"category": "format", "mean": fmt, "pass_rate": fmt, "count": 4, "target": 0.9},
        "expert_rubric": {
            "category": "expert",
            "mean": rubric / 2,
            "pass_rate": rubric,
            "count": 4,
            "target": 0.5,
        },
        "safety": {"category": "fundamental", "mean": safety, "pass_rate": safety, "count": 2, "target": 1.0},
        "usefulness": {
            "category": "fundamental",
            "mean": math.nan,
            "pass_rate": math.nan,
            "count": 0,
            "target": None,
        },
    }
    for row in dims.values():
        row["violation_rate"] = 1 - row["pass_rate"]
    return {
        "step": step,
        "num_samples": 4,
        "dimensions": dims,
        "categories": {
            "format": {"pass_rate": fmt, "dimensions": 1},
            "expert": {"pass_rate": rubric, "dimensions": 1},
            "fundamental": {"pass_rate": safety, "dimensions": 1},
        },
        "areas": {
            "cardiology": {"count": 2, "pass_rate": 0.25, "dimensions": {"format_rules": 0.0, "safety": 0.5}},
            "dermatology": {"count": 1, "pass_rate": 0.75, "dimensions": {"format_rules": 1.0}},
            "infectious_disease": {"count": 1, "pass_rate": math.nan, "dimensions": {}},
        },
        "diagnosis": [
            {
                "dimension": "format_rules",
                "finding": finding,
                "count": 3,
                "share": 0.75,
                "examples": [
                    {
                        "id": "htn-001",
                        "area": "cardiology",
                        "question": "What is a normal blood pressure?",
                        "answer": "x" * 500,
                    },
                ],
            }
        ],
        "actions": [
            {"kind": "weight", "target": "format_rules", "value": 1.5, "reason": "weakest dimension"}
        ],
    }


@pytest.fixture()
def history():
    return [evaluation(0, 0.25, 0.5, 0.5), evaluation(10, 0.75, 0.5, 1.0, finding="missing 'essential' item")]


def test_write_report_writes_markdown_json_and_real_pngs(tmp_path, history):
    import matplotlib.image as mpimg

    weights = {"format_rules": [(0, 1.0), (5, 1.2), (10, 1.5)], "safety": [(0, 1.0), (10, 0.8)]}
    path = write_report(history, str(tmp_path / "report"), weights=weights, title="Run X")
    assert path == str(tmp_path / "report" / "report.md")
    text = open(path).read()
    assert text.startswith("# Run X")
    for name in ("format_rules", "expert_rubric", "safety", "usefulness"):
        assert name in text
    assert "missing '...' item" not in text and "missing 'essential' item" in text  # the current finding
    assert "+50.0 pp" in text  # format_rules went from 25% to 75%
    assert "x" * 500 not in text and "x" * 150 in text  # the example answer is truncated
    assert "weakest dimension" in text and "cardiology" in text
    for png in ("dimensions.png", "categories.png", "weights.png", "areas.png"):
        file = tmp_path / "report" / png
        assert f"]({png})" in text  # embedded with a relative link
        assert file.read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(str(file))
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())  # strict JSON: NaN became null
    assert len(saved["history"]) == 2 and saved["weights"]["format_rules"][-1] == [10, 1.5]
    assert saved["history"][0]["dimensions"]["usefulness"]["mean"] is None


def test_write_report_without_weights_skips_the_weight_plot(tmp_path, history):
    write_report(history[:1], str(tmp_path))
    assert not (tmp_path / "weights.png").exists()
    assert (tmp_path / "dimensions.png").exists() and (tmp_path / "areas.png").exists()


def test_summary_table_numbers(history):
    table = summary_table(history[0], history[1])
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in table.splitlines()[2:]
    }
    assert rows["format_rules"] == ["format", "25.0%", "75.0%", "+50.0 pp", "0.250", "0.750", "+0.500"]
    assert rows["expert_rubric"] == ["expert", "50.0%", "50.0%", "+0.0 pp", "0.250", "0.250", "+0.000"]
    assert rows["safety"][1:5] == ["50.0%", "100.0%", "+50.0 pp", "0.500"]
    assert rows["usefulness"][1:] == ["–"] * 6
    assert rows["**fundamental**"][1:4] == ["50.0%", "100.0%", "+50.0 pp"]


def test_comparison_table_has_a_column_per_model(history):
    table = comparison_table({"base": history[0], "rl": history[1], "sft": history[0]})
    header = [c.strip() for c in table.splitlines()[0].split("|")[1:-1]]
    assert header == ["", "category", "base", "rl", "sft", "failed"]
    row = next(line for line in table.splitlines() if line.startswith("| format_rules"))
    assert [c.strip() for c in row.split("|")[3:-2]] == ["25.0% (0.250)", "75.0% (0.750)", "25.0% (0.250)"]
    assert "**expert**" in table


def test_checkpoint_policy_weights_load_into_the_configured_model(tmp_path, tiny_model_dir, bundled_records):
    from quark_lightning.evaluation.evaluate_models import load_for_eval
    from quark_lightning.models.loading import load_causal_lm

    trained = load_causal_lm(tiny_model_dir).model
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    state = {f"policy.{k}": v for k, v in trained.state_dict().items()}
    state["matrix_weights"] = torch.ones(3)
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "last.ckpt")
    model_cfg = OmegaConf.create(
        {
            "kind": "hf",
            "name_or_path": tiny_model_dir,
            "dtype": "float32",
            "trust_remote_code": False,
            "lora": {"enabled": False},
        }
    )
    loaded, step = load_for_eval("rl", str(tmp_path / "last.ckpt"), model_cfg, bundled_records)
    assert step == 7
    for (name, a), b in zip(trained.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------- end to end
def evaluate(tmp_path, *overrides):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    cmd = [
        sys.executable,
        "evaluate.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        "limit=4",
        "rollout.max_new_tokens=16",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_evaluate_compares_a_model_and_its_lora_adapter(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from quark_lightning.models.loading import load_causal_lm

    adapter = tmp_path / "adapter"
    base = load_causal_lm(tiny_model_dir).model
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(adapter)
    assert (adapter / "adapter_config.json").exists()

    proc = evaluate(tmp_path, f"models={{base: '{tiny_model_dir}', lora: '{adapter}'}}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("base", "lora"):
        report = (run / name / "report.md").read_text()
        assert "format_rules" in report and "safety" in report
        assert (run / name / "dimensions.png").read_bytes()[:8] == PNG_SIGNATURE
        assert len((run / name / "samples.jsonl").read_text().splitlines()) == 4
    comparison = (run / "comparison.md").read_text()
    assert "| base | lora |" in comparison
    assert "comparison.md" in proc.stdout and str(run / "base" / "report.md") in proc.stdout


@pytest.mark.slow
def test_evaluate_reports_a_missing_model_path_without_traceback(tmp_path):
    proc = evaluate(tmp_path, f"models={{rl: '{tmp_path / 'nope'}'}}")
    assert proc.returncode == 2
    assert "models.rl" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_summary_table_puts_answer_length_beside_quality(history):
    import torch

    from quark_lightning.loop.metrics import answer_lengths

    # 3 answers of 2, 4 and 4 tokens (EOS included); the last two cut at a 4-token cap
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    start = answer_lengths(mask, torch.tensor([False, True, True]))
    assert start == pytest.approx({"mean_tokens": 10 / 3, "cut_share": 2 / 3})
    first, last = dict(history[0], answers=start), dict(history[1], answers={"mean_tokens": 4.0, "cut_share": 1.0})
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in summary_table(first, last).splitlines()[2:]
    }
    assert rows["*answer length (tokens)*"] == ["(answers)", "–", "–", "–", "3.333", "4.000", "+0.667"]
    assert rows["*cut at the cap*"] == ["(answers)", "66.7%", "100.0%", "+33.3 pp", "–", "–", "–"]
    assert "*cut at the cap*" not in summary_table(history[0], history[1])  # older histories: no length rows
