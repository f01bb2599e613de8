"""Build an AlignmentMatrix from its config (`conf/matrix/*.yaml`).

`matrix.on_failure` is the default failure policy of every dimension; `matrix.dimensions.NAME.on_failure`
overrides it key by key (validated in matrix/dimension.py when the matrix is built).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from quark_lightning.matrix.alignment_matrix import AlignmentMatrix
from quark_lightning.matrix.dimension import Dimension, MatrixConfigError, merged_policy
from quark_lightning.reward_model.rm_cache import resolved_scorer_config


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def scorer_config(node: DictConfig) -> DictConfig:
    """The scorer's config, where it names a reward model to train (`train_experiment`) with that model
    trained once and cached and its `path` set (reward_model/rm_cache.py): the scorer only loads."""
    if "train_experiment" not in node:
        return node

    return OmegaConf.create(resolved_scorer_config(_plain(node)))


def build_matrix(matrix_cfg: DictConfig) -> AlignmentMatrix:
    default_on_failure = _plain(matrix_cfg.get("on_failure"))
    dimensions = []
    for name, dim in (matrix_cfg.get("dimensions") or {}).items():
        if dim is None:
            continue
        # validated before the scorer is built (building one may first train a reward model)
        on_failure = merged_policy(
            default_on_failure, _plain(dim.get("on_failure")), f"matrix.dimensions.{name}"
        )
        try:
            scorer = instantiate(scorer_config(dim.scorer))
        except Exception as err:  # noqa: BLE001 - any failure here is a config problem to report
            cause = err.__cause__ or err
            target = OmegaConf.select(dim, "scorer._target_")
            raise MatrixConfigError(
                f"matrix dimension '{name}': scorer {target!r} could not be built: {type(cause).__name__}: {cause}. "
                f"Fix the arguments under matrix.dimensions.{name}.scorer."
            ) from err
        dimensions.append(
            Dimension(
                name=str(name),
                category=dim.get("category"),
                scorer=scorer,
                weight=float(dim.get("weight", 1.0)),
                risk=float(dim.get("risk", 1.0) or 1.0),
                target=dim.get("target"),
                gate=OmegaConf.to_container(dim.gate, resolve=True) if dim.get("gate") else None,
                on_failure=on_failure,
            )
        )
    return AlignmentMatrix(dimensions)
