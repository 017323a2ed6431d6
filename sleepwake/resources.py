"""Peak resident memory of this process, per stretch of work (Linux; None elsewhere).

Linux keeps the high-water mark ``VmHWM`` in /proc/self/status; writing 5 to
/proc/self/clear_refs restarts it from the current size. A sleep reads and restarts it at the end
of every stage, so each stage reports its own peak and the night's peak is the largest of them.
"""

from __future__ import annotations

from pathlib import Path


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
