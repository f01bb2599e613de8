"""Every `_target_` node of every YAML file under conf/ imports, takes the keys it is given, and builds.

Issue 14 ("must show"). Each file is loaded on its own with OmegaConf (not composed), and every node with a
`_target_` is found at any depth (callbacks, optimization.callbacks, rollout, model sources, matrix scorers,
loggers, optimizers / lr schedulers with `_partial_`, trainer strategies, Hydra's sweep callback). Then:

1. the target imports (`hydra.utils.get_object`);
2. every key of the node is an argument the target accepts (`config_groups.accepted_arguments`). A target
   that takes **kwargs accepts anything by that rule, so where a node has keys the target does not name,
   `FORWARDED` says where those kwargs go and the keys are checked against that instead (a target taking
   **kwargs that is not in the table fails the test rather than passing unchecked);
3. the node is BUILT: `conf/train.yaml` is composed with the group option that holds it (`callbacks=default`,
   `optimization=rfn_tadw`, `+reward_model=orm`, ...; `run_dir` and the caches in a temporary directory,
   HF_HUB_OFFLINE=1), the node is taken from the composed config (so its interpolations resolve as in a run)
   and instantiated; a `_partial_` node is then called with what it gets in a run (an optimizer factory with
   a parameter list, a scheduler factory with an optimizer).

conf/judge/*.yaml have no `_target_` (a `kind:` key, built by `judges.build_judge`); the judge is built here
through the node that takes it, matrix=judged's compliance scorer (an OpenAI-compatible judge, no request).

Nodes that cannot be built on a CPU machine without network, or only at a cost a unit test should not pay,
are in SKIP_BUILD with the reason; steps 1 and 2 still run for them, and the test asserts that every entry
names a node that exists (so the table cannot rot).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from quark_lightning.config.groups import accepted_arguments
from quark_lightning.config.typed import HYDRA_KEYS
from quark_lightning.infra.strategies import build_strategy
from quark_lightning.models.loading import apply_lora, load_causal_lm
from quark_lightning.models.tiny import ensure_tiny_model
from tests.conftest import REPO

CONF = Path(REPO) / "conf"
# groups `conf/train.yaml` selects in its defaults (`group=option`); any other group is added (`+group=option`)
ROOT_GROUPS = (
    "model", "data", "matrix", "optimization", "algorithm", "rollout", "warmstart", "trainer", "logger",
    "callbacks", "judge",
)  # fmt: skip


def target_nodes(node, path: str = ""):
    """(dotted path, node) of every DictConfig with a `_target_` under `node`, at any depth."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            yield from target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from target_nodes(node._get_node(i), f"{path}[{i}]")


def all_nodes() -> list[tuple[str, str, DictConfig]]:
    """(file relative to conf/, dotted path in that file, node) for every `_target_` node under conf/."""
    found = []
    for file in sorted(CONF.rglob("*.yaml")):
        rel = file.relative_to(CONF).as_posix()
        found += [(rel, path, node) for path, node in target_nodes(OmegaConf.load(file))]
    return found


NODES = all_nodes()
NODE_IDS = [f"{rel}:{path or '<root>'}" for rel, path, _ in NODES]

# Targets taking **kwargs, for the keys they do not name themselves: where those keys end up.
MODEL_SOURCE_KEYS = (
    # a model source keeps every key as `source.config` (models/weight_sources.py); its readers:
    (accepted_arguments(load_causal_lm) - {"name_or_path"})  # dtype, trust_remote_code, revision, attn_impl.
    | {"kind", "name_or_path", "gguf_file", "cache_dir"}  # sources.py, config validation, the RM cache key
    | {"tiny", "adapter_path", "lora"}  # TinyModel.path, cli/run.py (merge_sft_adapter, apply_lora)
)


def _lightning(name: str):
    return lambda: get_object(f"lightning.pytorch.strategies.{name}")


def _wandb_init():
    import wandb

    return wandb.init


FORWARDED = {
    "lightning.pytorch.loggers.WandbLogger": _wandb_init,  # **kwargs -> wandb.init (group, tags, ...)
    "lightning.pytorch.loggers.TensorBoardLogger": lambda: get_object(
        "torch.utils.tensorboard.SummaryWriter"
    ),
    "quark_lightning.infra.strategies.deepspeed_strategy": _lightning("DeepSpeedStrategy"),
    "quark_lightning.infra.strategies.fsdp_strategy": _lightning("FSDPStrategy"),
    "quark_lightning.infra.strategies.FSDP2Strategy": _lightning("ModelParallelStrategy"),
    "quark_lightning.models.weight_sources.TinyModel": lambda: MODEL_SOURCE_KEYS,
    "quark_lightning.models.weight_sources.HFModel": lambda: MODEL_SOURCE_KEYS,
    "quark_lightning.models.weight_sources.SmolLM2": lambda: MODEL_SOURCE_KEYS,
}

