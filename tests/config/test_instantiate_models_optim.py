"""Models, optimizers and schedules built by Hydra `instantiate` (issue 14, item 2).

- every conf/model/*.yaml names a source class in `_target_` and builds without fetching anything (the tiny
  model is built offline; smollm2 / hf only check the source and its arguments);
- the deprecated `kind:` (no `_target_`) maps to the same source (KIND_TARGETS); an unknown kind or target
  is a ConfigError naming the key and the fix; a matrix's embedded `${model}` (built recursively with its
  scorer) trains the same cached reward model as the config;
- GRPO, SFT and the reward model build their optimizer and warmup through infra/optimizers.py, with the
  same param groups as the AdamW they built before and the old lambda's learning rate at every step.
"""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from quark_lightning.infra import optimizers
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models import fetch
from quark_lightning.models import weight_sources as sources
from quark_lightning.models.weight_sources import (
    KIND_TARGETS,
    MODEL_KINDS,
    GGUFModel,
    HFModel,
    ModelSource,
    SmolLM2,
    TinyModel,
    model_source,
    resolve_model_path,
)
from tests.conftest import REPO

MODEL_GROUPS = {"tiny": TinyModel, "hf": HFModel, "smollm2": SmolLM2}
HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY = ["model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.vocab_size=512"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        return hydra_compose("train", list(overrides))


def model_cfg(group: str, cache: str):
    extra = [f"model.name_or_path={HUB}"] if group == "hf" else []
    return compose(f"model={group}", f"model.cache_dir={cache}", *extra).model


@pytest.fixture()
def no_fetch(monkeypatch):
    """Anything that would download or convert fails the test."""
    for name in ("pip_download", "convert_gguf", "ensure_wheel_file"):
        monkeypatch.setattr(fetch, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called"))


# ------------------------------------------------------------------------------------------------ models
def test_every_model_group_names_its_source_and_builds_without_fetching(tmp_path, no_fetch):
    from hydra.utils import get_class

    groups = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "conf", "model")) if f.endswith(".yaml"))
    assert groups == sorted(MODEL_GROUPS)
    for group in groups:
        cfg = model_cfg(group, str(tmp_path))
        cls = get_class(cfg._target_)
        assert cls is MODEL_GROUPS[group] and issubclass(cls, ModelSource) and cls.kind == cfg.kind
        assert KIND_TARGETS[cfg.kind] == cfg._target_
        source = model_source(cfg)  # builds the source: reads and fetches nothing
        assert type(source) is cls
        # every key the rest of the code reads is kept, resolved
        for key in ("dtype", "trust_remote_code", "revision", "attn_implementation", "adapter_path", "lora"):
            assert (
                OmegaConf.to_container(source.config)[key] == OmegaConf.to_container(cfg, resolve=True)[key]
            )
        assert source.cache_dir == str(tmp_path)


def test_sources_resolve_to_the_same_paths_as_before(tmp_path, monkeypatch, no_fetch, bundled_records):
    from quark_lightning.cli.run import corpus_texts
    from quark_lightning.models.tiny import ensure_tiny_model

    corpus = corpus_texts(bundled_records)
    tiny = compose("model=tiny", f"model.cache_dir={tmp_path}", *TINY).model
    path = resolve_model_path(tiny, corpus)  # built offline, cached under cache_dir/models/
    assert os.path.isfile(os.path.join(path, "config.json")) and path.startswith(str(tmp_path))
    sizes = OmegaConf.to_container(tiny.tiny)
    assert path == ensure_tiny_model(corpus, cache_dir=str(tmp_path), **sizes)  # the old call: same cache

    assert resolve_model_path(model_cfg("hf", str(tmp_path))) == HUB  # hub names pass through
    calls = []
    monkeypatch.setattr(sources, "ensure_wheel_model", lambda src, cache: calls.append((src, cache)) or "w")
    monkeypatch.setattr(sources, "ensure_converted_gguf", lambda p, cache: calls.append((p, cache)) or "g")
    assert resolve_model_path(model_cfg("smollm2", str(tmp_path))) == "w"
    gguf = {"name_or_path": "/models/x", "gguf_file": "m.gguf", "cache_dir": str(tmp_path)}
    assert resolve_model_path({"_target_": KIND_TARGETS["hf"], **gguf}) == "g"
    assert resolve_model_path({"_target_": "quark_lightning.models.weight_sources.GGUFModel", **gguf}) == "g"
    assert calls == [(sources.SMOLLM2, str(tmp_path))] + [("/models/x/m.gguf", str(tmp_path))] * 2
    with pytest.raises(ConfigError, match="model.gguf_file: required by"):
        GGUFModel(name_or_path="/models/x").path()


