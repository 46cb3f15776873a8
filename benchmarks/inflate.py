"""The inflate lever of the build (#22): one checked voxel read (``volume.integrity.read_nifti_voxels``) of each
full-size CT case with each installed deflate library, against SimpleITK's own read of the same file.

    python benchmarks/inflate.py [--data data/bench] [--repeat 5]

Rounds interleaved (every library reads every case once per round), one thread; prints a markdown table of the
median seconds per case, min-max in brackets, and the machine's load average.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep import _ensure_data  # noqa: E402  (benchmarks/prep.py writes the same 8 cases)

LIBS = [n for n, m in (("zlib", "zlib"), ("zlib-ng", "zlib_ng"), ("isal", "isal")) if importlib.util.find_spec(m)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import SimpleITK as sitk

    from volume.integrity import read_nifti_info, read_nifti_voxels

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    files = sorted((_ensure_data(args.data, 0) / "Task03_Liver" / "imagesTr").glob("*.nii.gz"))
    mb = sum(f.stat().st_size for f in files) / len(files) / 2**20
    times: dict[str, list[float]] = {k: [] for k in [*LIBS, "SimpleITK ReadImage"]}
    for _ in range(args.repeat):
        for lib in LIBS:
            os.environ["MED3D_INFLATE"] = lib
            t0 = time.perf_counter()
            for f in files:
                read_nifti_voxels(read_nifti_info(str(f)))
            times[lib].append((time.perf_counter() - t0) / len(files))
        t0 = time.perf_counter()
        for f in files:
            sitk.ReadImage(str(f))
        times["SimpleITK ReadImage"].append((time.perf_counter() - t0) / len(files))
    ref = float(np.median(times["zlib"]))
    print(f"\n{len(files)} CT cases of 512x512x120 int16, {mb:.1f} MiB compressed each; median of {args.repeat} "
          f"interleaved rounds; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| read | s per case | vs zlib |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {np.median(v):.3f} [{min(v):.3f}-{max(v):.3f}] | {ref / np.median(v):.2f}x |")


if __name__ == "__main__":
    main()
