"""model.chat_template for base models without one, and algorithm.optimizer (issue 23, item 5).

A tokenizer without a chat template is refused, naming `model.chat_template=...` as the fix; with the key
set (a Jinja string or a file) it is used, also over the tokenizer's own, and a broken one is named at
load time. A base model without a template trains one RL step through the real config path
(`conf/train.yaml` + `+experiment=smoke`, `run(cfg)`). `algorithm.optimizer` was accepted and ignored
(GRPO always built AdamW): it is now built, so SGD configured is SGD in `trainer.optimizers[0]`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from quark_lightning.cli.run import corpus_texts, run
from quark_lightning.config.groups import validate_groups
from quark_lightning.config.validate import validate_config
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import ModelLoadError, load_tokenizer
from quark_lightning.models.tiny import CHAT_TEMPLATE, ensure_tiny_model
from tests.conftest import REPO

TINY = {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
TINY_OVERRIDES = [f"model.tiny.{k}={v}" for k, v in TINY.items()]
# a template of another shape than the tiny model's own, to see which one is used
PLAIN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>{% endif %}"
)
SGD = "{_target_: torch.optim.SGD, _partial_: true, lr: 0.01}"


class OptimizerSpy(L.Callback):
    """Records what the run trained with (a `callbacks.spy` node of the composed config)."""

    seen: list[dict] = []

    def on_train_end(self, trainer, pl_module):
        OptimizerSpy.seen.append(
            {"optimizer": trainer.optimizers[0], "chat_template": pl_module.tokenizer.chat_template}
        )


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory, bundled_records) -> str:
    """The smallest tiny model with its chat template deleted: a base model as the hub has them."""
    cache = tmp_path_factory.mktemp("chat_template_cache")
    built = Path(ensure_tiny_model(corpus_texts(bundled_records), cache_dir=str(cache), **TINY))
    base = cache / "base-model"
    shutil.copytree(built, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config_path = base / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return str(base)


def compose_smoke(tmp_path: Path, overrides: list[str]):
    """`+experiment=smoke` shrunk to one RL step (tests/cli/test_every_experiment_runs.py's shrink)."""
    base = [
        "+experiment=smoke",
        "trainer.max_steps=1",
        "warmstart.steps=1",
        "warmstart.batch_size=2",
        "warmstart.warmup_steps=0",
        "rollout.max_new_tokens=8",
        "algorithm.num_generations=2",
        "data.prompts_per_step=1",
        "optimization.normalization.calibration_prompts=2",
        "callbacks.closed_loop=null",
        f"+callbacks.spy={{_target_: {OptimizerSpy.__module__}.OptimizerSpy}}",
        "save_policy=false",
        f"run_dir={tmp_path / 'run'}",
        f"model.cache_dir={tmp_path / 'cache'}",
    ]
    with initialize_config_dir(config_dir=str(Path(REPO) / "conf"), version_base=None):
        return compose(config_name="train", overrides=[*base, *overrides])


# ---------------------------------------------------------------------------------------- chat template


def test_a_tokenizer_without_template_is_refused_naming_the_key(base_model_dir):
    with pytest.raises(
        ModelLoadError, match=r"has no chat template \(a base model\)\. Fix: pass model\.chat_template="
    ):
        load_tokenizer(base_model_dir)


def test_chat_template_as_text_or_file_and_the_users_choice_wins(base_model_dir, tiny_model_dir, tmp_path):
    assert load_tokenizer(base_model_dir, chat_template=PLAIN_TEMPLATE).chat_template == PLAIN_TEMPLATE
    path = tmp_path / "template.jinja"
    path.write_text(PLAIN_TEMPLATE)
    tokenizer = load_tokenizer(base_model_dir, chat_template=str(path))
    assert tokenizer.chat_template == PLAIN_TEMPLATE and tokenizer.padding_side == "left"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>Hi<|im_end|><|im_start|>"
    assert load_tokenizer(tiny_model_dir).chat_template == CHAT_TEMPLATE  # its own
    assert load_tokenizer(tiny_model_dir, chat_template=PLAIN_TEMPLATE).chat_template == PLAIN_TEMPLATE


def test_a_broken_or_missing_chat_template_is_named(base_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model\.chat_template: not a usable chat template"):
        load_tokenizer(base_model_dir, chat_template="{% for m in messages %}{{ m.content }}")  # no endfor
    with pytest.raises(ModelLoadError, match=r"neither a Jinja template .* nor a readable file"):
        load_tokenizer(base_model_dir, chat_template=str(tmp_path / "missing.jinja"))
    cfg = compose_smoke(tmp_path, [f"model.chat_template={tmp_path / 'missing.jinja'}"])
    with pytest.raises(
        ConfigError, match=r"model\.chat_template: got '.*missing\.jinja', expected null, a Jinja"
    ):
        validate_config(cfg)


def test_a_base_model_trains_one_step_with_model_chat_template(base_model_dir, tmp_path):
    template = tmp_path / "chatml.jinja"
    template.write_text(CHAT_TEMPLATE)
    overrides = ["model=hf", f"model.name_or_path={base_model_dir}", f"model.chat_template={template}"]
    OptimizerSpy.seen.clear()
    result = run(compose_smoke(tmp_path, overrides))
    assert Path(result["checkpoint"]).is_file()
    (seen,) = OptimizerSpy.seen
    assert seen["chat_template"] == CHAT_TEMPLATE
    assert type(seen["optimizer"]) is torch.optim.AdamW  # the shipped node: AdamW from the flat keys
    assert seen["optimizer"].param_groups[0]["betas"] == (0.9, 0.999)


# ---------------------------------------------------------------------------------------- optimizer


def test_algorithm_optimizer_is_built(tmp_path):
    overrides = [*TINY_OVERRIDES, "algorithm.optimizer=null", f"algorithm.optimizer={SGD}"]
    OptimizerSpy.seen.clear()
    run(compose_smoke(tmp_path, overrides))
    (seen,) = OptimizerSpy.seen
    assert type(seen["optimizer"]) is torch.optim.SGD
    assert seen["optimizer"].param_groups[0]["initial_lr"] == 0.01


def test_an_optimizer_node_merged_into_adamw_is_refused_with_the_fix(tmp_path):
    cfg = compose_smoke(tmp_path, [f"algorithm.optimizer={SGD}"])  # Hydra merges: betas stays
    with pytest.raises(ConfigError) as err:
        validate_groups(cfg)
    assert "algorithm.optimizer.betas: unknown key" in str(err.value)
    assert "Fix: replace it whole with algorithm.optimizer=null" in str(err.value)
