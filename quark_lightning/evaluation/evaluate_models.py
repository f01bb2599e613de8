"""Evaluate one or more models against the alignment matrix: `python evaluate.py` (conf/evaluate.yaml).

For each model: one answer per prompt (greedy by default) with the HF generate engine, scores from the
matrix, `evaluation_metrics`, and a report (`write_report`) under `<run_dir>/<model name>/`. With
several models, `<run_dir>/comparison.md` puts them side by side.

A model is given as (`models: {name: path}`):

- a directory saved with `save_pretrained` (e.g. `<train run>/policy`), loaded through the one loading
  path (`load_causal_lm`);
- a LoRA adapter directory (it holds `adapter_config.json`), loaded with
  `peft.AutoPeftModelForCausalLM` (the base model named in the adapter config must be loadable);
- a Lightning checkpoint (`.ckpt`) written by GRPO training: the base model comes from the `model`
  config (tiny or hf, as in training) and the checkpoint's `policy.*` weights are loaded into it (a
  LoRA policy is rebuilt with `model.lora` and merged).

With no `models`, the configured model is evaluated as is.

With `heldout=true` the prompts are the run's held-out split (the first `limit`), and the matrix as
configured scores them, as the run's closed loop scores its held-out tables: a policy evaluated this way
reproduces the run's last held-out table (`<run>/eval/summary.md`, end). `reward_state=<run>/reward_state.json`
(or the run's `.ckpt`) scores with the reward the run ended with instead: its closed loop's format-rule
and rubric-item weights and mined phrases go into the matrix's scorers.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from quark_lightning.cli.run import load_model
from quark_lightning.data.data_settings import DataSettings, data_settings
from quark_lightning.data.datamodule import PromptDataModule, load_prompt_records, with_system_prompt
from quark_lightning.data.healthbench_source import (
    HealthBenchSelection,
    cache_dir_of,
    load_healthbench_records,
)
from quark_lightning.evaluation.eval_settings import EvaluationSettings, evaluation_settings
from quark_lightning.evaluation.healthbench_section import (
    _append_healthbench,
    healthbench_beside,
    healthbench_scorer,
    healthbench_settings,
    run_judge_check,
)
from quark_lightning.evaluation.report import comparison_table, write_report
from quark_lightning.infra.errors import ConfigError
from quark_lightning.loop.loop_state import load_reward_state
from quark_lightning.loop.metrics import evaluation_metrics
from quark_lightning.matrix.build import build_matrix
from quark_lightning.models.loading import (
    LoadedModel,
    ModelLoadError,
    apply_lora,
    load_causal_lm,
    load_tokenizer,
)

POLICY_PREFIX = "policy."  # GRPOModule.policy


def _load_model_cfg(model_cfg: DictConfig, records: list[dict[str, Any]]) -> LoadedModel:
    return load_model(model_cfg, records)


def load_adapter(path: str, model_cfg: DictConfig) -> LoadedModel:
    from peft import AutoPeftModelForCausalLM

    try:
        model = AutoPeftModelForCausalLM.from_pretrained(
            path, trust_remote_code=bool(model_cfg.trust_remote_code)
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load the LoRA adapter {path!r} or its base model: {type(err).__name__}: {err}. "
            "The base model named in adapter_config.json (base_model_name_or_path) must be loadable."
        ) from err
    has_tokenizer = any(
        os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")
    )
    base = model.peft_config[model.active_adapter].base_model_name_or_path
    tokenizer = load_tokenizer(
        path if has_tokenizer else base, bool(model_cfg.trust_remote_code), model_cfg.get("chat_template")
    )
    return LoadedModel(model=model, tokenizer=tokenizer)


def load_checkpoint(
    path: str, model_cfg: DictConfig, records: list[dict[str, Any]]
) -> tuple[LoadedModel, int]:
    """The configured base model with the checkpoint's policy weights; and the checkpoint's global step."""
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects (a .ckpt may
        # come from anywhere); our GRPO checkpoints hold nothing else.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        raise ModelLoadError(
            f"could not read checkpoint {path!r} as tensors only (weights_only=True): "
            f"{type(err).__name__}: {str(err)[:300]}. Fix: pass a .ckpt written by GRPO training"
        ) from err
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    policy_state = {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    if not policy_state:
        raise ModelLoadError(
            f"checkpoint {path!r} has no '{POLICY_PREFIX}*' weights: it is not a GRPO training checkpoint"
        )
    loaded = _load_model_cfg(model_cfg, records)
    model = loaded.model
    if any("lora_" in k for k in policy_state):
        lora = model_cfg.lora
        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, target)
    try:
        model.load_state_dict(policy_state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(
            f"checkpoint {path!r} does not fit the configured model ({model_cfg.kind}): {err}. "
            "Fix: evaluate with the same model (and model.lora) settings the run was trained with."
        ) from err
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer), int(ckpt.get("global_step", 0))


def load_for_eval(
    name: str, path: str | None, model_cfg: DictConfig, records: list[dict[str, Any]]
) -> tuple[LoadedModel, int]:
    """Load one model to evaluate (see the module docstring); return it and its training step."""
    if path is None:
        return _load_model_cfg(model_cfg, records), 0
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise ConfigError(
            f"models.{name}: {path!r} does not exist. Fix: give an HF model directory, a LoRA adapter "
            "directory or a .ckpt file written by training"
        )
    if os.path.isfile(path):
        if not path.endswith(".ckpt"):
            raise ConfigError(f"models.{name}: {path!r} is a file but not a Lightning checkpoint (.ckpt)")
        return load_checkpoint(path, model_cfg, records)
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        return load_adapter(path, model_cfg), 0
    loaded = load_causal_lm(
        path,
        dtype=model_cfg.dtype,
        trust_remote_code=bool(model_cfg.trust_remote_code),
        revision=model_cfg.get("revision"),
        attn_implementation=model_cfg.get("attn_implementation"),
        chat_template=model_cfg.get("chat_template"),  # presented with the template training used
    )
    return loaded, 0


def generate_answers(
    engine, loaded: LoadedModel, prompts: list[dict[str, Any]], batch_size: int, greedy: bool
):
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        answers += engine.generate(loaded.model, loaded.tokenizer, batch, 1, greedy=greedy).completions
    return answers


def select_prompts(records: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """`limit` prompts drawn with `seed` (every model sees the same ones), in file order; None = all.

    A random subset rather than the first N: data files are often sorted by clinical area.
    """
    if limit is None or int(limit) >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), int(limit)))
    return [records[i] for i in keep]


def _model_specs(models: dict[str, str | None] | None, model_cfg: DictConfig) -> dict[str, str | None]:
    """Name -> path of each model to evaluate: `models`, else the configured model (path None)."""
    specs = {str(k): v for k, v in (models or {}).items()}
    if specs:
        return specs
    kind = model_cfg.kind
    default = kind if kind != "hf" else os.path.basename(str(model_cfg.name_or_path).rstrip("/"))
    return {default or "model": None}


def _dir_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def heldout_records(data: DataSettings) -> list[dict[str, Any]]:
    """A training run's held-out split of `data.path` (`data.val_fraction`, `data.split_seed`, with its
    calculator prompts and system prompt), in the order its closed loop answers them."""
    dm = PromptDataModule(**data.module_kwargs())
    dm.setup("fit")
    records = dm.val_records()
    if not records:
        raise ConfigError(
            f"heldout=true: data.path={data.path} has no held-out split (data.val_fraction={data.val_fraction}; "
            "a split needs >= 10 prompts). Fix: heldout=false to evaluate every prompt, or the run's data settings"
        )
    return records


def load_eval_records(cfg: DictConfig, heldout: bool, hb: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompts to evaluate on, presented as training presents them (`data.system_prompt`):
    HealthBench from the wheel (`healthbench.source=wheel`, with its selection), the held-out split of
    `data.path` (`heldout=true`), or `data.path`."""
    data = data_settings(cfg.data)
    if heldout:
        if hb.get("source") == "wheel":
            raise ConfigError("heldout=true and healthbench.source=wheel: choose one set of prompts")
        return heldout_records(data)
    if hb.get("source") == "wheel":
        selection = HealthBenchSelection.from_mapping({**hb, "limit": None})
        records = load_healthbench_records(cache_dir_of(cfg), selection)
        print(f"HealthBench: {len(records)} examples ({selection.describe()})")
    else:
        records = load_prompt_records(data.path, **data.source_options)  # every row validated
    return [with_system_prompt(r, data.system_prompt) for r in records] if data.system_prompt else records


