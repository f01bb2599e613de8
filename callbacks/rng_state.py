"""The random-stream callback lives in the library (quark_lightning/rng_state.py): every run needs it, so
run.py and the pipeline add it themselves; this name is kept for configs and code that import it here."""

from quark_lightning.rng_state import RNGStateCallback

__all__ = ["RNGStateCallback"]