def test_the_old_kind_key_still_works(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "ensure_wheel_model", lambda src, cache: f"{cache}/{src.name}")
    for kind in MODEL_KINDS:
        old = OmegaConf.create({"kind": kind, "name_or_path": HUB, "cache_dir": str(tmp_path)})
        source = model_source(old)
        assert type(source) is MODEL_GROUPS[kind] and source.config.kind == kind
    assert resolve_model_path(OmegaConf.create({"kind": "hf", "name_or_path": HUB})) == HUB
    assert resolve_model_path({"kind": "smollm2", "cache_dir": "c"}) == "c/SmolLM2-135M-Instruct"
    # a config with only `_target_` gets its source's kind (what validation and cache keys read)
    assert model_source({"_target_": KIND_TARGETS["tiny"]}).config.kind == "tiny"
    assert sources.model_kind({"_target_": KIND_TARGETS["smollm2"]}) == "smollm2"


def test_kind_overriding_the_target_wins_with_a_warning(tmp_path):
    """The pipeline points a model=tiny config at a trained policy with model.kind=hf (stages/kinds.py)."""
    cfg = compose("model=tiny", f"model.cache_dir={tmp_path}").model
    cfg.kind, cfg.name_or_path = "hf", str(tmp_path)
    with pytest.warns(UserWarning, match="model.kind='hf' and model._target_=.*TinyModel.* disagree"):
        assert resolve_model_path(cfg) == str(tmp_path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "gguf"}, r"model.kind: got 'gguf' and no model._target_, expected one of \['tiny', 'hf'"),
        ({}, r"model.kind: got None"),
        (
            {"_target_": "quark_lightning.models.weight_sources.NoSuchModel"},
            r"model._target_: .*NoSuchModel.* could not",
        ),
        (
            {"_target_": "no_such_package.Model", "kind": "hf"},
            r"model._target_: 'no_such_package.Model' could",
        ),
        (
            {"_target_": "builtins.dict"},
            r"model._target_: 'builtins.dict' returned dict, expected a ModelSource",
        ),
        ({"_target_": "quark_lightning.models.fetch.MANIFEST"}, r"is not a class or function"),
    ],
)
def test_unknown_kind_or_target_is_a_config_error_with_the_fix(config, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_model_path(OmegaConf.create(config))
    assert "Fix: use model=tiny, model=smollm2 or model=hf, or set model._target_" in str(err.value)
    assert KIND_TARGETS["tiny"] in str(err.value)


def test_embedded_model_builds_recursively_and_keeps_the_reward_model_cache_key(tmp_path):
    """`policy_model: ${model}` in a matrix scorer is built by Hydra's recursive instantiate into a
    ModelSource; the reward model it names has the cache directory of the plain config."""
    from hydra.utils import instantiate

    from quark_lightning.reward_model.rm_cache import cache_key_yaml, reward_model_run_dir

    cfg = compose("model=smollm2", f"model.cache_dir={tmp_path}")
    built = instantiate(OmegaConf.create({"_target_": "builtins.dict", "policy_model": cfg.model}))
    assert isinstance(built["policy_model"], SmolLM2)
    _, from_config = reward_model_run_dir("rm_orm", str(tmp_path), [], "policy", cfg.model)
    rm_cfg, from_source = reward_model_run_dir("rm_orm", str(tmp_path), [], "policy", built["policy_model"])
    assert from_config == from_source and from_config.name.startswith("rm_orm-smollm2-")
    # the shipped optimizer / lr_scheduler nodes are not in the key (cached reward models are found again)
    rm = rm_cfg.reward_model
    old = OmegaConf.to_container(rm, resolve=False)
    del old["optimizer"], old["lr_scheduler"]
    assert cache_key_yaml(rm) == OmegaConf.to_yaml(OmegaConf.create(old))
    rm.optimizer._target_ = "torch.optim.SGD"  # a changed node is
    assert "torch.optim.SGD" in cache_key_yaml(rm)


# ------------------------------------------------------------------------------------------- optimizers
def lr_trace(sched, steps: int = 3) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        sched.optimizer.step()
        sched.step()
    return out


def old_configuration(groups, lr, weight_decay, warmup, betas=None):
    """What the three configure_optimizers built before (AdamW + the warmup lambda)."""
    kwargs = {"betas": tuple(betas)} if betas is not None else {}
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
    )
    return opt, sched


