"""Experiment loggers: the `logger` group -> Lightning loggers, and text / tables routed to each.

`logger` is a mapping of named logger configs, built from Hydra's list selection of the group
(`logger=[tensorboard,wandb]`); each option file is keyed by its own name, so several merge side by side.
One training process runs several stages (warm start, GRPO, a reward model, pipeline stages), each with its
own Lightning Trainer; every stage gets its own logger run, named by the stage:

    tensorboard, csv   version=<stage>   -> <run_dir>/tensorboard/<stage>/, <run_dir>/csv/<stage>/metrics.csv
    wandb              name=<stage>, job_type=<stage> (the W&B run id stays W&B's own: `version` is the
                       run id there, and a fixed id would resume the same W&B run in every training run)
    mlflow             run_name=<stage> (MLFlowLogger has no `version`: passing one is a TypeError)

A key the user set in the config wins over the stage default. Other logger classes get `version=<stage>`
when their constructor takes it.

Text and tables (sample completions, the RFN calibration, the closed loop's diagnosis) go to the loggers
that support them: TensorBoard text, W&B tables, MLflow text/table artifacts. CSVLogger has no text; it
gets the scalars only.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from quark_lightning.infra.errors import ConfigError

# logger class name -> the constructor argument that names a stage's run
STAGE_ARGUMENT = {
    "TensorBoardLogger": "version",
    "CSVLogger": "version",
    "WandbLogger": "name",
    "MLFlowLogger": "run_name",
}
INSTALL_HINT = 'pip install -e ".[loggers]"'


def logger_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The named logger configs of `cfg.logger` (None, `~logger` or an empty mapping -> none).

    An entry set to null (`logger.wandb=null`) is dropped. A mapping that is itself one logger
    (`_target_` at the top, the layout before loggers could be combined) counts as one named `logger`.
    """
    group = cfg.get("logger")
    if not group:
        return {}
    if not isinstance(group, Mapping):
        raise ConfigError(
            f"logger: got {group!r}, expected a mapping of named loggers. "
            "Fix: pass logger=tensorboard or logger=[tensorboard,wandb]"
        )
    if "_target_" in group:
        return {"logger": group}
    out = {}
    for name, sub in group.items():
        if sub is None:
            continue
        if not isinstance(sub, Mapping) or "_target_" not in sub:
            raise ConfigError(
                f"logger.{name}: expected a logger config with a _target_ (a Lightning logger class). "
                f"Fix: select options of conf/logger/, e.g. logger=[tensorboard,csv], or drop it with logger.{name}=null"
            )
        out[str(name)] = sub
    return out


def stage_kwargs(logger_cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The constructor arguments that name this stage's run, unless the config sets them itself."""
    cls = get_class(logger_cfg._target_)
    names = [c.__name__ for c in cls.__mro__]
    argument = next((STAGE_ARGUMENT[n] for n in names if n in STAGE_ARGUMENT), None)
    if argument is None and "version" in inspect.signature(cls.__init__).parameters:
        argument = "version"
    kwargs: dict[str, Any] = {}
    if argument and logger_cfg.get(argument) in (None, ""):
        kwargs[argument] = stage
    if "WandbLogger" in names and logger_cfg.get("job_type") is None:
        kwargs["job_type"] = stage
    return kwargs


def build_loggers(cfg: DictConfig, stage: str) -> list:
    """One Lightning logger per entry of `cfg.logger`, each naming its run after `stage`. [] = no logging."""
    loggers = []
    for name, logger_cfg in logger_configs(cfg).items():
        try:
            loggers.append(instantiate(logger_cfg, **stage_kwargs(logger_cfg, stage)))
        except Exception as err:  # Hydra wraps the logger's own error in an InstantiationException
            cause = err.__cause__ if isinstance(err, InstantiationException) else err
            if not isinstance(cause, ModuleNotFoundError):
                raise
            raise ConfigError(
                f"logger.{name}: the package is missing ({cause}). "
                f"Fix: {INSTALL_HINT} (wandb, mlflow), or drop it with logger.{name}=null"
            ) from err
    return loggers


def close_loggers(loggers: Sequence) -> None:
    """End each logger's run after its stage, so the next stage starts a new one.

    Lightning finalizes MLflow and TensorBoard itself; a W&B run stays open until `finish()`, and a second
    WandbLogger in the same process would otherwise attach to it and mix the stages' steps.
    """
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def kind(logger) -> str:
    """tensorboard | wandb | mlflow | csv | other, from the logger's class (subclasses included)."""
    names = {c.__name__ for c in type(logger).__mro__}
    for cls_name, label in (
        ("TensorBoardLogger", "tensorboard"),
        ("WandbLogger", "wandb"),
        ("MLFlowLogger", "mlflow"),
        ("CSVLogger", "csv"),
    ):
        if cls_name in names:
            return label
    return "other"


def artifact_name(key: str, step: int, suffix: str) -> str:
    return f"{key}/step_{int(step):06d}.{suffix}"


def log_text(
    trainer, key: str, text: str, step: int, table: tuple[list[str], list[list]] | None = None
) -> None:
    """Markdown `text` (and, optionally, the same content as a table `(columns, rows)`) to every logger
    of `trainer` that takes text: TensorBoard text; a W&B table (`table`, else one `text` column); MLflow
    a `.md` artifact (and the table as a `.json` artifact). Rank 0 only."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        label = kind(logger)
        if label == "tensorboard":
            logger.experiment.add_text(key, text, global_step=step)
        elif label == "wandb":
            columns, rows = table if table else (["text"], [[text]])
            logger.log_table(key, columns=columns, data=rows, step=step)
        elif label == "mlflow":
            logger.experiment.log_text(logger.run_id, text, artifact_name(key, step, "md"))
            if table:
                columns, rows = table
                data = {c: [str(r[i]) for r in rows] for i, c in enumerate(columns)}
                logger.experiment.log_table(logger.run_id, data, artifact_name(key, step, "json"))


def log_scalars(trainer, scalars: dict[str, float], step: int) -> None:
    """Scalars logged outside `LightningModule.log` (e.g. the held-out evaluation) to every logger."""
    if not trainer.is_global_zero or not scalars:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(scalars), step=step)


def logger_locations(loggers: Sequence) -> dict[str, str]:
    """Where each logger wrote: tensorboard_dir, csv_dir, wandb_dir, mlflow_uri (for the end-of-run print)."""
    out: dict[str, str] = {}
    for logger in loggers:
        label = kind(logger)
        if label in ("tensorboard", "csv"):
            out.setdefault(f"{label}_dir", logger.log_dir)
        elif label == "wandb":  # the run's own folder (<save_dir>/wandb/[offline-]run-<time>-<id>)
            out.setdefault("wandb_dir", os.path.dirname(logger.experiment.dir))
        elif label == "mlflow":
            out.setdefault("mlflow_uri", f"{logger._tracking_uri} (run {logger.run_id})")
    return out
