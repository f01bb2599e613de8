"""`python evaluate.py models='{...}'` (conf/evaluate.yaml): the repository's entry, quark_lightning/cli/evaluate.py."""

from quark_lightning.cli.evaluate import cli

if __name__ == "__main__":
    cli()
