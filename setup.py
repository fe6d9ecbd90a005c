"""Ships the top-level `conf/` and `experiments/` inside the package as `covlight/conf` and `covlight/experiments`.

They stay at the top of the checkout (where users and Hydra's documentation expect them; an editable install reads
them there), and a wheel or a regular install carries copies beside the code, where `covlight.config` finds them.
Everything else about the build is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_FOLDERS = ("conf", "experiments")


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        for name in SHIPPED_FOLDERS:
            if Path(name).is_dir():
                self.copy_tree(name, str(Path(self.build_lib) / "covlight" / name))


setup(cmdclass={"build_py": BuildWithConfigs})
