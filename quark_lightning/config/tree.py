"""Where the Hydra config tree is. In a source checkout or an editable install: the repository's top-level
`conf/` (the one config tree). In a wheel or `pip install .`: the copy the build puts inside the package as
`quark_lightning/conf/` (setup.py, `BuildPyWithConf`)."""

from pathlib import Path

PACKAGE_CONF = Path(__file__).resolve().parents[1] / "conf"  # only in a built wheel
REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def conf_dir() -> Path:
    """The source checkout's `conf/` if there is one, else the copy the wheel ships in the package."""
    if (REPO_CONF / "train.yaml").is_file():
        return REPO_CONF
    return PACKAGE_CONF
