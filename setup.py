"""Only what pyproject.toml cannot say: the wheel carries the repository's `conf/` inside the package.

The Hydra config tree has one home, the top-level `conf/` (the design card's layout). A source checkout and
an editable install read it there; a built wheel gets a copy as `quark_lightning/conf/`, which
`quark_lightning.cli.entry.conf_dir` finds when no checkout is around.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "quark_lightning" / "conf"
            shutil.copytree(Path(__file__).parent / "conf", target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConf})