def same_groups(new: torch.optim.Optimizer, old: torch.optim.Optimizer) -> None:
    assert type(new) is type(old) is torch.optim.AdamW
    assert len(new.param_groups) == len(old.param_groups)
    for a, b in zip(new.param_groups, old.param_groups):
        assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}
        assert [p.data_ptr() for p in a["params"]] == [p.data_ptr() for p in b["params"]]


@pytest.fixture()
def spy(monkeypatch):
    """Records each use of the shared factory (infra/optimizers.py: adamw, linear_warmup)."""
    calls = []
    adamw, warmup = optimizers.adamw, optimizers.linear_warmup
    monkeypatch.setattr(optimizers, "adamw", lambda *a, **k: calls.append("adamw") or adamw(*a, **k))
    monkeypatch.setattr(
        optimizers, "linear_warmup", lambda *a, **k: calls.append("warmup") or warmup(*a, **k)
    )
    return calls


def modules(tiny_model_dir, lr, weight_decay, warmup, **extra):
    """name -> (module, the groups its old configure_optimizers built, betas it passed)."""
    from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
    from quark_lightning.matrix import AlignmentMatrix, Dimension
    from quark_lightning.models.loading import load_causal_lm
    from quark_lightning.reward_model.rm_training_module import RewardModelModule
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel
    from quark_lightning.scorers.format import FormatScorer
    from quark_lightning.stages.sft import SFTModule

    loaded = load_causal_lm(tiny_model_dir)
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer())])
    config = GRPOConfig(lr=lr, weight_decay=weight_decay, warmup_steps=warmup, betas=(0.8, 0.99), beta=0.0)
    grpo = GRPOModule(loaded.model, loaded.tokenizer, matrix, config)
    sft = SFTModule(load_causal_lm(tiny_model_dir).model, lr=lr, weight_decay=weight_decay, warmup_steps=warmup,
                    optimizer=extra.get("sft_optimizer"), lr_scheduler=extra.get("sft_scheduler"))  # fmt: skip
    rm_model = ScalarRewardModel.from_backbone(tiny_model_dir)
    rm = RewardModelModule(rm_model, lr=lr, weight_decay=weight_decay, warmup_steps=warmup, head_lr=lr * 3,
                           optimizer=extra.get("rm_optimizer"), lr_scheduler=extra.get("rm_scheduler"))  # fmt: skip
    rm_groups = [{"params": list(rm_model.backbone.parameters()), "lr": lr},
                 {"params": list(rm_model.head.parameters()), "lr": lr * 3}]  # fmt: skip
    return {
        "grpo": (grpo, list(grpo.policy.parameters()), (0.8, 0.99)),
        "sft": (sft, list(sft.policy.parameters()), None),
        "reward_model": (rm, rm_groups, None),
    }


def test_the_three_modules_build_the_old_optimizer_and_warmup_through_the_shared_factory(tiny_model_dir, spy):
    lr, wd, warmup = 0.1, 0.01, 2
    for name, (module, groups, betas) in modules(tiny_model_dir, lr, wd, warmup).items():
        spy.clear()
        built = module.configure_optimizers()
        assert spy == ["adamw", "warmup"], name
        assert built["lr_scheduler"]["interval"] == "step"
        sched = built["lr_scheduler"]["scheduler"]
        old_opt, old_sched = old_configuration(groups, lr, wd, warmup, betas)
        same_groups(sched.optimizer, old_opt)
        trace = lr_trace(sched)
        assert trace == lr_trace(old_sched), name  # bit-identical: the same float at every step
        # hand-computed: warmup w gives lr * (s + 1) / (w + 1) at step s
        expected = [lr * 1 / 3, lr * 2 / 3, lr]
        assert [t[0] for t in trace] == pytest.approx(expected, rel=1e-12), name
        if name == "reward_model":  # the head's group keeps its own lr, warmed up alike
            assert [t[1] for t in trace] == pytest.approx([3 * e for e in expected], rel=1e-12)


