"""Export the final policy as a directory that plain `transformers` / `peft` load, with a model card.

<export>/
  README.md           model card: how to load, the matrix metrics of the last evaluation, the stages
  quark_config.yaml   the resolved config that produced the model
  metrics.json        the last closed-loop evaluation (and the first: the cloned reference)
  model/              full fine-tuning: the policy (AutoModelForCausalLM.from_pretrained)
  adapter/            LoRA: the adapter (peft); its base_model_name_or_path is the policy RL started
                      from (the merged cloned policy), so AutoPeftModelForCausalLM finds it
  merged/             LoRA with merge: true: base + adapter merged into one full model
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

from omegaconf import OmegaConf

from quark_lightning.evaluation.report import summary_table
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.stages.context import PipelineContext, StageRecord
from quark_lightning.stages.stage_files import StageFileError, read_json

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def last_evaluation(eval_dir: str) -> dict[str, Any] | None:
    """{"first": metrics, "last": metrics} from the latest closed-loop report under eval_dir."""
    reports = sorted(glob.glob(os.path.join(eval_dir, "step_*", "metrics.json")))
    if not reports:
        return None
    stage = os.path.basename(os.path.dirname(os.path.normpath(eval_dir)))  # eval_dir is <stage dir>/eval
    fix = (
        f"delete {os.path.dirname(reports[-1])} (the export then reports the evaluation before it), or pass "
        f"pipeline.rerun_from={stage} to run the stage again"
    )
    history = read_json(reports[-1], fix, keys=("history",))["history"]
    if not isinstance(history, list) or not history:
        raise StageFileError(f"{reports[-1]} is damaged: its history is not a non-empty list. Fix: {fix}")
    return {"first": history[0], "last": history[-1]}


def copy_dir(src: str, dst: str) -> None:
    """Copy a saved policy; its `base/` (the start policy, written after an SFT start) is not needed here:
    the exported adapter is re-pointed at the pipeline's own base."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("base") if os.path.isdir(src) else None)


def export_adapter(rl: StageRecord, out_dir: str, merge: bool) -> dict[str, str]:
    """Copy the RL adapter, point it at its base, and (merge) write base + adapter as one model."""
    from peft import PeftModel

    base = rl.outputs.get("base")
    if not base or not os.path.isdir(base):
        raise ConfigError(
            f"export: the RL adapter's base policy {base!r} is missing. Fix: rerun the pipeline from the "
            "stage that produced it (pipeline.rerun_from=<stage>)"
        )
    adapter_dir = os.path.join(out_dir, "adapter")
    copy_dir(rl.outputs["adapter"], adapter_dir)
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    source = os.path.join(rl.outputs["adapter"], "adapter_config.json")
    fix = (
        f"pass pipeline.rerun_from={rl.name} to train the RL adapter again (this file is a copy of {source})"
    )
    adapter_config = read_json(config_path, fix)
    adapter_config["base_model_name_or_path"] = os.path.abspath(base)
    with open(config_path, "w") as fh:
        json.dump(adapter_config, fh, indent=2)
    paths = {"adapter": adapter_dir, "base": os.path.abspath(base)}
    if merge:
        loaded = load_causal_lm(base)
        merged = PeftModel.from_pretrained(loaded.model, adapter_dir).merge_and_unload()
        paths["merged"] = os.path.join(out_dir, "merged")
        merged.save_pretrained(paths["merged"])
        loaded.tokenizer.save_pretrained(paths["merged"])
    return paths


def export_policy(ctx: PipelineContext, rl: StageRecord, out_dir: str, merge: bool = True) -> dict[str, Any]:
    os.makedirs(out_dir, exist_ok=True)
    if rl.outputs.get("adapter"):
        paths = export_adapter(rl, out_dir, merge)
    else:
        paths = {"model": os.path.join(out_dir, "model")}
        copy_dir(rl.outputs["policy"], paths["model"])
    evaluation = last_evaluation(rl.outputs["eval_dir"]) if rl.outputs.get("eval_dir") else None
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(evaluation or {}, fh, indent=2)
    config_yaml = OmegaConf.to_yaml(ctx.cfg, resolve=True)
    with open(os.path.join(out_dir, "quark_config.yaml"), "w") as fh:
        fh.write(config_yaml)
    card = model_card(ctx, paths, evaluation, config_yaml)
    with open(os.path.join(out_dir, "README.md"), "w") as fh:
        fh.write(card)
    print(f"  exported to {out_dir}: {', '.join(sorted(paths))}, README.md (model card), quark_config.yaml")
    return {"export_dir": out_dir, **paths}


def _load_snippet(paths: dict[str, str]) -> str:
    if "adapter" in paths:
        lines = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            'model = AutoPeftModelForCausalLM.from_pretrained("adapter")  # base: see adapter_config.json',
            'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        ]
        if "merged" in paths:
            lines += ["", "# or the merged model, no peft needed:", "from transformers import AutoModelForCausalLM",
                      'model = AutoModelForCausalLM.from_pretrained("merged")']  # fmt: skip
    else:
        lines = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("model")',
            'tokenizer = AutoTokenizer.from_pretrained("model")',
        ]
    lines += [
        "",
        'messages = [{"role": "user", "content": "How much paracetamol can an adult take in a day?"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt',",
        "                                       return_dict=True)",
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))",
    ]
    return "\n".join(lines)


def model_card(
    ctx: PipelineContext, paths: dict[str, str], evaluation: dict[str, Any] | None, config_yaml: str
) -> str:
    base = paths.get("base", "")
    front = ["---", f"library_name: {'peft' if 'adapter' in paths else 'transformers'}"]
    if base:
        front.append(f"base_model: {base}")
    front += ["tags:", "  - quark-lightning", "  - grpo", "  - medical", "---"]
    stages = "\n".join(
        f"| {r.name} | {r.kind} | {r.status} | {r.seconds:.0f} |" for r in ctx.records.values()
    )
    if evaluation:
        metrics = (
            f"Held-out closed-loop evaluation ({evaluation['last'].get('num_samples', '?')} greedy answers): "
            f"start of RL (step {evaluation['first']['step']}, the cloned reference policy) vs the last "
            f"evaluation (step {evaluation['last']['step']}).\n\n"
            + summary_table(evaluation["first"], evaluation["last"])
        )
    else:
        metrics = "No closed-loop evaluation was recorded (callbacks.closed_loop was off)."
    sections = [
        "\n".join(front),
        "# Medical policy aligned with quark-lightning",
        "Trained by the quark-lightning pipeline (after *Quark Medical Alignment*, arXiv 2602.11661): "
        "foundational SFT, expert behaviour cloning, reward models, Reference-Frozen Normalization "
        "calibration and GRPO against the multi-dimensional alignment matrix. "
        "**Not for clinical use**: a research artefact; its scores below are on the project's own "
        "held-out prompts.",
        "## Files\n\n"
        + "\n".join(f"- `{k}`: {os.path.basename(v) if k != 'base' else v}" for k, v in paths.items()),
        "## Load it\n\n```python\n" + _load_snippet(paths) + "\n```",
        "## Matrix metrics of the last evaluation\n\n" + metrics,
        "## Stages\n\n| stage | kind | this run | seconds |\n|---|---|---|---|\n" + stages,
        "## Configuration\n\nThe resolved config is in `quark_config.yaml`:\n\n```yaml\n"
        + config_yaml
        + "```",
    ]
    return "\n\n".join(sections) + "\n"
