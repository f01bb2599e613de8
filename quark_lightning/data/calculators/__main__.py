"""`python -m quark_lightning.data.calculators --n 50 --seed 0 --output FILE.jsonl`."""

from quark_lightning.data.calculators.command import main

if __name__ == "__main__":
    raise SystemExit(main())
