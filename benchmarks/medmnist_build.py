"""How long `med3d-prep build-medmnist` takes on a real MedMNIST file (default VesselMNIST3D, 1,908 volumes of 28³).

    python benchmarks/medmnist_build.py [--npz ../shared/data/real/medmnist/vesselmnist3d.npz] [--repeat 3]
                                        [--out DIR]

Each round builds the file into a new store under ``--out`` (default: a temporary folder, removed at the end,
outside the timing): read and check the .npz, z-score every volume, write the cases, the catalog and
labels.csv. Prints a markdown table with the median of the rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.job_medmnist import build_medmnist  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "medmnist" / "vesselmnist3d.npz"


def _store_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in store.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", type=Path, default=DEFAULT.resolve())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="Folder for the stores (default: a temporary one).")
    args = ap.parse_args()
    if not args.npz.is_file():
        sys.exit(f"{args.npz}: no such file (the real MedMNIST files lie in ../shared/data/real/medmnist)")
    out = Path(tempfile.mkdtemp(prefix="medmnist-bench-", dir=args.out))
    times, result = [], None
    try:
        for r in range(args.repeat):
            store = out / f"store{r}"
            t = time.perf_counter()
            result = build_medmnist(args.npz, store, log=lambda s: None)
            times.append(time.perf_counter() - t)
        stored = _store_bytes(out / "store0")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = sum(result.counts.values())
    med = statistics.median(times)
    print(f"| file | volumes | shape | build, median of {args.repeat} (s) | per volume (ms) | rounds (s) | store |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.npz.name} | {n:,} | {'×'.join(map(str, result.shape))} | {med:.2f} | {1000 * med / n:.2f} | "
          f"{', '.join(f'{t:.2f}' for t in times)} | {stored / 2**20:.1f} MiB |")
    print(f"\n{os.cpu_count()} CPU(s) visible; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
