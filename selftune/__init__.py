"""selftune: distributed hyperparameter search for semi-supervised segmentation."""

import os
from importlib.metadata import PackageNotFoundError, version

# OpenMP's threads sleep at a barrier instead of spinning (read when torch loads, so set before it: selftune is
# imported first by its CLI, its Ray workers inherit the driver's environment). Beside other work spinning threads
# fight it for the cores and every step waits for the slowest: 2 threads beside one busy process took 41.9 s
# instead of 22.1 s alone, 27.8 s with PASSIVE (issue 32); bench/bench_threads.py: 26.0 s against 21.3 s, and
# 1-thread runs keep their pace either way (docs/benchmarks.md, "Beside other work"). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("selftune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
