"""`python train.py +experiment=demo` (README.md): the repository's entry point, quark_lightning/cli/train.py."""

from quark_lightning.cli.train import cli

if __name__ == "__main__":
    cli()
