"""Peak resident memory of this process, per stretch of work (Linux; None elsewhere).

Linux keeps the high-water mark ``VmHWM`` in /proc/self/status; writing 5 to
/proc/self/clear_refs restarts it from the current size. A sleep reads and restarts it at the end
of every stage, so each stage reports its own peak and the night's peak is the largest of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc's malloc.h)


def reset_peak_rss() -> None:
    """Start a new peak-memory measurement (VmHWM restarts from the current size)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float | None:
    """Peak resident memory of this process since :func:`reset_peak_rss`, in GB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1e6, 3)
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """The C library, looked up once: ``find_library`` runs ``ldconfig`` in a subprocess, and
    :func:`trim_heap` is called on every wake."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def trim_heap() -> bool:
    """Give the freed middle of glibc's heap back to the system (``malloc_trim``); False off glibc.

    Why: allocations under the mmap threshold (see :func:`return_freed_memory`) come from the heap,
    and a freed block below the heap's top stays resident. Called after work that frees many such
    blocks at once: measured after one fact's v* optimisation, anonymous memory 0.475 -> 0.395 GB.
    """
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


def return_freed_memory(threshold_mb: float) -> bool:
    """Have glibc map every allocation of at least ``threshold_mb`` MB on its own, so freeing it
    gives the memory back to the system (0: leave glibc's adaptive threshold). Returns whether
    the threshold was set (False off glibc).

    Why: glibc raises its mmap threshold each time a large block is freed (up to 32 MB), so
    the few-MB activations of LoRA training come from the heap afterwards, and the freed heap
    stays resident. Measured on REM (bundled model, 6 steps): peak 2.25 GB with the adaptive
    threshold, 1.73 at 2 MB, 1.76 at 1 MB, 2.20 at 4 MB; CPU time 187 s -> 221 s at 2 MB
    (18 M minor page faults instead of 1.5 M)."""
    if threshold_mb <= 0:
        return False
    try:
        return bool(_libc().mallopt(M_MMAP_THRESHOLD, int(threshold_mb * 1024 * 1024)))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        log.debug("mallopt unavailable; heap_mmap_threshold_mb ignored")
        return False
