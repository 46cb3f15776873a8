"""build-3dseg8 per-case wall time against the floor, with 1 and 2 workers, peak memory, store bytes; the whole
command against nnU-Net v2's planning and preprocessing; the cost of a re-run that finds every case unchanged.

    python benchmarks/prep.py [--data data/bench] [--repeat 3] [--tables floor,cli,rerun]

``floor``: the floor is measured in the same run on the same files: each image and label read with SimpleITK,
resampled to the same target spacing (linear / nearest, one ITK thread), and written to zarr with the store's
dtype, chunks and codec — nothing else (no hashing, statistics, normalization, reorientation, catalog).

``cli``: the whole ``med3d-prep build-3dseg8 MSD STORE --workers 2`` command as a subprocess (interpreter start-up,
imports, dask cluster, job, catalog), then the same command again on the unchanged store, against the whole
``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np 2 -npfp 2`` command on the same training cases laid out as
an nnU-Net v2 raw dataset (symlinks to the same files), rounds interleaved. nnU-Net is the optional ``bench``
extra; without it its column is skipped with a message. ``--nnunet-verify`` adds ``--verify_dataset_integrity``.

``rerun``: re-runs of unchanged stores of ``--rerun-cases`` (1,000) and 10 tiny MSD cases (copies of the
hippocampus sample), whole command: the difference gives the cost per case, the 10-case run the start-up.
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rss  # noqa: E402  (benchmarks/rss.py, beside this script)


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

    from catalog.store_format import IMAGE, LABEL
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
        a = grp.create_array(IMAGE, shape=(1, *res[0].shape), chunks=(1, *cfg.chunks), dtype=cfg.dtype,
                             compressors=compressor(cfg, image=True), fill_value=0, overwrite=True)
        a[...] = res[0][None].astype(cfg.dtype)
        b = grp.create_array(LABEL, shape=res[1].shape, chunks=cfg.chunks, dtype="uint8",
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
    import cloudpickle
    from distributed import Client

    from pipeline.executor import local_cluster
    from pipeline.job import build

    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(_warm)  # imports are part of cluster start-up, which is not timed
        t = time.perf_counter()
        result = build(found, store, cfg, scheduler=cluster.scheduler_address, progress=False, log=lambda s: None)
        elapsed = time.perf_counter() - t
        cloudpickle.register_pickle_by_value(rss)  # the workers need not find benchmarks/ on their path
        peaks = client.run(rss.peak_rss_bytes)  # VmHWM: ru_maxrss would carry the nanny's peak over
    if result.failed:
        raise SystemExit(f"build failed: {result.failed}")
    return elapsed, sorted(peaks.values()), result


def _exe(name: str) -> str | None:
    """A console script of this environment (next to the interpreter), else from PATH."""
    here = Path(sys.executable).with_name(name)
    return str(here) if here.exists() else shutil.which(name)


def task_subset(task_dir: Path, out: Path, n: int | None = None, copies: int | None = None) -> Path:
    """An MSD task folder at ``out`` holding only training cases (the test image left out): symlinks to the
    first ``n`` cases of ``task_dir``; with ``copies``, that many cases cycling through them, each a real
    copy (its own mtime, like a real dataset)."""
    meta = json.loads((task_dir / "dataset.json").read_text())
    train = meta["training"][:n] if n else meta["training"]
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(copies or len(train)):
        pair = train[i % len(train)]
        entry = {}
        for key in ("image", "label"):
            src = (task_dir / pair[key]).resolve()
            name = f"{src.name.split('.')[0]}_{i:05d}.nii.gz" if copies else src.name
            dst = out / f"{key}sTr" / name
            dst.parent.mkdir(exist_ok=True)
            if not dst.exists():
                shutil.copyfile(src, dst) if copies else dst.symlink_to(src)
            entry[key] = f"./{key}sTr/{name}"
        entries.append(entry)
    meta.update(training=entries, numTraining=len(entries), test=[], numTest=0)
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def nnunet_layout(task_dir: Path, raw: Path, dataset_id: int) -> str:
    """The task's training cases as an nnU-Net v2 raw dataset (imagesTr/<case>_0000.nii.gz, labelsTr, dataset.json
    v2), symlinked to the same files. Returns the dataset's folder name."""
    meta = json.loads((task_dir / "dataset.json").read_text())
    name = f"Dataset{dataset_id:03d}_Med3DBench"
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for pair in meta["training"]:
        image, label = (task_dir / pair["image"]).resolve(), (task_dir / pair["label"]).resolve()
        case = image.name.removesuffix(".nii.gz")
        for src, dst in ((image, folder / "imagesTr" / f"{case}_0000.nii.gz"),
                         (label, folder / "labelsTr" / label.name)):
            if not dst.exists():
                dst.symlink_to(src)
    labels = {name: int(value) for value, name in meta["labels"].items()}
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": dict(meta["modality"]), "labels": labels, "numTraining": len(meta["training"]),
        "file_ending": ".nii.gz", "name": name}, indent=1))
    return name


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall time of a whole command; its output is kept only to explain a failure."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}")
    return elapsed


