"""Shared fixtures: tiny models saved and loaded through the real path, small prompt records. No network."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

from quark_lightning.cli.run import corpus_texts  # noqa: E402
from quark_lightning.data import BUNDLED_PROMPTS  # noqa: E402
from quark_lightning.data.datamodule import load_prompt_records  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402
from quark_lightning.models.tiny import ensure_tiny_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where torch sees a CUDA device; elsewhere they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: no CUDA device here (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def on_devices():
    """`device` parameters: CPU always, CUDA as a `gpu`-marked case (skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="session")
def bundled_records():
    return load_prompt_records(str(BUNDLED_PROMPTS))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_records):
    cache = tmp_path_factory.mktemp("model_cache")
    return ensure_tiny_model(
        corpus_texts(bundled_records),
        cache_dir=str(cache),
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


@pytest.fixture()
def tiny_model(tiny_model_dir):
    return load_causal_lm(tiny_model_dir)


def write_jsonl(path, rows) -> str:
    with open(path, "w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def noisy_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with large random weights: its greedy outputs differ from prompt to prompt and from
    token to token (the plain tiny model repeats one token), for tests that compare generated text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=generator)
    out = tmp_path_factory.mktemp("noisy_model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)
