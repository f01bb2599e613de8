"""Scalar reward model (transformer backbone + 2-layer MLP head) and its Lightning training module.

`ScalarRewardModel` = `AutoModel.from_pretrained(name_or_path)` (the base transformer, no LM head;
LoRA optional through peft) + a 2-layer MLP head (hidden -> hidden -> 1, the "2-layer head" of the
team's reward models) read at the last non-padding token (`pooling: last`, the default) or on the mean
of the non-padding hidden states (`pooling: mean`). A (question, answer) pair is rendered with
the tokenizer's chat template (the answer as the assistant turn), so training, evaluation and the
`ORMScorer` all see exactly the same text. Sequences longer than `max_length` keep their *end* (the
answer and the end-of-turn marker the head reads); batches are right-padded.

Saved format (`save_pretrained(dir)`), a plain Hugging Face directory plus two files:

    config.json, model.safetensors   the backbone (`save_pretrained`; LoRA merged in first)
    tokenizer files                  with the chat template
    reward_head.safetensors          the head's weights (head.0 = hidden->hidden, head.2 = hidden->1)
    reward_model.json                head sizes, base model type, training summary (metrics, λ, m, ...)

`ScalarRewardModel.from_pretrained(dir)` loads it back through `AutoModel` / `AutoTokenizer`.

Frozen backbone (`freeze_backbone()`, `reward_model.train_backbone: frozen`): the backbone gets no gradient
and stays in eval mode, so its pooled hidden state of a text never changes. `FeaturePairDataset` computes
it once per distinct text (no grad, length-sorted batches) and training runs the head alone on those
cached features: `head_scores(features(ids, mask)) == forward(ids, mask)`, so the saved model scores
text exactly as the head was trained.

`RewardModelModule` trains it on pairs with the ties loss (`quark_lightning.reward_model.ties_loss`),
AdamW, logging `rm/loss`, `rm/loss_diff`, `rm/loss_same`, `rm/loss_center`, `rm/accuracy` and, on the
held-out split, `val/pair_accuracy`, `val/tie_accuracy`, `val/tie_abs_delta`, `val/pair_margin`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from quark_lightning.infra.errors import QuarkError
from quark_lightning.infra.optimizers import OptimizerFactory, SchedulerFactory, configure_optimizer
from quark_lightning.reward_model.ties_loss import PREFERENCE_CODES, preference_metrics, ties_objective

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"
FORMAT = "quark-scalar-reward-model"
TRAIN_HINT = "python train.py +experiment=rm_orm"
POOLINGS = ("last", "mean")


class RewardModelLoadError(QuarkError, RuntimeError):
    """A saved reward-model directory is missing, incomplete or damaged; the message says how to fix it."""


def _damaged_fix(directory: str) -> str:
    """How to replace a damaged saved reward model: a cached one is trained again, any other restored."""
    run_dir = os.path.dirname(os.path.abspath(directory))
    if os.path.basename(os.path.dirname(run_dir)) == "reward_models":  # <cache>/reward_models/<name>/
        return (
            f"Fix: delete {run_dir} (a reward model cached by ORMScorer(train_experiment=...)): the next run "
            "trains it again."
        )
    return (
        f"Fix: restore {directory} from an intact copy, or train it again with `{TRAIN_HINT}` and pass the "
        "new <run_dir>/reward_model."
    )


MISSING_FIX = (
    f"Fix: train one with `{TRAIN_HINT}` (or +experiment=rm_online); it prints the saved path "
    "<run_dir>/reward_model, which is the directory to pass here."
)


def _saved_directory(directory: str) -> str:
    """The saved reward model's directory (a run dir's reward_model/ when a run dir was given); one that
    does not exist or lacks a file of the format is refused, saying how to make one."""
    nested = os.path.join(directory, "reward_model")  # a run dir was given: use its reward_model/
    if not os.path.exists(os.path.join(directory, META_FILE)) and os.path.exists(
        os.path.join(nested, META_FILE)
    ):
        directory = nested
    if not os.path.isdir(directory):
        raise RewardModelLoadError(f"reward model directory {directory!r} does not exist. {MISSING_FIX}")
    missing = [
        f for f in (META_FILE, HEAD_FILE, "config.json") if not os.path.exists(os.path.join(directory, f))
    ]
    if missing:
        raise RewardModelLoadError(
            f"{directory!r} is not a saved scalar reward model: missing {', '.join(missing)}. {MISSING_FIX}"
        )
    return directory


def _read_meta(directory: str, damaged_fix: str) -> dict[str, Any]:
    """reward_model.json, after every file of the directory was checked for damage (`check_model_files`)."""
    from quark_lightning.models.loading import ModelLoadError, check_model_files

    try:
        check_model_files(directory, "reward model", fix=damaged_fix, extra=(HEAD_FILE,))
    except ModelLoadError as err:
        raise RewardModelLoadError(str(err)) from err
    try:
        with open(os.path.join(directory, META_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RewardModelLoadError(
            f"{directory}/{META_FILE}: invalid JSON ({err}), truncated or overwritten. {damaged_fix}"
        ) from err
    if not isinstance(meta, dict):
        raise RewardModelLoadError(
            f"{directory}/{META_FILE}: a JSON {type(meta).__name__}, not an object. {damaged_fix}"
        )
    if meta.get("format") != FORMAT:
        raise RewardModelLoadError(
            f"{directory}/{META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}. {MISSING_FIX}"
        )
    return meta


def _load_backbone(directory: str, dtype: str, trust_remote_code: bool, damaged_fix: str) -> tuple[Any, Any]:
    """(tokenizer, backbone) of a saved reward model; a failure names the directory and the fix."""
    from transformers import AutoModel

    from quark_lightning.models.loading import (
        DTYPES,
        ModelLoadError,
        is_damage,
        is_size_mismatch,
        load_tokenizer,
    )

    try:
        tokenizer = load_tokenizer(directory, trust_remote_code)
        backbone = AutoModel.from_pretrained(
            directory, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except ModelLoadError as err:
        raise RewardModelLoadError(f"{err}. {MISSING_FIX}") from err
    except (OSError, ValueError) as err:
        raise RewardModelLoadError(
            f"could not load the backbone in {directory!r}: {err}. {MISSING_FIX}"
        ) from err
    except Exception as err:  # a file damaged since the check, weights that do not fit config.json
        if not (is_damage(err) or is_size_mismatch(err)):
            raise
        raise RewardModelLoadError(
            f"could not load the backbone in {directory!r}: a file is damaged or does not fit config.json "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0]}). {damaged_fix}"
        ) from err
    return tokenizer, backbone


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists.  -> input_ids (N, T), attention_mask (N, T)."""
    width = max(1, max((len(s) for s in sequences), default=1))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class ScalarRewardModel(nn.Module):
    """r_θ(x, y): backbone hidden state at the last non-pad token (or their mean) -> Linear-GELU-Linear."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        head_hidden_size: int | None = None,
        summary: dict[str, Any] | None = None,
        pooling: str = "last",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: got {pooling!r}, expected one of {list(POOLINGS)}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.backbone_frozen = False
        hidden = int(backbone.config.hidden_size)
        head_hidden = int(head_hidden_size or hidden)
        self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        self.summary: dict[str, Any] = dict(summary or {})
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ---------------------------------------------------------------- construction / persistence
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        revision: str | None = None,
        head_hidden_size: int | None = None,
        lora: dict[str, Any] | None = None,
        pooling: str = "last",
    ) -> ScalarRewardModel:
        """A fresh reward model on a pretrained backbone (hub name or local dir); head randomly initialised."""
        from transformers import AutoModel

        from quark_lightning.models.loading import (
            DTYPES,
            check_model_files,
            explain_load_error,
            is_damage,
            is_size_mismatch,
            load_tokenizer,
        )

        check_model_files(name_or_path, "reward-model backbone")  # a damaged file: its name and the fix
        tokenizer = load_tokenizer(name_or_path, trust_remote_code)
        kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
        if revision:
            kwargs["revision"] = revision
        try:
            backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
        except Exception as err:  # noqa: BLE001 - explained below, else raised as it is
            if isinstance(err, (OSError, ValueError)) or is_damage(err) or is_size_mismatch(err):
                raise explain_load_error(name_or_path, err, "reward-model backbone") from err
            raise
        if lora and lora.get("enabled"):
            from peft import LoraConfig, get_peft_model

            target = lora.get("target_modules", "all-linear")
            config = LoraConfig(
                r=int(lora["r"]),
                lora_alpha=int(lora["alpha"]),
                lora_dropout=float(lora.get("dropout", 0.0)),
                target_modules=target if isinstance(target, str) else list(target),
                task_type="FEATURE_EXTRACTION",
            )
            backbone = get_peft_model(backbone, config)
        model = cls(backbone, tokenizer, head_hidden_size, pooling=pooling)
        model.head.to(torch.float32)
        return model

    def freeze_backbone(self) -> ScalarRewardModel:
        """No gradient into the backbone and eval mode for good (`train()` keeps it in eval): only the
        head trains, and the backbone's features of a text are fixed, so they can be computed once."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> ScalarRewardModel:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def merge_lora(self) -> None:
        """Fold a LoRA adapter into the backbone weights (in place; the scores do not change)."""
        if hasattr(self.backbone, "merge_and_unload"):
            self.backbone = self.backbone.merge_and_unload()

    def save_pretrained(self, directory: str, summary: dict[str, Any] | None = None) -> str:
        from safetensors.torch import save_file

        if summary is not None:
            self.summary = dict(summary)
        self.merge_lora()
        os.makedirs(directory, exist_ok=True)
        self.backbone.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        head_state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head_state, os.path.join(directory, HEAD_FILE))
        meta = {
            "format": FORMAT,
            "version": 1,
            "hidden_size": self.head[0].in_features,
            "head_hidden_size": self.head[0].out_features,
            "pooling": self.pooling,
            "head": "Linear(hidden, head_hidden) -> GELU -> Linear(head_hidden, 1) on the "
            + ("last non-pad token" if self.pooling == "last" else "mean of the non-pad tokens"),
            "base_model_type": getattr(self.backbone.config, "model_type", None),
            "base_name_or_path": getattr(self.backbone.config, "_name_or_path", None),
            "rendering": "tokenizer chat template, answer as the assistant turn; long inputs keep their end",
            "summary": self.summary,
        }
        with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as fh:
            json.dump(_json_safe(meta), fh, indent=2, ensure_ascii=False)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str, dtype: str = "float32", trust_remote_code: bool = False
    ) -> ScalarRewardModel:
        """Load a directory written by `save_pretrained`; a missing or partial one says how to make it.

        A damaged one (a truncated, empty or garbage file: weights, head, JSON) is refused with the file's
        name and the fix (`check_model_files`, then the reads below), never a traceback."""
        from safetensors.torch import load_file

        directory = _saved_directory(str(directory))
        damaged_fix = _damaged_fix(directory)
        meta = _read_meta(directory, damaged_fix)
        tokenizer, backbone = _load_backbone(directory, dtype, trust_remote_code, damaged_fix)
        pooling = meta.get("pooling", "last")  # directories saved before pooling existed read the last token
        if pooling not in POOLINGS:
            raise RewardModelLoadError(
                f"{directory}/{META_FILE}: pooling {pooling!r}, expected one of {list(POOLINGS)}. {MISSING_FIX}"
            )
        model = cls(backbone, tokenizer, meta.get("head_hidden_size"), meta.get("summary"), pooling=pooling)
        try:
            model.head.load_state_dict(load_file(os.path.join(directory, HEAD_FILE)))
        except RuntimeError as err:  # other tensor names or sizes than reward_model.json and config.json say
            reason = " ".join(str(err).split())[:300]
            raise RewardModelLoadError(
                f"{directory}/{HEAD_FILE} does not fit {META_FILE} and config.json ({reason}): the files "
                f"come from different saves. {damaged_fix}"
            ) from err
        return model.eval()

    # ---------------------------------------------------------------- text -> scores
    def render(self, messages: Sequence[dict[str, str]], response: str) -> str:
        conversation = list(messages) + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        question = "\n".join(m["content"] for m in messages)
        return f"{question}\n\n{response}{self.tokenizer.eos_token or ''}"

    def encode(self, messages: Sequence[dict[str, str]], response: str, max_length: int) -> list[int]:
        ids = self.tokenizer(self.render(messages, response), add_special_tokens=False)["input_ids"]
        return ids[-max_length:]  # keep the end: the answer and the token the head reads

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (N, T) -> pooled backbone hidden states (N, H) in the head's dtype."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (N, T, H)
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).float()  # (N, T, 1); summed in float32 for any dtype
            pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N, H)
        else:
            positions = torch.arange(attention_mask.size(1), device=attention_mask.device)  # (T,)
            last = (attention_mask * positions).argmax(dim=1)  # (N,) last non-pad position, either side
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # (N, H)
        return pooled.to(self.head[0].weight.dtype)

    def head_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, H) -> rewards (N,) float32."""
        return self.head(features.to(self.head[0].weight.dtype)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (N, T) -> rewards (N,) float32."""
        return self.head_scores(self.features(input_ids, attention_mask))

    @torch.no_grad()
    def score(
        self,
        messages: Sequence[Sequence[dict[str, str]]],
        responses: Sequence[str],
        batch_size: int = 16,
        max_length: int = 512,
    ) -> torch.Tensor:
        """Rewards (N,) of (question, response) pairs, on CPU."""
        device = next(self.parameters()).device
        encoded = [self.encode(m, r, max_length) for m, r in zip(messages, responses, strict=True)]
        out = []
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_right(encoded[start : start + batch_size], self.tokenizer.pad_token_id)
            out.append(self(ids.to(device), mask.to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)


# -------------------------------------------------------------------- pair data
class PairDataset(Dataset):
    """Tokenized preference pairs: each item is (ids of a, ids of b, preference code +1 / −1 / 0)."""

    def __init__(self, model: ScalarRewardModel, pairs: Sequence[dict[str, Any]], max_length: int = 512):
        self.items = [
            (
                model.encode(p["messages"], p["response_a"], max_length),
                model.encode(p["messages"], p["response_b"], max_length),
                PREFERENCE_CODES[p["preference"]],
            )
            for p in pairs
        ]
        self.pad_id = model.tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    def collate(self, rows) -> dict[str, torch.Tensor]:
        """One forward for both sides: input_ids (2B, T) = [a_1..a_B, b_1..b_B], pref (B,)."""
        ids, mask = pad_right([r[0] for r in rows] + [r[1] for r in rows], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "pref": torch.tensor([r[2] for r in rows])}

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches in order, or (shuffle) in a new seeded order each pass from a loader whose position
        inside the pass is saved in the checkpoint, so a resumed run takes exactly the batches the
        uninterrupted one would have (quark_lightning/data/resumable.py)."""
        if not shuffle:
            return DataLoader(self, batch_size=batch_size, collate_fn=self.collate)
        from quark_lightning.data.resumable import ResumableDataLoader, ShuffleSampler

        return ResumableDataLoader(
            self,
            batch_size=batch_size,
            sampler=ShuffleSampler(self, seed=seed),
            collate_fn=self.collate,
            generator=torch.Generator().manual_seed(seed),
        )


@torch.no_grad()
def extract_features(
    model: ScalarRewardModel, encoded: Sequence[Sequence[int]], batch_size: int = 16
) -> torch.Tensor:
    """Pooled backbone features (N, H) of token lists, in eval mode without grad, batched by length
    (sorted, so a batch pads to about its own length); row i belongs to encoded[i]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.zeros(len(encoded), model.head[0].in_features, dtype=model.head[0].weight.dtype)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_right([encoded[i] for i in rows], model.tokenizer.pad_token_id)
        out[rows] = model.features(ids.to(device), mask.to(device)).cpu()
    model.train(was_training)
    return out


class FeaturePairDataset(Dataset):
    """Preference pairs over a frozen backbone's cached features: each distinct (question, answer) text
    goes through the backbone once; an item is (row of a, row of b, preference code +1 / −1 / 0)."""

    def __init__(
        self,
        model: ScalarRewardModel,
        pairs: Sequence[dict[str, Any]],
        max_length: int = 512,
        batch_size: int = 16,
    ):
        import time

        if not model.backbone_frozen:
            raise ValueError(
                "FeaturePairDataset needs a frozen backbone (call model.freeze_backbone() first)"
            )
        rows: dict[tuple[int, ...], int] = {}
        self.items = []
        for p in pairs:
            a = tuple(model.encode(p["messages"], p["response_a"], max_length))
            b = tuple(model.encode(p["messages"], p["response_b"], max_length))
            self.items.append(
                (
                    rows.setdefault(a, len(rows)),
                    rows.setdefault(b, len(rows)),
                    PREFERENCE_CODES[p["preference"]],
                )
            )
        started = time.perf_counter()
        self.features = extract_features(model, list(rows), batch_size)  # (U, H)
        self.seconds = time.perf_counter() - started
        self.num_texts = len(rows)
        self.num_tokens = sum(len(t) for t in rows)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    def collate(self, rows) -> dict[str, torch.Tensor]:
        """features (2B, H) = [a_1..a_B, b_1..b_B], pref (B,)."""
        index = torch.tensor([r[0] for r in rows] + [r[1] for r in rows], dtype=torch.long)
        return {"features": self.features[index], "pref": torch.tensor([r[2] for r in rows])}

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        return PairDataset.loader(self, batch_size, shuffle, seed)


def pair_rewards(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_a (B,), r_b (B,)) of a collated pair batch (token ids, or a frozen backbone's cached features)."""
    if "features" in batch:
        rewards = model.head_scores(batch["features"])  # (2B,)
    else:
        rewards = model(batch["input_ids"], batch["attention_mask"])  # (2B,)
    b = batch["pref"].size(0)
    return rewards[:b], rewards[b:]


@torch.no_grad()
def evaluate_pairs(
    model: ScalarRewardModel,
    dataset: PairDataset | FeaturePairDataset,
    batch_size: int = 16,
    tie_threshold: float = 0.5,
) -> dict[str, float]:
    """preference_metrics over a whole dataset (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    r_a, r_b, pref = [], [], []
    for batch in dataset.loader(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        a, b = pair_rewards(model, batch)
        r_a.append(a.cpu())
        r_b.append(b.cpu())
        pref.append(batch["pref"].cpu())
    model.train(was_training)
    if not r_a:
        return preference_metrics(
            torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), tie_threshold
        )
    return preference_metrics(torch.cat(r_a), torch.cat(r_b), torch.cat(pref), tie_threshold)


# -------------------------------------------------------------------- Lightning module
class RewardModelModule(L.LightningModule):
    """Trains a ScalarRewardModel on pairs with J = L_diff + λ·L_same (+ c·L_center), AdamW."""

    def __init__(
        self,
        model: ScalarRewardModel,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ties_lambda: float = 1.0,
        ties_margin: float = 0.0,
        literal_paper_form: bool = False,
        center_rewards_coefficient: float = 0.0,
        tie_threshold: float = 0.5,
        head_lr: float | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ):
        """optimizer / lr_scheduler: the built `reward_model.optimizer` / `.lr_scheduler` nodes
        (infra/optimizers.py); None: AdamW(lr, weight_decay) and linear_warmup(warmup_steps), what the
        nodes ship with. The optimizer gets two parameter groups: backbone at `lr`, head at `head_lr`."""
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.head_lr = head_lr
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.loss_kwargs = dict(
            ties_lambda=ties_lambda,
            ties_margin=ties_margin,
            literal_paper_form=literal_paper_form,
            center_rewards_coefficient=center_rewards_coefficient,
        )
        self.tie_threshold = tie_threshold
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_start(self) -> None:
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes (a frozen
        # backbone stays in eval: ScalarRewardModel.train)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        r_a, r_b = pair_rewards(self.model, batch)  # (B,), (B,)
        out = ties_objective(r_a, r_b, batch["pref"], **self.loss_kwargs)
        n = batch["pref"].size(0)
        diff = batch["pref"] != 0
        signed = ((r_a - r_b) * batch["pref"].float())[diff]
        metrics = {
            "rm/loss_diff": out.loss_diff,
            "rm/loss_same": out.loss_same,
            "rm/loss_center": out.loss_center,
        }
        if diff.any():
            metrics["rm/accuracy"] = (signed > 0).float().mean()
        self.log_dict(metrics, on_step=True, batch_size=n)
        self.log("rm/loss", out.loss, prog_bar=True, on_step=True, batch_size=n)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        r_a, r_b = pair_rewards(self.model, batch)
        out = ties_objective(r_a, r_b, batch["pref"], **self.loss_kwargs)
        self.log("val/loss", out.loss, batch_size=batch["pref"].size(0))
        self._val.append((r_a.detach().cpu(), r_b.detach().cpu(), batch["pref"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        r_a, r_b, pref = (torch.cat(x) for x in zip(*self._val))
        self._val.clear()
        metrics = preference_metrics(r_a, r_b, pref, self.tie_threshold)
        for name in ("pair_accuracy", "tie_accuracy", "tie_abs_delta", "pair_margin", "reward_std"):
            if not math.isnan(metrics[name]):
                self.log(f"val/{name}", metrics[name], prog_bar=name == "pair_accuracy")

    def configure_optimizers(self):
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": body, "lr": self.lr}, {"params": head, "lr": self.head_lr or self.lr}]
        return configure_optimizer(
            [g for g in groups if g["params"]],
            self.optimizer_factory,
            self.lr_scheduler_factory,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
        )
