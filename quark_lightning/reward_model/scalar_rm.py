"""Scalar reward model (transformer backbone + 2-layer MLP head): text -> reward, and its saved format.

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

`ScalarRewardModel.from_pretrained(dir)` loads it back through `AutoModel` / `AutoTokenizer`; a missing,
incomplete or damaged directory raises `RewardModelLoadError` saying how to fix it.

Frozen backbone (`freeze_backbone()`, `reward_model.train_backbone: frozen`): the backbone gets no gradient
and stays in eval mode, so its pooled hidden state of a text never changes, and
`head_scores(features(ids, mask)) == forward(ids, mask)`: the head can train on features computed once
per text (`pair_datasets.FeaturePairDataset`) and the saved model scores text exactly as it was trained.

The preference-pair datasets are in `pair_datasets`, the Lightning module that trains the model on them
in `rm_training_module`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quark_lightning.infra.errors import QuarkError
from quark_lightning.models.loading import (
    DTYPES,
    ModelLoadError,
    check_model_files,
    explain_load_error,
    is_damage,
    is_size_mismatch,
    load_tokenizer,
)

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
