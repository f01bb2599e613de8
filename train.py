"""Entry point: `python train.py +experiment=demo` (see README.md). All wiring lives in quark_lightning.cli.run."""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from quark_lightning.cli.run import run
    from quark_lightning.infra.errors import run_or_exit

    run_or_exit(run, cfg)


if __name__ == "__main__":
    from quark_lightning.cli.entry import exit_on_bad_overrides

    exit_on_bad_overrides("train")  # unknown experiment / option: exit 2 with the valid names
    main()
