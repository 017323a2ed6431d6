"""Give MLX an optimised BLAS on Linux; import this module before ``mlx`` (the mlx_* modules do).

The ``mlx[cpu]`` wheel for Linux links the netlib *reference* BLAS. Measured here: a float32
(1536 x 576) @ (576 x 49152) matmul took 34.6 s in MLX against 0.7-3.9 s in torch, and the
bundled model's perplexity probe 330 s against 12 s. libmlx looks ``cblas_sgemm`` and its LAPACK
routines up in the global symbol scope first, so loading an optimised BLAS there (RTLD_GLOBAL)
before MLX is imported makes MLX use it: the same matmul then took 2.9-3.8 s.
(Debian/Ubuntu: ``apt-get install libopenblas0-pthread``; ``scripts/bootstrap.sh`` does it as root.)

OpenBLAS 0.3.21 picks its kernels from the CPU model, and on this VM's generic "Intel Xeon
Processor" it fell back to SSE3 ("Prescott"): a 1536x576x1536 matmul took 0.085 s against 0.027 s
with the AVX-512 kernels. So unless ``OPENBLAS_CORETYPE`` is set, it is chosen from the CPU flags.

torch is imported first on purpose: a BLAS made global before libtorch loads would capture
torch's own ``sgemm_`` calls too (checked with LD_DEBUG=bindings) and change its numerics.
macOS needs none of this: MLX uses Accelerate there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

import torch  # noqa: F401  (before the BLAS becomes global: see the module doc)

log = logging.getLogger(__name__)
CANDIDATES = ("openblas", "blis", "mkl_rt")


def core_type() -> str | None:
    """OpenBLAS kernel family for this CPU's instruction set (None: let OpenBLAS decide)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


def preload() -> ctypes.CDLL | None:
    """Load the first optimised BLAS found (``SLEEPWAKE_MLX_BLAS`` = a library path or 'none')."""
    if not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return None
    choice = os.environ.get("SLEEPWAKE_MLX_BLAS", "")
    if choice == "none":
        return None
    hint = core_type()
    if hint and "OPENBLAS_CORETYPE" not in os.environ:
        os.environ["OPENBLAS_CORETYPE"] = hint  # read once, when OpenBLAS loads
    for path in [choice] if choice else [ctypes.util.find_library(name) for name in CANDIDATES]:
        if not path:
            continue
        try:
            return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    log.warning("MLX will use the reference BLAS (tens of times slower on CPU): install OpenBLAS "
                "(apt-get install libopenblas0-pthread) or set SLEEPWAKE_MLX_BLAS to a BLAS library")
    return None


LIBRARY = preload()


def fast() -> bool:
    """True where MLX runs on an optimised BLAS (always on macOS)."""
    return LIBRARY is not None or sys.platform == "darwin"


def set_threads(count: int) -> None:
    """Thread count of the preloaded OpenBLAS (tests use 1 on a shared 2-core machine)."""
    setter = getattr(LIBRARY, "openblas_set_num_threads", None)
    if setter is not None:
        setter(int(count))
