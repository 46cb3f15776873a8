"""Each case's own peak memory, case after case: where a build worker's peak RSS growth comes from (#22 item 3).

    python benchmarks/rss_trace.py [--data data/bench] [--rounds 4] [--where process|worker] [--no-profiler]
                                   [--arena-max N] [--child-arena-max N] [--mmap-threshold BYTES]

The 8 bench CTs of ``benchmarks/prep.py`` are converted ``--rounds`` times, one case per build, each into a store
of its own (deleted after). Before each case the peak counter is reset (``/proc/self/clear_refs``, Linux 4.0+), so
each figure is that case's own peak, not the maximum so far; also shown: the resident memory before the case and
after it. ``--where process``: in this process (``workers=0``, the trim after each case, as a worker does);
``--where worker``: in the one worker of a local dask cluster (forked, as the command starts them);
``--no-profiler`` turns dask's worker profiler off. Prints one line per round (peak/before/after MiB per case)
and a summary: the largest peak per round and the floor after the last case.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep import _ensure_data  # noqa: E402


def _mib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith(key))


def reset_peak() -> int:
    """Reset this process's VmHWM to its current RSS; returns that RSS (MiB)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _mib("VmRSS:")


def peak_and_now() -> tuple[int, int]:
    return _mib("VmHWM:"), _mib("VmRSS:")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--where", choices=["process", "worker"], default="worker")
    ap.add_argument("--no-profiler", action="store_true", help="dask's worker profiler off")
    ap.add_argument("--arena-max", type=int, default=0,
                    help="glibc mallopt(M_ARENA_MAX, N) in this process before the worker is forked (0: leave)")
    ap.add_argument("--child-arena-max", type=int, default=0,
                    help="the same, in each forked child right after the fork (os.register_at_fork)")
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="mallopt(M_MMAP_THRESHOLD, BYTES) in each forked child (fixes glibc's adaptive threshold)")
    args = ap.parse_args()
    import cloudpickle
    import dask

    from pipeline.config import PrepConfig
    from pipeline.executor import local_cluster, release_freed_memory
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    _malloc_settings(args)
    (spec, cases), = scan_msd(_ensure_data(args.data, 0), ["Task03_Liver"])[0]
    cases, cfg = cases[:8], PrepConfig()
    tmp = Path(tempfile.mkdtemp(prefix="med3d-rss-", dir=args.data))
    try:
        target = build([(spec, cases[:1])], str(tmp / "plan"), cfg, workers=0, progress=False,
                       log=lambda s: None).target_spacing
        with dask.config.set({"distributed.worker.profile.enabled": not args.no_profiler}):
            if args.where == "worker":
                from distributed import Client

                with local_cluster(1) as cluster, Client(cluster) as client:
                    def on_worker(fn):
                        return next(iter(client.run(fn).values()))

                    _rounds(args.rounds, cases, spec, cfg, target, tmp, cluster.scheduler_address, on_worker)
            else:
                def here(fn):
                    release_freed_memory()
                    return fn()

                _rounds(args.rounds, cases, spec, cfg, target, tmp, None, here)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _malloc_settings(args) -> None:
    """The glibc experiments of session 10 (docs/BENCHMARKS.md): none of them kept a case's own peak steady."""
    import ctypes
    import os

    m_mmap_threshold, m_arena_max = -3, -8
    libc = ctypes.CDLL("libc.so.6")
    if args.arena_max:
        libc.mallopt(m_arena_max, args.arena_max)
    if args.child_arena_max:
        os.register_at_fork(after_in_child=lambda: libc.mallopt(m_arena_max, args.child_arena_max))
    if args.mmap_threshold:
        os.register_at_fork(after_in_child=lambda: libc.mallopt(m_mmap_threshold, args.mmap_threshold))


def _rounds(rounds, cases, spec, cfg, target, tmp: Path, scheduler, call) -> None:
    from pipeline.job import build

    largest, floor = [], 0
    for r in range(rounds):
        cells = []
        for case in cases:
            before = call(reset_peak)
            out = tmp / f"r{r}_{case.case_id}"
            build([(spec, [case])], str(out), cfg, workers=None if scheduler else 0, scheduler=scheduler,
                  progress=False, log=lambda s: None, target_spacing=target)
            peak, floor = call(peak_and_now)
            cells.append((peak, before, floor))
            shutil.rmtree(out)
        largest.append(max(c[0] for c in cells))
        print(f"round {r}: peak/before/after MiB " + " ".join(f"{p}/{b}/{a}" for p, b, a in cells), flush=True)
    print(f"largest case peak per round (MiB): {largest}; resident after the last case: {floor} MiB")


if __name__ == "__main__":
    main()
