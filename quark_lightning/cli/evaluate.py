"""Evaluation: `python evaluate.py models='{base: /m/base, rl: outputs/.../policy}'` in a checkout,
`python -m quark_lightning.cli.evaluate ...` for an installed package (conf/evaluate.yaml).

All wiring lives in quark_lightning.evaluation.evaluate_models.
"""

import os

import hydra
from omegaconf import DictConfig

from quark_lightning.cli.entry import conf_dir, exit_on_bad_overrides, run_or_exit

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from quark_lightning.evaluation.evaluate_models import run_evaluation

    run_or_exit(run_evaluation, cfg)


def cli() -> None:
    exit_on_bad_overrides("evaluate")  # unknown experiment / option: exit 2 with the valid names
    main()


if __name__ == "__main__":
    cli()