def test_the_configured_nodes_equal_the_flat_keys(tiny_model_dir, spy):
    """conf's warmstart / reward_model / algorithm `optimizer` and `lr_scheduler` nodes, built, give the
    optimizer and schedule the flat keys gave (and the modules use them, not the defaults)."""
    from quark_lightning.infra.optimizers import optimizer_factory, scheduler_factory
    from quark_lightning.infra.schedules import linear_warmup
    from quark_lightning.reward_model.rm_settings import compose_experiment

    train = compose(
        "warmstart=sft", "warmstart.lr=0.1", "warmstart.weight_decay=0.01", "warmstart.warmup_steps=2"
    )
    ws = train.warmstart
    rm = compose_experiment("rm_orm", ["reward_model.lr=0.1", "reward_model.weight_decay=0.01",
                                       "reward_model.warmup_steps=2"]).reward_model  # fmt: skip
    extra = {
        "sft_optimizer": optimizer_factory(ws.optimizer, "warmstart.optimizer"),
        "sft_scheduler": scheduler_factory(ws.lr_scheduler, "warmstart.lr_scheduler"),
        "rm_optimizer": optimizer_factory(rm.optimizer, "reward_model.optimizer"),
        "rm_scheduler": scheduler_factory(rm.lr_scheduler, "reward_model.lr_scheduler"),
    }
    assert all(extra[k].func is torch.optim.AdamW for k in ("sft_optimizer", "rm_optimizer"))
    assert all(extra[k].func is linear_warmup for k in ("sft_scheduler", "rm_scheduler"))
    built = modules(tiny_model_dir, 0.1, 0.01, 2, **extra)
    for name in ("sft", "reward_model"):
        module, groups, betas = built[name]
        spy.clear()
        sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        assert spy == [], name  # the nodes were used, not the defaults from the flat keys
        old_opt, old_sched = old_configuration(groups, 0.1, 0.01, 2, betas)
        same_groups(sched.optimizer, old_opt)
        assert lr_trace(sched) == lr_trace(old_sched), name
    algo = compose("algorithm.lr=0.1", "algorithm.weight_decay=0.01", "algorithm.betas=[0.8,0.99]").algorithm
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = optimizer_factory(algo.optimizer, "algorithm.optimizer")(params)
    same_groups(opt, torch.optim.AdamW(params, lr=0.1, weight_decay=0.01, betas=(0.8, 0.99)))
    assert type(opt.param_groups[0]["betas"]) is tuple


def test_bad_optimizer_or_schedule_nodes_are_config_errors():
    from quark_lightning.infra.optimizers import optimizer_factory, scheduler_factory

    node = OmegaConf.create(
        {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.1, "weight_decai": 0.0}
    )
    with pytest.raises(ConfigError, match="warmstart.optimizer: could not build the optimizer: TypeError"):
        optimizer_factory(node, "warmstart.optimizer")
    with pytest.raises(ConfigError, match=r"reward_model.optimizer: needs `_partial_: true`"):
        optimizer_factory(OmegaConf.create({"_target_": "torch.optim.AdamW"}), "reward_model.optimizer")
    with pytest.raises(ConfigError, match="algorithm.optimizer: could not be built"):
        optimizer_factory(
            OmegaConf.create({"_target_": "torch.optim.Nope", "_partial_": True}), "algorithm.optimizer"
        )
    bad = OmegaConf.create(
        {"_target_": "quark_lightning.infra.schedules.linear_warmup", "_partial_": True, "w": 1}
    )
    with pytest.raises(ConfigError, match="warmstart.lr_scheduler: could not build the schedule"):
        scheduler_factory(bad, "warmstart.lr_scheduler")
    assert optimizer_factory(None, "x") is None and scheduler_factory(None, "x") is None