def cli_tables(task_dir: Path, tmp: Path, workers: int, repeat: int, verify: bool) -> None:
    """The whole build-3dseg8 command (first run and unchanged re-run) against nnU-Net v2's planning and
    preprocessing of the same cases, ``repeat`` interleaved rounds."""
    prep = _exe("med3d-prep")
    msd = tmp / "cli_msd"
    task_subset(task_dir, msd / task_dir.name)
    n = len(json.loads((msd / task_dir.name / "dataset.json").read_text())["training"])
    nnunet = _exe("nnUNetv2_plan_and_preprocess")
    if nnunet is None:
        print("\nnnU-Net v2 is not installed (`pip install -e '.[bench]'` or `pip install nnunetv2`): its column "
              "is skipped.")
    else:
        raw, pre, res = tmp / "nnUNet_raw", tmp / "nnUNet_preprocessed", tmp / "nnUNet_results"
        name = nnunet_layout(msd / task_dir.name, raw, 901)
        env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)}
        nn_cmd = [nnunet, "-d", "901", "-c", "3d_fullres", "-np", str(workers), "-npfp", str(workers), "--no_pbar"]
        nn_cmd += ["--verify_dataset_integrity"] if verify else []
    rounds = []  # per round: med3d first run, med3d re-run, nnU-Net
    for r in range(repeat):
        store = tmp / f"cli_store{r}"
        cmd = [prep, "build-3dseg8", str(msd), str(store), "--tasks", task_dir.name, "--workers", str(workers),
               "--no-progress"]
        row = [timed(cmd), timed(cmd)]
        shutil.rmtree(store, ignore_errors=True)
        if nnunet is not None:
            shutil.rmtree(pre / name, ignore_errors=True)
            row.append(timed(nn_cmd, env))
        rounds.append(row)
        print(f"  round {r + 1}: " + ", ".join(f"{v:.1f} s" for v in row), flush=True)
    med = np.median(np.asarray(rounds), axis=0)
    lo, hi = np.min(rounds, axis=0), np.max(rounds, axis=0)
    print(f"\nwhole commands on the same {n} CT cases and {workers} workers / processes, wall time "
          f"(median of {repeat} interleaved rounds, min-max in brackets), load average {os.getloadavg()[0]:.1f}:\n")
    print("| command | wall (s) | per case (s) | vs build-3dseg8 |\n|---|---|---|---|")
    print(f"| `med3d-prep build-3dseg8 MSD STORE --workers {workers}` (new store) | {med[0]:.1f} "
          f"[{lo[0]:.1f}-{hi[0]:.1f}] | {med[0] / n:.2f} | 1.00× |")
    print(f"| the same again, every case unchanged | {med[1]:.1f} [{lo[1]:.1f}-{hi[1]:.1f}] | | |")
    if nnunet is not None:
        ratio = [row[2] / row[0] for row in rounds]
        print(f"| `nnUNetv2_plan_and_preprocess -d 901 -c 3d_fullres -np {workers} -npfp {workers}"
              f"{' --verify_dataset_integrity' if verify else ''}` | {med[2]:.1f} [{lo[2]:.1f}-{hi[2]:.1f}] | "
              f"{med[2] / n:.2f} | {np.median(ratio):.2f}× [{min(ratio):.2f}-{max(ratio):.2f}] slower |")
    else:
        print("| `nnUNetv2_plan_and_preprocess` | skipped: nnU-Net v2 not installed | | |")


