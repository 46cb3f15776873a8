"""Peak resident memory of the calling process, as the benchmarks report it."""
from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """This process's own peak RSS in bytes: ``VmHWM`` of /proc/self/status. ``ru_maxrss`` is used only where
    VmHWM does not exist: Linux keeps it across fork + exec, so a fresh child (a dask worker, a subprocess)
    would report at least its parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