# (file, dotted path) -> why the node is only imported and key-checked here, not built
SKIP_BUILD = {
    ("rollout/vllm.yaml", ""): "VLLMEngine needs the optional vllm package and a CUDA GPU",
    ("trainer/deepspeed.yaml", "strategy"): "deepspeed_strategy needs the deepspeed package and CUDA GPUs "
    "(without them it raises the ConfigError with the fix, by design)",
    ("matrix/medical.yaml", "dimensions.correctness_macro.scorer"): "ORMScorer with train_experiment=rm_orm "
    "TRAINS a reward model on first use (tests/reward_model/test_rm_backbone.py and the experiment runs cover it)",
    ("matrix/medical.yaml", "dimensions.online_rm.scorer"): "ORMScorer with train_experiment=rm_online "
    "TRAINS a reward model on first use (tests/reward_model/test_rm_backbone.py and the experiment runs cover it)",
}

# extra overrides a group option needs before its nodes can be built offline (values a user must supply)
BUILD_OVERRIDES = {
    "model/hf.yaml": ["model.name_or_path={tmp}/local-hf-model"],  # ??? in the file: a local dir, no hub
    # the compliance scorer refuses to exist without a judge model; an OpenAI-compatible judge is built
    # without contacting its server, so an unused local port is enough
    "matrix/judged.yaml": [
        "judge=openai",
        "judge.base_url=http://127.0.0.1:9/v1",
        "judge.model=unused",
        "judge.cache_dir=null",
    ],
}


def group_overrides(rel: str) -> list[str]:
    """The override that selects the option `rel` (conf-relative file) in `conf/train.yaml`."""
    if rel == "train.yaml":
        return []
    group, option = rel.rsplit("/", 1)
    option = option.removesuffix(".yaml")
    return [f"{group}={option}" if group in ROOT_GROUPS else f"+{group}={option}"]


def composed_path(rel: str, path: str) -> str:
    """Where a node of file `rel` sits in the composed config (each group's package is its own name; a
    file that declares `# @package _global_`, as every experiment does, sits at the root)."""
    if rel == "train.yaml" or "@package _global_" in (CONF / rel).read_text().splitlines()[0]:
        return path
    group = rel.rsplit("/", 1)[0].replace("/", ".")
    return f"{group}.{path}" if path else group


def dummy_params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2, 2))]


def named_arguments(target) -> set[str]:
    """The parameters `target` names (its **kwargs / *args excluded): what a forwarded key may be."""
    fn = target.__init__ if inspect.isclass(target) else target
    kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return {n for n, p in inspect.signature(fn).parameters.items() if n != "self" and p.kind not in kinds}


def check_keys(rel: str, path: str, node: DictConfig) -> list[str]:
    target = get_object(str(node._target_))
    keys = [k for k in node.keys() if k not in HYDRA_KEYS]
    allowed = accepted_arguments(target)
    if allowed is None:  # **kwargs: the names it declares, plus where the rest go
        declared = named_arguments(target)
        extra = [k for k in keys if k not in declared]
        if not extra:
            return []
        if str(node._target_) not in FORWARDED:
            return [
                f"{rel}:{path}: {node._target_} takes **kwargs; where do {extra} go? (add it to FORWARDED)"
            ]
        sink = FORWARDED[str(node._target_)]()
        allowed = declared | (sink if isinstance(sink, set) else named_arguments(sink))
    return [f"{rel}:{path}.{k}: not an argument of {node._target_}" for k in keys if k not in allowed]


def test_nodes_were_found_in_every_kind_of_group():
    groups = {rel.split("/")[0] for rel, _, _ in NODES}
    for expected in ("callbacks", "optimization", "rollout", "model", "matrix", "logger", "algorithm",
                     "warmstart", "reward_model", "trainer", "train.yaml"):  # fmt: skip
        assert expected in groups, f"no _target_ node found in conf/{expected}"
    assert sum(1 for _, _, n in NODES if n.get("_partial_")) >= 4  # optimizers and lr schedulers


def test_skip_table_names_only_nodes_that_exist():
    present = {(rel, path) for rel, path, _ in NODES}
    assert set(SKIP_BUILD) <= present, f"SKIP_BUILD names missing nodes: {set(SKIP_BUILD) - present}"
    assert set(BUILD_OVERRIDES) <= {rel for rel, _ in present}


