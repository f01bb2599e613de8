"""`python -m quark_lightning.cli.train +experiment=demo`: the repository's train.py for an installed package.

Runs from any directory: the config tree is the one shipped in the package (`quark_lightning/conf/`)
or, in a source checkout, the repository's `conf/` (see quark_lightning.cli.entry). Outputs go under the
current directory, as with train.py.
"""

import os

import hydra
from omegaconf import DictConfig

from quark_lightning.cli.entry import conf_dir, exit_on_bad_overrides

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    from quark_lightning.cli.run import run
    from quark_lightning.infra.errors import run_or_exit

    run_or_exit(run, cfg)


if __name__ == "__main__":
    exit_on_bad_overrides("train")
    main()
