"""Entry point: `python evaluate.py models='{base: /m/base, rl: outputs/.../policy}'` (see conf/evaluate.yaml).

All wiring lives in quark_lightning.evaluation.evaluate_models.
"""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from quark_lightning.evaluation.evaluate_models import run_evaluation
    from quark_lightning.infra.errors import run_or_exit

    run_or_exit(run_evaluation, cfg)


if __name__ == "__main__":
    from quark_lightning.cli.entry import exit_on_bad_overrides

    exit_on_bad_overrides("evaluate")  # unknown experiment / option: exit 2 with the valid names
    main()
