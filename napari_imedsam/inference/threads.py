"""How many CPU threads worker compute may use: all cores but one, so the GUI thread keeps a core.

torch's intra-op thread count is per thread (OpenMP), so each worker sets its own and the caller's
thread is left alone. On a busy 2-core machine one thread is also much faster than two: two OpenMP
threads that cannot both run spin at every barrier (a 2.5 s box became 30 ms in `bench_decode`).
"""

from __future__ import annotations

import os
import sys

ENV = "IMEDSAM_THREADS"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def compute_threads(background: bool = False) -> int:
    """Threads for one worker: `$IMEDSAM_THREADS`, else all CPUs but one; background work gets one."""
    if background:
        return 1
    value = os.environ.get(ENV, "")
    if value.strip().isdigit() and int(value) > 0:
        return int(value)
    return max(1, available_cpus() - 1)


def use_compute_threads(background: bool = False) -> None:
    """Set torch's thread count for the calling thread (a no-op until torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(compute_threads(background))
