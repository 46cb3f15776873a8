"""Time and peak memory of ``lits_metrics`` on liver-sized mask pairs in a 512×512×200 CT grid.

    python benchmarks/metrics.py [--repeat 3] [--medpy]

Cases (uint8 masks (Z, Y, X) = 200×512×512, 50 MB each; the prediction is the ground truth moved by (2, 3, -2)
voxels with a lobe added and a wedge removed):

- ``synthetic liver``: union of three ellipsoids, spacing (1.5, 0.75, 0.75) mm, about 2 L, a union bounding box
  of about 130×230×280 voxels: a typical liver CT.
- ``real liver, upsampled``: ``../shared/data/real/ct/example_ct_sm_liver.nii.gz`` (30×101×122 at 3 mm) resized
  by nearest neighbour to the 512×512×200 grid: the liver spans every slice, so the crop is about 200×320×370,
  a worst case for a liver. Skipped when the file is absent.

Times are the best wall and CPU times of ``--repeat`` calls (one call for MedPy); CPU time is the steadier
figure on a shared machine. Peak is the largest extra memory tracemalloc sees during one
call (numpy and scipy allocate their arrays through Python's tracked allocator), not counting the two input
masks. ``--medpy`` adds MedPy's ``dc, jc, ravd, assd, hd`` on the same pair (whole-volume distance transforms:
slow, several GB).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.evaluation.seg_metrics import lits_metrics  # noqa: E402

SHAPE = (200, 512, 512)
REAL_LIVER = ROOT.parent / "shared" / "data" / "real" / "ct" / "example_ct_sm_liver.nii.gz"


def _ellipsoids(shape: tuple[int, ...], parts: list[tuple[tuple[float, ...], tuple[float, ...]]]) -> np.ndarray:
    """uint8 mask of the union of ellipsoids ((centre zyx), (radii zyx)) in voxels, built box by box."""
    out = np.zeros(shape, np.uint8)
    for centre, radii in parts:
        box = tuple(slice(max(int(c - r) - 1, 0), min(int(c + r) + 2, n)) for c, r, n in zip(centre, radii, shape))
        zz, yy, xx = np.ogrid[box]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) <= 1.0
        out[box] |= inside.astype(np.uint8)
    return out


def _prediction(gt: np.ndarray, lobe: tuple[tuple[float, ...], tuple[float, ...]]) -> np.ndarray:
    """The ground truth moved by (2, 3, -2) voxels, with an extra lobe and a wedge cut away."""
    pred = np.zeros_like(gt)
    pred[2:, 3:, :-2] = gt[:-2, :-3, 2:]
    pred |= _ellipsoids(gt.shape, [lobe])
    z = np.flatnonzero(pred.any(axis=(1, 2)))
    mid = int(z.mean())
    pred[mid:mid + 20, :, :256] = 0
    return pred


def synthetic_liver() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    gt = _ellipsoids(SHAPE, [((100, 250, 200), (55, 90, 110)), ((85, 220, 300), (40, 70, 90)),
                             ((120, 290, 150), (35, 60, 60))])
    return _prediction(gt, ((70, 300, 260), (20, 30, 40))), gt, (1.5, 0.75, 0.75)


def real_liver_upsampled() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]] | None:
    if not REAL_LIVER.is_file():
        return None
    import SimpleITK as sitk

    image = sitk.ReadImage(str(REAL_LIVER))
    small = sitk.GetArrayFromImage(image)
    extent = np.array(small.shape) * np.array(image.GetSpacing()[::-1])
    idx = [np.minimum((np.arange(n) * small.shape[a] / n).astype(int), small.shape[a] - 1)
           for a, n in enumerate(SHAPE)]
    gt = np.ascontiguousarray(small[np.ix_(*idx)].astype(np.uint8))
    spacing = tuple(float(v) for v in extent / np.array(SHAPE))
    return _prediction(gt, ((60, 300, 300), (20, 30, 40))), gt, spacing  # type: ignore[return-value]


def _medpy_all(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    from medpy.metric import binary as mb

    return {"dice": mb.dc(pred, gt), "voe": 1 - mb.jc(pred, gt), "rvd": mb.ravd(pred, gt),
            "assd_mm": mb.assd(pred, gt, voxelspacing=spacing), "msd_mm": mb.hd(pred, gt, voxelspacing=spacing)}


def _call(fn: Callable[[], dict[str, float]], trace: bool) -> tuple[float, float, float, dict[str, float]]:
    if trace:
        tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else float("nan")
    if trace:
        tracemalloc.stop()
    return wall, cpu, peak, result


def measure(fn: Callable[[], dict[str, float]], repeat: int) -> tuple[float, float, float, dict[str, float]]:
    """(best wall seconds, best CPU seconds, tracemalloc peak MiB, result).

    The peak comes from one extra traced call; with ``repeat=1`` (MedPy, too slow to run twice) the one call
    is both timed and traced.
    """
    if repeat == 1:
        return _call(fn, trace=True)
    timed = [_call(fn, trace=False) for _ in range(repeat)]
    peak = _call(fn, trace=True)[2]
    return min(t[0] for t in timed), min(t[1] for t in timed), peak, timed[-1][3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--medpy", action="store_true", help="also time MedPy on the whole volume (slow)")
    args = parser.parse_args()

    cases = {"synthetic liver": synthetic_liver(), "real liver, upsampled": real_liver_upsampled()}
    print(f"grid {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]} (Z×Y×X), uint8 masks; best of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| case | method | crop (voxels) | wall (s) | CPU (s) | peak extra memory (MiB) | Dice | ASSD (mm) "
          "| MSD (mm) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, case in cases.items():
        if case is None:
            print(f"| {name} | skipped: {REAL_LIVER} absent | | | | | | | |")
            continue
        pred, gt, spacing = case
        union = (pred > 0) | (gt > 0)
        extent = [np.flatnonzero(union.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        crop = "×".join(str(min(e[-1] + 2, n) - max(e[0] - 1, 0)) for e, n in zip(extent, SHAPE))
        del union
        runs = [("ours", lambda: lits_metrics(pred, gt, spacing), args.repeat)]
        if args.medpy:
            runs.append(("MedPy", lambda: _medpy_all(pred, gt, spacing), 1))
        for method, fn, repeat in runs:
            wall, cpu, peak, r = measure(fn, repeat)
            print(f"| {name} | {method} | {crop if method == 'ours' else 'whole volume'} | {wall:.2f} | {cpu:.2f} "
                  f"| {peak:.0f} "
                  f"| {r['dice']:.4f} | {r['assd_mm']:.3f} | {r['msd_mm']:.2f} |", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess max RSS {rss:.0f} MiB (inputs, case building{' and MedPy' if args.medpy else ''} included)")


if __name__ == "__main__":
    main()
