"""Build cost as the number of cases grows (#22 item 3): per-case wall time and each worker's peak RSS of
``build-3dseg8`` at 6, 24 and 96 full-size CT cases (copies of the 8 bench CTs of ``benchmarks/prep.py``, each a
real file of its own), 2 workers.

    python benchmarks/scale_build.py [--data data/bench] [--counts 6,24,96] [--workers 2] [--glibc-arenas]

Goal: per-case time within 10 % across the three, peak RSS per worker flat. The cluster is started before the
clock (as in ``benchmarks/prep.py``'s floor table), so the per-case figure is the job's own cost. The copies and
stores are deleted at the end (96 cases: ~3 GB of sources, ~7 GB of store). Prints a markdown table with the load.
As ``med3d-prep`` does, this process allocates from glibc's main arena alone before any thread starts
(``pipeline.executor.one_malloc_arena``), and the forked workers inherit it; ``--glibc-arenas`` leaves glibc's
per-thread arenas (the build before session 10), for comparison.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep import _ensure_data, pipeline_run, task_subset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--counts", default="6,24,96")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--glibc-arenas", action="store_true", help="leave glibc's per-thread malloc arenas")
    args = ap.parse_args()
    if not args.glibc_arenas:
        from pipeline.executor import one_malloc_arena

        one_malloc_arena()
    from pipeline.config import PrepConfig
    from pipeline.sources.msd import scan_msd

    msd = _ensure_data(args.data, 0)
    tmp = Path(tempfile.mkdtemp(prefix="med3d-scale-", dir=args.data))
    rows = []
    try:
        for n in (int(c) for c in args.counts.split(",")):
            root = tmp / f"msd{n}"
            task_subset(msd / "Task03_Liver", root / "Task03_Liver", copies=n)
            found, _ = scan_msd(root, ["Task03_Liver"])
            elapsed, peaks, _ = pipeline_run(found, str(tmp / f"store{n}"), PrepConfig(), args.workers)
            rows.append((n, elapsed, elapsed / n, [p / 2**20 for p in peaks]))
            print(f"{n} cases: {elapsed:.1f} s, {elapsed / n:.2f} s per case, peak RSS per worker "
                  f"{', '.join(f'{p / 2**20:.0f}' for p in peaks)} MiB", file=sys.stderr, flush=True)
            shutil.rmtree(tmp / f"store{n}", ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0][2]
    arenas = "glibc's per-thread arenas" if args.glibc_arenas else "one malloc arena"
    print(f"\nbuild-3dseg8, {args.workers} workers ({arenas}), copies of the 512x512x120 bench CTs; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| cases | wall (s) | per case (s) | vs the smallest | peak RSS per worker (MiB) |\n|---|---|---|---|---|")
    for n, elapsed, per, peaks in rows:
        print(f"| {n} | {elapsed:.1f} | {per:.2f} | {per / base:.2f}x | {', '.join(f'{p:.0f}' for p in peaks)} |")


if __name__ == "__main__":
    main()
