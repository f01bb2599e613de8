"""The one loading path: `AutoModelForCausalLM` / `AutoTokenizer` `.from_pretrained(name_or_path)`.

Works for any hub name (users with network) or local directory saved with `save_pretrained` (tests,
CI, the offline demo). `trust_remote_code` stays off unless the config turns it on.

Damaged files are input too: before a local directory is loaded, `check_model_files` reads its JSON
files (config, generation config, tokenizer files, shard index) and the header of every weights file
(safetensors: header and size; pytorch_model.bin: the zip directory), so a truncated, empty or garbage
file stops the run with a ModelLoadError (exit 2) that names the file and the fix, not a traceback from
safetensors or transformers. The same damage met while loading (a hub model's cached copy) is explained
by `explain_load_error`.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from quark_lightning.infra.errors import QuarkError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(QuarkError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and how to fix it."""


def explain_load_error(name_or_path: str, err: Exception, what: str = "model") -> ModelLoadError:
    if is_damage(err):
        return ModelLoadError(
            f"could not load {what} {name_or_path!r}: a file of it is damaged (truncated, empty or not what its "
            f"name says: {type(err).__name__}: {_first_line(err)}). {damaged_fix(name_or_path, what)}"
        )
    if is_size_mismatch(err):
        return ModelLoadError(
            f"could not load {what} {name_or_path!r}: its weights do not match its config.json (a tensor has "
            "another size than the config says: one of the two was replaced or edited). "
            f"{damaged_fix(name_or_path, what)}"
        )
    if name_or_path.startswith(("/", "./", "../", "~")) and not os.path.exists(
        os.path.expanduser(name_or_path)
    ):
        hint = f"no such directory; pass the directory a {what} was saved to with save_pretrained"
    elif os.path.isdir(name_or_path):
        hint = (
            f"the directory exists but does not hold a loadable {what}: it needs config.json, the weights "
            "(model.safetensors or pytorch_model.bin) and the tokenizer files, as written by save_pretrained"
        )
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        hint = (
            "HF_HUB_OFFLINE=1 is set and this is not a local directory: pass a local path saved with "
            "save_pretrained (model.name_or_path=/path/to/dir), or use model=tiny"
        )
    else:
        hint = "check the hub name or path (model.name_or_path) and your network access"
    return ModelLoadError(f"could not load {what} {name_or_path!r}: {hint}. ({type(err).__name__}: {err})")


# ---------------------------------------------------------------------------------------- damaged files
# JSON files a load reads when they are there (transformers' config, generation config, tokenizer files).
MODEL_JSON_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


def is_damage(err: BaseException) -> bool:
    """Whether a loading error means a damaged file (truncated, empty, garbage), not a missing one."""
    from safetensors import SafetensorError

    if isinstance(
        err, (SafetensorError, zipfile.BadZipFile, EOFError, json.JSONDecodeError, UnicodeDecodeError)
    ):
        return True
    import pickle

    if isinstance(err, pickle.UnpicklingError):
        return True
    return isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err)


def is_size_mismatch(err: BaseException) -> bool:
    """transformers' refusal of weights whose shapes differ from the config's (ignore_mismatched_sizes)."""
    return isinstance(err, RuntimeError) and "ignore_mismatched_sizes" in str(err)


def damaged_fix(name_or_path: str, what: str = "model") -> str:
    """How to replace a damaged model: model=tiny's cache is rebuilt, a hub model downloaded again."""
    path = os.path.expanduser(str(name_or_path))
    key = "model.adapter_path" if what == "LoRA adapter" else "model.name_or_path"
    if os.path.basename(os.path.normpath(path)).startswith("tiny-llama-"):
        return f"Fix: delete the directory {path} (model=tiny's cache): the next run builds it again."
    if os.path.isdir(path):
        return (
            f"Fix: copy, download or save_pretrained the {what} into {path} again, or point {key} at an "
            "intact copy."
        )
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = os.path.join(HF_HUB_CACHE, "models--" + str(name_or_path).replace("/", "--"))
    return (
        f"Fix: delete the damaged download ({cached}, or `hf cache delete`) and load it again with network "
        "access, or point model.name_or_path at an intact local copy."
    )


def _damaged(path: str, problem: str, what: str, fix: str) -> ModelLoadError:
    return ModelLoadError(f"could not load {what}: {path} is damaged: {problem}. {fix}")


def _check_json(path: str, what: str, fix: str, must_be_object: bool) -> object:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except UnicodeDecodeError as err:
        raise _damaged(path, f"not UTF-8 text: {err.reason} at byte {err.start}", what, fix) from err
    except json.JSONDecodeError as err:
        size = os.path.getsize(path)
        problem = (
            "empty (0 bytes)"
            if size == 0
            else f"not valid JSON ({err.msg}: line {err.lineno} column {err.colno}), truncated or overwritten"
        )
        raise _damaged(path, problem, what, fix) from err
    except OSError as err:
        raise _damaged(path, f"cannot be read: {err.strerror}", what, fix) from err
    if must_be_object and not isinstance(value, dict):
        raise _damaged(path, f"a JSON {type(value).__name__}, not an object", what, fix)
    return value


def _check_safetensors(path: str, what: str, fix: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):  # reads the header and checks the file's size against it
            pass
    except (SafetensorError, OSError) as err:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        problem = (
            "empty (0 bytes)"
            if size == 0
            else f"{size:,} bytes, truncated or not a safetensors file: {_first_line(err)}"
        )
        raise _damaged(path, problem, what, fix) from err


def _check_torch_zip(path: str, what: str, fix: str) -> None:
    size = os.path.getsize(path)
    if size == 0:
        raise _damaged(path, "empty (0 bytes)", what, fix)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the very end
        raise _damaged(path, f"{size:,} bytes, truncated or not a torch.save file", what, fix)


