"""Training: `python train.py +experiment=demo` in a checkout, `python -m quark_lightning.cli.train ...` for an
installed package (same command line; outputs go under the current directory).

The config tree is the repository's `conf/`, or the copy a wheel ships (quark_lightning.cli.entry.conf_dir).
All wiring lives in quark_lightning.cli.run.
"""

import os

import hydra
from omegaconf import DictConfig

from quark_lightning.cli.entry import conf_dir, exit_on_bad_overrides, run_or_exit

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    from quark_lightning.cli.run import run

    run_or_exit(run, cfg)


def cli() -> None:
    exit_on_bad_overrides("train")  # unknown experiment / option: exit 2 with the valid names
    main()


if __name__ == "__main__":
    cli()
