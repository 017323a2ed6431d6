"""sleepwake: persistent memory for a local language model, kept in its weights, maintained by sleep."""

import os

# OpenMP threads that busy-wait turn a CPU shared with any other busy process into a 7x slowdown
# (measured on 2 cores: one decoder forward of 4x64 tokens took 15.3 s with spinning threads and
# 2.2 s with passive ones). It must be set before torch loads its OpenMP runtime; users can
# still override it from the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("sleepwake")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