def rerun_table(tmp: Path, n_cases: int, workers: int, repeat: int, seed: int) -> None:
    """Re-runs on unchanged stores of ``n_cases`` and 10 tiny cases: cost per case and start-up."""
    from pipeline.sample.msd import write_msd_sample

    prep = _exe("med3d-prep")
    write_msd_sample(tmp / "tiny", seed=seed, tasks=["Task04_Hippocampus"])
    task = tmp / "tiny" / "Task04_Hippocampus"
    sizes = (n_cases, 10)
    stores = {}
    for n in sizes:
        msd = tmp / f"rerun_msd{n}"
        task_subset(task, msd / task.name, copies=n)
        stores[n] = [prep, "build-3dseg8", str(msd), str(tmp / f"rerun_store{n}"), "--tasks", task.name,
                     "--workers", str(workers), "--no-progress"]
        t = timed(stores[n])
        print(f"  built {n} tiny cases in {t:.1f} s (not part of the table)", flush=True)
    rounds = [[timed(stores[n]) for n in sizes] for _ in range(repeat)]
    med = np.median(np.asarray(rounds), axis=0)
    per_case = (med[0] - med[1]) / (sizes[0] - sizes[1])
    print(f"\nre-run of `med3d-prep build-3dseg8 ... --workers {workers}` on an unchanged store (every case "
          f"skipped), whole command, median of {repeat} interleaved rounds, load average {os.getloadavg()[0]:.1f}:\n")
    print("| cases | wall (s) |\n|---|---|")
    for n, m, lo, hi in zip(sizes, med, np.min(rounds, axis=0), np.max(rounds, axis=0)):
        print(f"| {n:,} | {m:.2f} [{lo:.2f}-{hi:.2f}] |")
    print(f"\nper case: {per_case * 1e3:.2f} ms ({per_case * 1e3:.2f} s per thousand cases); start-up (the 10-case "
          f"run less 10 cases): {med[1] - 10 * per_case:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of all four runs, interleaved; medians shown")
    ap.add_argument("--tables", default="floor,cli,rerun", help="which tables: floor, cli, rerun (comma list)")
    ap.add_argument("--workers", type=int, default=2, help="cli table: workers of build-3dseg8 and nnU-Net -np")
    ap.add_argument("--nnunet-verify", action="store_true", help="cli table: nnU-Net with --verify_dataset_integrity")
    ap.add_argument("--rerun-cases", type=int, default=1000, help="rerun table: cases of the large unchanged store")
    args = ap.parse_args()
    tables = set(args.tables.split(","))
    if not tables <= {"floor", "cli", "rerun"}:
        raise SystemExit(f"--tables: choose from floor, cli, rerun, got {args.tables!r}")

    msd = _ensure_data(args.data, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="med3d-bench-", dir=args.data))
    try:
        if "floor" in tables:
            floor_table(msd, tmp, args)
        if "cli" in tables:
            cli_tables(msd / "Task03_Liver", tmp, args.workers, args.repeat, args.nnunet_verify)
        if "rerun" in tables:
            rerun_table(tmp, args.rerun_cases, args.workers, args.repeat, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def floor_table(msd: Path, tmp: Path, args) -> None:
    from pipeline.config import PrepConfig
    from pipeline.job import plan_target_spacing, read_case_header
    from pipeline.sources.msd import scan_msd

    found, _ = scan_msd(msd, ["Task03_Liver"])
    spec, cases = found[0]
    cases = [c for c in cases if c.label]
    found = [(spec, cases)]
    cfg = PrepConfig()
    target = plan_target_spacing([read_case_header(c) for c in cases])
    shape = read_case_header(cases[0]).size_zyx
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

    n = len(cases)
    med = np.median(np.asarray(rounds), axis=0)
    lo, hi = np.min(rounds, axis=0), np.max(rounds, axis=0)
    f, f2, t1, t2 = med
    print(f"\n{n} CT cases, source shape (z, y, x) {shape}, target spacing {target} mm, "
          f"dtype {cfg.dtype}, chunks {cfg.chunks}, images {cfg.image_codec}, labels blosc {cfg.codec}:{cfg.clevel} "
          "byte shuffle; "
          f"{os.cpu_count()} cores; "
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
