"""covlight: annotation-efficient segmentation of COVID-19 chest CT (Lightning + Hydra)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("covlight")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # imported from a checkout that was never installed (pip install -e .)
    __version__ = "unknown (not installed)"