def _write_run_config(cfg: DictConfig, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
        fh.write(OmegaConf.to_yaml(cfg, resolve=True))


def _write_samples(out_dir: str, matrix, prompts: list[dict[str, Any]], answers: list[str], scored) -> None:
    """`samples.jsonl`: one row per prompt with the answer, its scores (NaN -> null) and findings."""
    with open(os.path.join(out_dir, "samples.jsonl"), "w") as fh:
        for i, (p, a) in enumerate(zip(prompts, answers)):
            row = scored.scores[i].tolist()
            scores = {n: (None if v != v else v) for n, v in zip(matrix.names, row)}  # NaN -> null
            findings = {n: scored.findings[n][i] for n in matrix.names}
            fh.write(
                json.dumps({"id": p["id"], "response": a, "scores": scores, "findings": findings}) + "\n"
            )


def _score_and_write(
    name: str,
    cfg: DictConfig,
    matrix,
    prompts: list[dict[str, Any]],
    answers: list[str],
    step: int,
    run_dir: str,
    hb_scorer=None,
    check: dict | None = None,
) -> tuple[dict, str]:
    """Score one model's answers, write its report and samples; return (metrics, report path)."""
    scored = matrix.score(prompts, answers)
    metrics = evaluation_metrics(matrix, prompts, answers, scored, step=step)
    hb = healthbench_beside(cfg, prompts, answers, hb_scorer) if hb_scorer is not None else None
    if hb is not None:
        hb["judge_check"] = check
        metrics["healthbench"] = hb
        print(
            f"[{name}] HealthBench score {hb['overall']:.3f} [{hb['ci_low']:.3f}, {hb['ci_high']:.3f}] "
            f"(n={hb['n']}, {hb['ungraded']} of {hb['criteria']} criteria ungraded, {hb['grading_seconds']} s)"
        )
        print(
            f"[{name}] per axis: "
            + ", ".join(
                f"{a} {r['score']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for a, r in hb["axes"].items()
            )
        )
        triage = hb.get("triage") or {}
        if triage:
            print(
                f"[{name}] under-triage {triage.get('under_triage', float('nan')):.0%}, over-triage "
                f"{triage.get('over_triage', float('nan')):.0%} (physician categories: "
                + ", ".join(f"{c} {r['n']}" for c, r in triage["categories"].items())
                + ")"
            )
    out_dir = os.path.join(run_dir, _dir_name(name))
    report = write_report([metrics], out_dir, title=f"Evaluation: {name}")
    if hb is not None:
        _append_healthbench(report, hb, check)
    _write_samples(out_dir, matrix, prompts, answers, scored)
    return metrics, report


def _evaluate_model(
    name: str,
    path: str | None,
    cfg: DictConfig,
    ev: EvaluationSettings,
    records: list[dict[str, Any]],
    prompts: list[dict[str, Any]],
    matrix,
    engine,
    device: torch.device,
    run_dir: str,
    hb_scorer=None,
    check: dict | None = None,
) -> tuple[dict, str]:
    """Load one model, answer every prompt, score and write; free the model; return (metrics, report)."""
    loaded, step = load_for_eval(name, path, cfg.model, records)
    loaded.model.to(device)
    print(f"[{name}] answering {len(prompts)} prompts ({'greedy' if ev.greedy else 'sampled'})", flush=True)
    start = time.perf_counter()
    answers = generate_answers(engine, loaded, prompts, ev.batch_size, ev.greedy)
    print(f"[{name}] answered in {time.perf_counter() - start:.1f} s", flush=True)
    metrics, report = _score_and_write(name, cfg, matrix, prompts, answers, step, run_dir, hb_scorer, check)
    del loaded
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return metrics, report


def _print_reports(reports: dict[str, str]) -> None:
    print("\nReports:")
    for name, path in reports.items():
        print(f"  {name:<16} {path}")


def _write_comparison(run_dir: str, results: dict[str, dict], n_prompts: int) -> None:
    """`comparison.md`: the models side by side (written when more than one was evaluated)."""
    table = comparison_table(results)
    comparison = os.path.join(run_dir, "comparison.md")
    with open(comparison, "w") as fh:
        fh.write(f"# Model comparison ({n_prompts} prompts)\n\n{table}\n")
    print(f"  {'comparison':<16} {comparison}\n\n{table}")


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate each model of `cfg.models` (or the configured model); return {model name: metrics}."""
    ev = evaluation_settings(cfg)  # evaluate.py's own keys, checked before anything is loaded
    torch.manual_seed(ev.seed)
    specs = _model_specs(ev.models, cfg.model)
    hb = healthbench_settings(cfg)  # checked before anything is loaded
    records = load_eval_records(cfg, ev.heldout, hb)
    # the held-out split is already a random draw: its first `limit`, as the closed loop takes them
    prompts = records[: ev.limit] if ev.heldout else select_prompts(records, ev.limit, ev.seed)
    matrix = build_matrix(cfg.matrix)
    if ev.reward_state:  # score with the reward a training run ended with (loop/loop_state.py)
        load_reward_state(ev.reward_state, matrix)
    engine = instantiate(cfg.rollout)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = str(cfg.run_dir)
    _write_run_config(cfg, run_dir)
    hb_scorer = healthbench_scorer(cfg, hb)
    check = run_judge_check(cfg, hb, hb_scorer, prompts, run_dir)

    results: dict[str, dict] = {}
    reports: dict[str, str] = {}
    for name, path in specs.items():
        results[name], reports[name] = _evaluate_model(
            name, path, cfg, ev, records, prompts, matrix, engine, device, run_dir, hb_scorer, check
        )
    _print_reports(reports)
    if len(results) > 1:
        _write_comparison(run_dir, results, len(prompts))
    return results
