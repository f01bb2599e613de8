"""Log a few sampled completions, their per-dimension scores and findings: text (TensorBoard, MLflow) and a
table (W&B, and MLflow as a .json artifact); quark_lightning.infra.loggers.log_text routes them."""

from __future__ import annotations

import math

import lightning as L

from quark_lightning.infra.loggers import log_text


def format_samples(record, names: list[str], num_samples: int) -> str:
    """A markdown block per sample: prompt, completion, scores, reward, advantage, findings."""
    blocks = []
    G = max(1, len(record.completions) // max(1, len({p["id"] for p in record.prompts})))
    for i in range(0, len(record.completions), G)[:num_samples]:
        prompt = record.prompts[i]
        question = prompt["messages"][-1]["content"]
        scores = ", ".join(
            f"{n}={v:.3f}" if not math.isnan(v) else f"{n}=n/a"
            for n, v in zip(names, record.scores[i].tolist())
        )
        findings = [f"- {name}: {f}" for name in names for f in record.findings.get(name, [[]] * (i + 1))[i]]
        blocks.append(
            f"**{prompt['id']}**: {question}\n\n> {record.completions[i]}\n\n"
            f"scores: {scores}; reward={float(record.reward[i]):.3f}; advantage={float(record.advantages[i]):.3f}\n\n"
            + ("\n".join(findings) if findings else "- no findings")
        )
    return "\n\n---\n\n".join(blocks)


def sample_table(record, names: list[str], num_samples: int) -> tuple[list[str], list[list]]:
    """The same samples as `format_samples`, one row each: id, question, completion, reward, advantage,
    one column per dimension (None = not applicable) and the findings joined by '; '."""
    columns = ["id", "question", "completion", "reward", "advantage", *names, "findings"]
    G = max(1, len(record.completions) // max(1, len({p["id"] for p in record.prompts})))
    rows = []
    for i in range(0, len(record.completions), G)[:num_samples]:
        scores = [None if math.isnan(v) else round(v, 4) for v in record.scores[i].tolist()]
        findings = [f"{n}: {f}" for n in names for f in record.findings.get(n, [[]] * (i + 1))[i]]
        prompt = record.prompts[i]
        rows.append(
            [prompt["id"], prompt["messages"][-1]["content"], record.completions[i],
             float(record.reward[i]), float(record.advantages[i]), *scores, "; ".join(findings)]
        )  # fmt: skip
    return columns, rows


class SampleCompletionsLogger(L.Callback):
    def __init__(self, every_n_steps: int = 5, num_samples: int = 4):
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        record = getattr(pl_module, "last_step", None)
        if record is None or not trainer.is_global_zero or batch_idx % self.every_n_steps:
            return
        names = pl_module.matrix.names
        text = format_samples(record, names, self.num_samples)
        table = sample_table(record, names, self.num_samples)
        log_text(trainer, "samples", text, trainer.global_step, table=table)
