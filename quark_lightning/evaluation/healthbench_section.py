"""The HealthBench section of an evaluation run (`python evaluate.py`, and the closed loop's held-out table):
its settings (`healthbench.*` in conf/evaluate.yaml), the grader and its judge, the section computed beside
the matrix metrics for prompts that carry HealthBench criteria, the judge check (ideal vs off-topic
answers), and the report's Markdown section (evaluation/healthbench_report.py computes the numbers)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quark_lightning.data.healthbench_source import cache_dir_of, published_grader_template
from quark_lightning.evaluation.healthbench_report import healthbench_result, judge_check, markdown
from quark_lightning.infra.errors import ConfigError
from quark_lightning.scorers.healthbench_score import HealthBenchScorer

HB_SOURCES = (None, "wheel")
HB_TEMPLATES = ("auto", "published", "ours")
HB_REPLY_TOKENS = 256  # the published grader's reply: a JSON object with an explanation and criteria_met


def healthbench_settings(cfg: DictConfig) -> dict[str, Any]:
    """The `healthbench` group as plain values, checked (ConfigError naming the key and the fix)."""
    hb = cfg.get("healthbench") or {}
    hb = OmegaConf.to_container(hb, resolve=True) if OmegaConf.is_config(hb) else dict(hb)
    if hb.get("source") not in HB_SOURCES:
        raise ConfigError(
            f"healthbench.source: got {hb.get('source')!r}, expected null (prompts from data.path) or wheel "
            "(HealthBench's 500 examples). Fix: healthbench.source=wheel"
        )
    template = hb.get("template", "auto")
    if template not in HB_TEMPLATES:
        raise ConfigError(
            f"healthbench.template: got {template!r}, expected one of {', '.join(HB_TEMPLATES)}"
        )
    if template == "auto":
        template = "published" if hb.get("source") == "wheel" else "ours"
    if template == "published" and hb.get("grader") not in (None, "published"):
        raise ConfigError(
            f"healthbench.template=published is the published grader's prompt; healthbench.grader="
            f"{hb.get('grader')} does not use it. Fix: healthbench.grader=published, or healthbench.template=ours"
        )
    check = hb.get("judge_check", 0)
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise ConfigError(
            f"healthbench.judge_check: got {check!r}, expected a number of examples >= 0 (0 = skip)"
        )
    for key in ("themes", "categories", "axes"):
        if not isinstance(hb.get(key) or [], list):
            raise ConfigError(
                f"healthbench.{key}: expected a list, e.g. healthbench.{key}=[emergency_referrals]"
            )
    return {**hb, "template": template, "judge_check": check}


def healthbench_scorer(cfg: DictConfig, hb: dict[str, Any]):
    """The HealthBench scorer of `healthbench.grader` through the run's judge (None when no grader)."""
    if not hb.get("grader"):
        return None

    kwargs = dict(hb.get("grader_kwargs") or {})
    if hb["template"] == "published":
        kwargs["template"] = published_grader_template(cache_dir_of(cfg))
    return HealthBenchScorer(hb["grader"], grading_judge(cfg.get("judge"), hb["grader"]), kwargs)


def grading_judge(judge: Any, grader: str) -> Any:
    """The run's judge settings, with replies long enough for the published grader's JSON verdict (an
    explanation, then `criteria_met`): `judge.max_tokens` is raised to HB_REPLY_TOKENS, saying so."""
    if grader != "published" or judge is None:
        return judge
    judge = OmegaConf.to_container(judge, resolve=True) if OmegaConf.is_config(judge) else dict(judge)
    if int(judge.get("max_tokens") or 0) < HB_REPLY_TOKENS:
        print(
            f"HealthBench: judge.max_tokens {judge.get('max_tokens')} is too short for the grader's JSON verdict "
            f"with its explanation; grading with {HB_REPLY_TOKENS}"
        )
        judge["max_tokens"] = HB_REPLY_TOKENS
    return judge


def _judge_name(scorer) -> str:
    judge = getattr(scorer, "llm_judge", None)
    if judge is None:
        return "none (not an LLM grader)"
    return f"{judge.describe()} [{judge.identity()}]" if hasattr(judge, "describe") else str(judge)


def healthbench_beside(
    cfg: DictConfig, prompts: list[dict[str, Any]], answers: list[str], scorer=None
) -> dict | None:
    """The HealthBench section (evaluation/healthbench_report.py) of prompts that carry HealthBench criteria,
    reported beside the matrix metrics when `healthbench.grader` is set; with the grader, template and
    judge named and the seconds the grading took."""
    hb = healthbench_settings(cfg)
    scorer = scorer or healthbench_scorer(cfg, hb)
    if scorer is None:
        return None

    start = time.perf_counter()
    result = healthbench_result(scorer, prompts, answers, seed=int(cfg.seed))
    if result is None:
        return None
    result.update(
        grader=str(hb["grader"]),
        template=hb["template"],
        judge=_judge_name(scorer),
        grading_seconds=round(time.perf_counter() - start, 1),
    )
    return result


def run_judge_check(
    cfg: DictConfig, hb: dict[str, Any], scorer, prompts: list[dict[str, Any]], run_dir: str
) -> dict | None:
    """Ideal-vs-poor separation of the judge on these prompts (`healthbench.judge_check` examples)."""
    if scorer is None or not hb["judge_check"]:
        return None

    start = time.perf_counter()
    check = judge_check(scorer, prompts, seed=int(cfg.seed), max_examples=hb["judge_check"])
    if check is None:
        print("[judge check] no prompt with a physician ideal answer: skipped")
        return None
    check.update(judge=_judge_name(scorer), seconds=round(time.perf_counter() - start, 1))
    with open(os.path.join(run_dir, "healthbench_judge_check.json"), "w") as fh:
        json.dump(check, fh, indent=1)
    print(
        f"[judge check] ideal {check['ideal']:.3f} vs off-topic {check['poor']:.3f} on {check['n']} examples: "
        f"separation {check['separation']:.3f}, ideal above on {check['ideal_wins']:.0%}: {check['verdict']}"
    )
    return check


def _append_healthbench(report: str, hb: dict, check: dict | None) -> None:
    """The HealthBench section at the end of a model's report."""
    with open(report, "a") as fh:
        fh.write("\n" + markdown(hb, check))
