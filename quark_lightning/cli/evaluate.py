"""`python -m quark_lightning.cli.evaluate models='{...}'`: the repository's evaluate.py for an installed package.

Runs from any directory, with the config tree found as for quark_lightning.cli.train (quark_lightning.cli.entry).
"""

import os

import hydra
from omegaconf import DictConfig

from quark_lightning.cli.entry import conf_dir, exit_on_bad_overrides

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from quark_lightning.evaluation.evaluate_models import run_evaluation
    from quark_lightning.infra.errors import run_or_exit

    run_or_exit(run_evaluation, cfg)


if __name__ == "__main__":
    exit_on_bad_overrides("evaluate")
    main()