@pytest.mark.parametrize("rel,path,node", NODES, ids=NODE_IDS)
def test_target_imports_and_takes_every_key(rel, path, node):
    get_object(str(node._target_))  # raises when it does not import
    assert check_keys(rel, path, node) == []
    # nested argument groups that go to a known function
    if rel.startswith("model/"):
        sizes = set(node.get("tiny") or {})
        assert sizes <= accepted_arguments(ensure_tiny_model), sizes - accepted_arguments(ensure_tiny_model)
        lora = set(node.lora) - {"enabled"}
        assert lora <= accepted_arguments(apply_lora), lora - accepted_arguments(apply_lora)


def test_the_key_check_has_teeth_behind_kwargs_too():
    def problems(**node):
        return check_keys("x.yaml", "node", OmegaConf.create(node))

    assert problems(_target_="torch.optim.AdamW", _partial_=True, lr=1.0, wieght_decay=0.0) == [
        "x.yaml:node.wieght_decay: not an argument of torch.optim.AdamW"
    ]
    # **kwargs forwarded to Lightning's FSDPStrategy / kept as a model source's config
    assert problems(_target_="quark_lightning.infra.strategies.fsdp_strategy", sharding_strategi="FULL_SHARD")
    assert problems(_target_="quark_lightning.models.weight_sources.TinyModel", dtyp="float32")
    assert not problems(_target_="quark_lightning.models.weight_sources.TinyModel", dtype="float32")
    # a **kwargs target nobody said where its keys go: refused, not waved through
    assert "add it to FORWARDED" in problems(_target_="builtins.dict", anything=1)[0]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("conf_targets")


def composed(rel: str, tmp: Path) -> DictConfig:
    overrides = [*group_overrides(rel), *(o.format(tmp=tmp) for o in BUILD_OVERRIDES.get(rel, []))]
    overrides += [f"run_dir={tmp / 'run'}", f"model.cache_dir={tmp / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("train", overrides, return_hydra_config=rel == "train.yaml")


@pytest.mark.parametrize("rel,path,node", NODES, ids=NODE_IDS)
def test_node_builds_from_the_composed_config(rel, path, node, build_dir, monkeypatch):
    if (rel, path) in SKIP_BUILD:
        pytest.skip(SKIP_BUILD[(rel, path)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("QUARK_CACHE", str(build_dir / "cache"))
    tmp = build_dir / rel.replace("/", "_").removesuffix(".yaml")
    cfg = composed(rel, tmp)
    where = composed_path(rel, path)
    built_node = OmegaConf.select(cfg, where)
    assert isinstance(built_node, DictConfig) and built_node._target_ == node._target_, where
    if rel == "train.yaml":  # the hydra node holds ${hydra:...} resolvers only Hydra's app sets up
        built_node = OmegaConf.create(OmegaConf.to_container(built_node))
    if rel.startswith("trainer/"):  # run.trainer_kwargs builds `strategy:` this way, not by instantiate
        obj = build_strategy(OmegaConf.to_container(built_node, resolve=True))
    else:
        obj = instantiate(built_node)
    if built_node.get("_partial_"):
        assert isinstance(obj, functools.partial)
        if path.endswith("optimizer"):
            obj = obj(dummy_params())
            assert isinstance(obj, torch.optim.Optimizer)
        elif path.endswith("lr_scheduler"):
            obj = obj(torch.optim.SGD(dummy_params(), lr=1.0))
            assert isinstance(obj, torch.optim.lr_scheduler.LRScheduler)
        else:
            pytest.fail(f"{rel}:{path}: a _partial_ node this test does not know how to call")
    target = get_object(str(node._target_))
    if inspect.isclass(target):
        assert isinstance(obj, target)
    else:  # a factory function (fsdp_strategy, a partial's call): something was made
        assert obj is not None
    if rel.startswith("logger/"):  # built, not started: no run, no file opened until first logged
        assert getattr(obj, "_experiment", None) is None


def test_deepspeed_strategy_refuses_with_the_fix_where_it_cannot_run(build_dir):
    """The skipped deepspeed node, built where it cannot run: a ConfigError with the fix, not a crash."""
    import importlib.util

    from quark_lightning.infra.errors import ConfigError

    if importlib.util.find_spec("deepspeed") is not None and torch.cuda.is_available():
        pytest.skip("deepspeed and CUDA are here: the strategy would be built")
    cfg = composed("trainer/deepspeed.yaml", build_dir / "deepspeed")
    with pytest.raises(ConfigError, match="Fix: "):
        build_strategy(OmegaConf.to_container(cfg.trainer.strategy, resolve=True))
