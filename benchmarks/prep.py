"""build-3dseg8 per-case wall time against the floor, with 1 and 2 workers, peak memory, store bytes.

    python benchmarks/prep.py [--data data/bench] [--cases 8]

The floor is measured in the same run on the same files: each image and label read with SimpleITK, resampled to
the same target spacing (linear / nearest, one ITK thread), and written to zarr with the store's dtype, chunks
and codec — nothing else (no hashing, statistics, normalization, reorientation, catalog). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ensure_data(data: Path, seed: int) -> Path:
    task = data / "msd" / "Task03_Liver"
    if not (task / "dataset.json").exists():
        from pipeline.sample.msd import write_msd_sample

        print(f"writing 8 full-size CT cases to {data / 'msd'} (once)...", flush=True)
        write_msd_sample(data / "msd", seed=seed, size="bench", tasks=["Task03_Liver"])
    return data / "msd"


def floor(cases, target_zyx, cfg, out: str) -> list[float]:
    import SimpleITK as sitk
    import zarr

    from pipeline.store import compressor

    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    zarr.config.set({"threading.max_workers": 1})
    # Blosc would use several threads when called from a main thread; dask tasks run in worker threads,
    # where it uses one. Compare like with like.
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False
    spacing = tuple(reversed(target_zyx))
    root = zarr.open_group(out, mode="w", zarr_format=3)
    times = []
    for case in cases:
        t = time.perf_counter()
        img = sitk.ReadImage(case.images[0])
        lab = sitk.ReadImage(case.label)
        res = []
        for im, interp, ptype in ((img, sitk.sitkLinear, sitk.sitkFloat32), (lab, sitk.sitkNearestNeighbor, sitk.sitkUInt8)):
            size = [max(1, int(round(n * s / t))) for n, s, t in zip(im.GetSize(), im.GetSpacing(), spacing)]
            res.append(sitk.GetArrayFromImage(sitk.Resample(im, size, sitk.Transform(), interp, im.GetOrigin(),
                                                            spacing, im.GetDirection(), 0.0, ptype)))
        grp = root.require_group(case.case_id)
        a = grp.create_array("image", shape=(1, *res[0].shape), chunks=(1, *cfg.chunks), dtype=cfg.dtype,
                             compressors=compressor(cfg), fill_value=0, overwrite=True)
        a[...] = res[0][None].astype(cfg.dtype)
        b = grp.create_array("label", shape=res[1].shape, chunks=cfg.chunks, dtype="uint8",
                             compressors=compressor(cfg), fill_value=0, overwrite=True)
        b[...] = res[1]
        times.append(time.perf_counter() - t)
    return times


def _warm() -> None:
    import pipeline.convert  # noqa: F401  (SimpleITK, zarr, numcodecs with it)


def floor_parallel(cases, target_zyx, cfg, out: str, procs: int) -> float:
    """Wall time per case of the floor run in ``procs`` processes at once: how this machine itself scales."""
    from concurrent.futures import ProcessPoolExecutor

    parts = [cases[i::procs] for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_noop, range(procs)))  # start the processes before timing
        t = time.perf_counter()
        list(pool.map(floor, parts, [target_zyx] * procs, [cfg] * procs, [f"{out}{i}" for i in range(procs)]))
    return (time.perf_counter() - t) / len(cases)


def _noop(_):
    import pipeline.store  # noqa: F401


def pipeline_run(found, store: str, cfg, workers: int) -> tuple[float, list[float], object]:
    """Run the real build on a LocalCluster we own (so we can read the workers' peak RSS afterwards)."""
    from distributed import Client

    from pipeline.job import build, local_cluster

    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(_warm)  # imports are part of cluster start-up, which is not timed
        t = time.perf_counter()
        result = build(found, store, cfg, scheduler=cluster.scheduler_address, progress=False, log=lambda s: None)
        elapsed = time.perf_counter() - t
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if result.failed:
        raise SystemExit(f"build failed: {result.failed}")
    return elapsed, sorted(peaks.values()), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of all four runs, interleaved; medians shown")
    args = ap.parse_args()

    from pipeline.config import PrepConfig
    from pipeline.job import plan_target_spacing, read_case_header
    from pipeline.sources.msd import scan_msd

    msd = _ensure_data(args.data, args.seed)
    found, _ = scan_msd(msd, ["Task03_Liver"])
    spec, cases = found[0]
    cases = [c for c in cases if c.label]
    found = [(spec, cases)]
    cfg = PrepConfig()
    target = plan_target_spacing([read_case_header(c) for c in cases])
    shape = read_case_header(cases[0]).size_zyx
    tmp = Path(tempfile.mkdtemp(prefix="med3d-bench-", dir=args.data))
    try:
        rounds = []  # per round: floor, floor in 2 procs, build 1 worker, build 2 workers (s per case)
        peaks: dict[int, list[int]] = {}
        for r in range(args.repeat):
            row = [float(np.median(floor(cases, target, cfg, str(tmp / f"floor{r}")))),
                   floor_parallel(cases, target, cfg, str(tmp / f"floor2-{r}-"), 2)]
            for w in (1, 2):
                elapsed, peaks[w], result = pipeline_run(found, str(tmp / f"store{w}-{r}"), cfg, w)
                row.append(elapsed / len(cases))
            rounds.append(row)
        cat = result.catalog
        store_bytes = int(cat["stored_bytes"].sum())
        f32_bytes = int(sum(np.prod(s) * 4 + np.prod(s) for s in cat["shape"]))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    n = len(cases)
    med = np.median(np.asarray(rounds), axis=0)
    lo, hi = np.min(rounds, axis=0), np.max(rounds, axis=0)
    f, f2, t1, t2 = med
    print(f"\n{n} CT cases, source shape (z, y, x) {shape}, target spacing {target} mm, "
          f"dtype {cfg.dtype}, chunks {cfg.chunks}, blosc {cfg.codec}:{cfg.clevel}; {os.cpu_count()} cores; "
          f"median of {args.repeat} interleaved rounds (min-max in brackets)\n")
    print("| run | per-case wall (s) | vs floor | speed-up vs 1 process | peak RSS per worker (MiB) |")
    print("|---|---|---|---|---|")
    ratio = [r[0] / r[1] for r in rounds]
    speed = [r[2] / r[3] for r in rounds]
    vs_floor = [r[2] / r[0] for r in rounds]
    print(f"| floor (read + resample + zarr write, 1 thread) | {f:.2f} [{lo[0]:.2f}-{hi[0]:.2f}] | 1.00× | | |")
    print(f"| floor in 2 processes at once (this machine's own scaling) | {f2:.2f} [{lo[1]:.2f}-{hi[1]:.2f}] | "
          f"{f2 / f:.2f}× | {np.median(ratio):.2f}× [{min(ratio):.2f}-{max(ratio):.2f}] | |")
    print(f"| build-3dseg8, 1 worker | {t1:.2f} [{lo[2]:.2f}-{hi[2]:.2f}] | {np.median(vs_floor):.2f}× "
          f"[{min(vs_floor):.2f}-{max(vs_floor):.2f}] | 1.00× | {', '.join(f'{p / 2**20:.0f}' for p in peaks[1])} |")
    print(f"| build-3dseg8, 2 workers | {t2:.2f} [{lo[3]:.2f}-{hi[3]:.2f}] | {t2 / f:.2f}× | "
          f"{np.median(speed):.2f}× [{min(speed):.2f}-{max(speed):.2f}] | "
          f"{', '.join(f'{p / 2**20:.0f}' for p in peaks[2])} |")
    print(f"\nstore: {store_bytes / 2**20:.1f} MiB for image+label; the same arrays as float32 image + uint8 label: "
          f"{f32_bytes / 2**20:.1f} MiB ({store_bytes / f32_bytes:.2f}×)")
    print("per-case wall of build-3dseg8 = the whole job's wall time (headers, plan, convert, catalog) / cases; "
          "cluster start-up excluded.")


if __name__ == "__main__":
    main()