def check_model_files(
    name_or_path: str, what: str = "model", fix: str | None = None, extra: tuple[str, ...] = ()
) -> None:
    """Refuse a local model directory with a damaged file (see the module docstring); a hub name or a
    missing directory is left to the loader. `extra`: more safetensors files of the directory to check
    (a reward model's head); `fix`: the sentence that says what to do (default: `damaged_fix`)."""
    directory = os.path.expanduser(str(name_or_path))
    if not os.path.isdir(directory):
        return
    fix = fix or damaged_fix(directory, what)
    what = f"{what} {str(name_or_path)!r}"
    for name in MODEL_JSON_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            _check_json(path, what, fix, must_be_object=True)
    weights: list[str] = []
    for index_name, single in ((SAFETENSORS_INDEX, "model.safetensors"), (BIN_INDEX, "pytorch_model.bin")):
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            weight_map = _check_json(index_path, what, fix, must_be_object=True).get("weight_map")
            if not isinstance(weight_map, dict):
                raise _damaged(index_path, "no weight_map object", what, fix)
            weights += sorted({str(v) for v in weight_map.values()})
        elif os.path.isfile(os.path.join(directory, single)):
            weights.append(single)
        if weights:
            break  # transformers prefers safetensors; a .bin beside them is not read
    for name in [*weights, *extra]:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue  # a missing file: the loader says which
        if name.endswith(".safetensors"):
            _check_safetensors(path, what, fix)
        else:
            _check_torch_zip(path, what, fix)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of `name_or_path`, padding on the left, with a chat template.

    `chat_template` (model.chat_template): a Jinja chat template (it holds `{{` or `{%`), or the path of a
    file holding one. It replaces the tokenizer's own (the user's choice wins); without it, a tokenizer
    that has no template of its own (a base model) is refused, naming model.chat_template as the fix."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise explain_load_error(name_or_path, err, "tokenizer") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        template, where = chat_template, "model.chat_template"
        if "{{" not in template and "{%" not in template:  # not a template: the path of a file holding one
            where = f"model.chat_template ({template!r})"
            try:
                with open(os.path.expanduser(template), encoding="utf-8") as fh:
                    template = fh.read()
            except (OSError, UnicodeDecodeError) as err:
                raise ModelLoadError(
                    f"{where}: neither a Jinja template (no {{{{ or {{%) nor a readable file "
                    f"({type(err).__name__}: {err}). Fix: pass the template itself or the path of a file holding it"
                ) from err
        tokenizer.chat_template = template
        try:  # a broken template fails here, naming the key, not at the first rollout
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
            )
        except Exception as err:  # noqa: BLE001 - jinja2's TemplateError and whatever the template raises
            raise ModelLoadError(
                f"{where}: not a usable chat template ({type(err).__name__}: {err}). Fix the template; it "
                "renders `messages` (a list of {role, content}) and honours `add_generation_prompt`"
            ) from err
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"tokenizer of {name_or_path!r} has no chat template (a base model). Fix: pass "
            "model.chat_template=<a Jinja chat template, or the path of a file holding one>, or use an "
            "instruction-tuned model"
        )
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    chat_template: str | None = None,
) -> LoadedModel:
    if dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype: got {dtype!r}, expected one of {sorted(DTYPES)}")
    if not isinstance(trust_remote_code, bool):  # "false" (a string) must not switch it on
        raise ModelLoadError(f"model.trust_remote_code: got {trust_remote_code!r}, expected true or false")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    check_model_files(name_or_path)  # a damaged file of a local directory: its name and the fix
    tokenizer = load_tokenizer(name_or_path, trust_remote_code, chat_template)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except Exception as err:  # noqa: BLE001 - explained below, else raised as it is
        if isinstance(err, (OSError, ValueError)) or is_damage(err) or is_size_mismatch(err):
            raise explain_load_error(name_or_path, err) from err
        raise
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer)


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str] | str):
    """Wrap the model with a fresh LoRA adapter (peft); only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def merge_sft_adapter(model: PreTrainedModel, adapter_path: str) -> PreTrainedModel:
    """Fold a trained (SFT) LoRA adapter into the base weights, so the SFT policy is the new base.

    Interpretation of "when RL starts from an SFT adapter the reference is the SFT policy": we merge the
    adapter first. The frozen reference (a frozen copy, or the RL adapter disabled) is then the SFT
    policy, never the bare base model, and no second adapter has to be kept in sync.
    """
    from peft import PeftModel

    check_adapter_files(adapter_path)  # a damaged file of the adapter directory: its name and the fix
    try:
        merged = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    except Exception as err:  # noqa: BLE001 - explained below, else raised as it is
        if isinstance(err, (OSError, ValueError)) or is_damage(err) or is_size_mismatch(err):
            raise explain_load_error(adapter_path, err, "LoRA adapter") from err
        raise
    return merged


def check_adapter_files(adapter_path: str) -> None:
    """`check_model_files` for a peft LoRA adapter directory: its adapter_config.json and its weights
    (adapter_model.safetensors, else adapter_model.bin, the one peft reads), besides any tokenizer files."""
    directory = os.path.expanduser(str(adapter_path))
    if not os.path.isdir(directory):
        return  # a missing directory or a hub name: left to peft
    what = "LoRA adapter"
    config = os.path.join(directory, "adapter_config.json")
    if os.path.isfile(config):
        _check_json(
            config, f"{what} {str(adapter_path)!r}", damaged_fix(directory, what), must_be_object=True
        )
    weights = "adapter_model.safetensors"
    if not os.path.isfile(os.path.join(directory, weights)):
        weights = "adapter_model.bin"
    check_model_files(adapter_path, what, extra=(weights,))
