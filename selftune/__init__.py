"""selftune: distributed hyperparameter search for semi-supervised segmentation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selftune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
