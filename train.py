"""Entry point: `python train.py +experiment=demo` (see README.md). All wiring lives in quark_lightning.run."""

import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from quark_lightning.errors import QuarkError
    from quark_lightning.run import run

    try:
        run(cfg)
    except QuarkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
