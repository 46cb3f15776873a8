"""Transfer recipes end to end (fine-tune, evaluate, compare), loader data wait, and liver inference time/memory.

    python benchmarks/transfer.py [--quick] [--out DIR] [--sections 1,2,3,4,5]

1. **Transfer on the sample data** (CPU, small): ``med3d-prep sample`` (tiny), the 3DSeg-8, LiTS, VISCERAL and
   LIDC stores built with the pipeline's Python API (in-process, ``workers=0``), a ResNet-10 pretrained on the
   3DSeg-8 store for a few dozen steps with the LiTS val scans excluded, then ``finetune liver | lung | nodule``
   from scratch and from that run (``val_every`` set, so the curves exist), ``evaluate`` on each task's split
   and the ``compare`` table. The LIDC sample has two nodule crops, both in train (its third patient, the test
   one, has no reader XML), so the nodule task runs on a small synthetic LIDC-IDRI cohort written with the
   sample's own DICOM/XML writers (several patients, a malignant and a benign nodule each) instead.
2. **Fine-tune data wait**: each task's stages with ``workers=2`` loader workers at patch 64, batch 2 (liver
   coarse at its default 64×128×128): the share of step time spent waiting for the next batch, from the
   ``train`` rows of ``metrics.jsonl`` (``data_wait_s``, ``step_s``), warm-up steps left out. Without
   ``--quick`` the LiTS and VISCERAL stores are built from ``med3d-prep sample --size bench`` (512×512×120 CT
   and 256×256×192-class volumes), so patches are read from full-size volumes; ``--quick`` uses the tiny stores.
3. **Liver inference on a 512×512×200 CT** (int16 HU, 0.7×0.7×2.0 mm, a liver-like ellipsoid): what
   ``med3d-train predict`` does — ``preprocess_scan`` with the LiTS store's recipe, ``LiverSegmenter`` (coarse
   then fine, ResNet-10, random weights), ``to_original_grid``, the mask written as .nii.gz — on 2 threads,
   one fresh subprocess per patch size, wall time per phase and the process's peak RSS. Random weights do not
   find a liver, so the coarse network runs as usual and its output is then replaced by the true liver's
   ellipsoid on the coarse grid (a subclass overriding ``coarse_probs``): the ROI, margin and fine sliding
   window are the library's, on a liver spanning 60 % of each in-plane axis and 60 % of the slices.
4. **CUDA** (when available): fine-tuning steps/s per task network (synthetic tensors, the real
   ``FinetuneStepper``: Adam, augmentation, channels_last_3d) and liver inference time on the same CT, bf16 and
   fp32, with the card's name; then section 2's data-wait table again with the networks on CUDA (bf16), where
   steps are short enough for the loader to matter.
5. **`finetune seg` on real scans**: the four real MSD hippocampus MR cases (``tests/data/real/msd`` or
   ``../shared/data/real/msd``; train 3, val 1) fine-tuned for a few hundred CPU steps (ResNet-10 + U-Net
   decoder, patch 32³) from scratch and from a ResNet-10 pretrained on the 3DSeg-8 sample store built *without*
   ``Task04_Hippocampus`` (no hippocampus scan, real or synthetic, in pretraining); val Dice every N steps from
   each run's ``metrics.jsonl`` as a table, ``evaluate`` after the last step, and the report page
   (``build_report``, what ``med3d-prep report STORE OUT --runs RUN1 RUN2`` does) with both curves.
   ``--seg-steps``, ``--seg-seeds 0,1`` for more than one run pair.

Prints markdown tables. Everything is written under ``--out`` (default: a temporary folder, removed at the end).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rss import peak_rss_bytes  # noqa: E402  (benchmarks/rss.py, beside this script)

TASKS = ("liver", "lung", "nodule")
CT_SHAPE = (200, 512, 512)          # (z, y, x) voxels of the inference CT
CT_SPACING = (2.0, 0.7, 0.7)        # (z, y, x) mm
LIVER = ((0.55, 0.50, 0.40), (0.30, 0.30, 0.30))   # centre, radii as fractions of each axis: 60 % box per axis


def quiet(_: str) -> None:
    pass


def md_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` one character per column (l or r)."""
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def peak_rss_gib() -> float:
    """This process's own peak RSS (GiB), see :func:`rss.peak_rss_bytes`."""
    return peak_rss_bytes() / 2**30


class Timer:
    """Wall seconds (``s``) and this process's CPU seconds, all threads (``cpu``)."""

    def __enter__(self) -> "Timer":
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.s, self.cpu = time.perf_counter() - self.t, time.process_time() - self.c


# ------------------------------------------------------------------------------------------------ the stores
def synthetic_lidc(root: Path, n_patients: int, seed: int = 7) -> list[Path]:
    """A LIDC-IDRI cohort in the real layout, written with the sample's own writers (64×64×24 series, 2.5 mm
    slices): per patient one malignant nodule (radius 5.5-7 mm, ratings 4-5 by four readers) and one benign
    one (3.5-4.5 mm, ratings 1-2 by four readers), at random positions inside the lungs."""
    from pipeline.sample import lidc as L

    rng = np.random.default_rng(seed)
    nx, ny, nz = L.SIZES["tiny"]
    folders = []
    for p in range(1, n_patients + 1):
        pid = f"LIDC-IDRI-{p:04d}"
        study, series = L._uid(rng), L._uid(rng)
        folder = root / pid / study / series
        folder.mkdir(parents=True, exist_ok=True)
        px = float(rng.uniform(0.68, 0.8))
        origin = (-nx * px / 2, -ny * px / 2, -200.0 + L.SLICE_MM * p)
        sides = rng.permutation([0.33, 0.66])
        lesions = [
            L._Lesion(float(sides[0] + rng.uniform(-0.04, 0.04)), float(rng.uniform(0.38, 0.62)),
                      float(nz * rng.uniform(0.4, 0.6)), float(rng.uniform(5.5, 7.0)),
                      {0: int(rng.integers(4, 6)), 1: int(rng.integers(4, 6)), 2: 5, 3: 4}),
            L._Lesion(float(sides[1] + rng.uniform(-0.04, 0.04)), float(rng.uniform(0.38, 0.62)),
                      float(nz * rng.uniform(0.4, 0.6)), float(rng.uniform(3.5, 4.5)),
                      {0: int(rng.integers(1, 3)), 1: int(rng.integers(1, 3)), 2: 1, 3: 2}),
        ]
        hu = L._volume((nx, ny, nz), px, lesions, rng)
        sops = [L._uid(rng) for _ in range(nz)]
        L._write_dicom(folder, hu, origin, px, pid, study, series, sops, rng)
        folder.joinpath("069.xml").write_bytes(
            L._read_message(lesions, None, origin, px, (nx, ny, nz), study, series, sops, rng))
        folders.append(folder)
    return folders


def split_counts(store: str) -> str:
    from catalog import load_catalog

    cat = load_catalog(store)
    ok = cat[cat["status"] == "ok"]
    return ", ".join(f"{s} {n}" for s, n in ok["split"].value_counts().sort_index().items())


def nodule_eval_problem(store: str) -> str | None:
    """Why the nodule task cannot be measured on ``store`` (None when it can)."""
    from catalog import load_catalog
    from model.data.store_index import CaseEntry
    from model.data.task_streams import nodule_labels

    cat = load_catalog(store)
    ok = cat[(cat["status"] == "ok") & cat["has_label"]]
    for split in ("train", "test"):
        rows = ok[ok["split"] == split]
        cases = [CaseEntry(r.store_path, r.scan_id, tuple(int(s) for s in r.shape), int(r.n_channels))
                 for r in rows.itertuples(index=False)]
        labels = nodule_labels(store, cases) if cases else {}
        if len(set(labels.values())) < 2:
            return (f"its {split} split has {len(rows)} nodule crop(s), {len(labels)} rated, "
                    f"classes {sorted(set(labels.values()))} (needs benign and malignant)")
    return None


def build_stores(work: Path, *, size: str = "tiny", lidc_patients: int = 8, log=print) -> dict[str, Any]:
    """Raw samples and the stores under ``work``; returns their paths and a table of what was built."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.job_lidc import build_lidc
    from pipeline.sample import write_all
    from pipeline.sources.lidc import LidcParams
    from pipeline.sources.lits import scan_lits
    from pipeline.sources.msd import scan_msd
    from pipeline.sources.visceral import scan_visceral

    raw = work / "raw"
    out: dict[str, Any] = {"rows": []}
    with Timer() as t:
        if not (raw / "msd" / "SAMPLE.json").is_file():
            write_all(raw, seed=0, size=size)
    out["rows"].append(["`med3d-prep sample` (tiny, seed 0)", "", f"{t.s:.1f}"])

    def record(name: str, store: str, seconds: float, result: Any) -> None:
        if not result.ok:
            raise SystemExit(f"building {store} failed:\n{result.summary()}")
        out["rows"].append([name, split_counts(store), f"{seconds:.1f}"])

    found, _ = scan_msd(raw / "msd")
    out["store"] = str(work / "store")
    with Timer() as t:
        r = build(found, out["store"], PrepConfig(), workers=0, progress=False, log=quiet)
    record("3DSeg-8 (`build-3dseg8`)", out["store"], t.s, r)

    spec, cases, _ = scan_lits(raw / "lits")
    out["lits"] = str(work / "lits_store")
    with Timer() as t:
        r = build([(spec, cases)], out["lits"], PrepConfig(ct_window=(-200.0, 250.0)), workers=0,
                  spacing_rule="mean", progress=False, log=quiet)
    record("LiTS (`build-lits`)", out["lits"], t.s, r)

    cfg = PrepConfig()
    spec, cases, _ = scan_visceral(raw / "visceral", lung_labels="merged", n_test=8, seed=cfg.split_seed)
    out["visceral"] = str(work / "visceral_store")
    with Timer() as t:
        r = build([(spec, cases)], out["visceral"], cfg, workers=0, progress=False, log=quiet)
    record("VISCERAL (`build-visceral`)", out["visceral"], t.s, r)

    out["lidc_sample"] = str(work / "lidc_store")
    with Timer() as t:
        r = build_lidc(raw / "lidc", out["lidc_sample"], PrepConfig(), LidcParams(), workers=0, progress=False,
                       log=quiet)
    record("LIDC-IDRI sample (`build-lidc`)", out["lidc_sample"], t.s, r)

    problem = nodule_eval_problem(out["lidc_sample"])
    out["lidc"] = out["lidc_sample"]
    if problem is not None:
        out["nodule_note"] = (f"The LIDC sample store cannot measure the nodule task: {problem}. The nodule runs use "
                              f"a synthetic cohort of {lidc_patients} patients instead (the sample's DICOM/XML "
                              "writers, one malignant and one benign nodule each, `--test-fraction 0.25`).")
        synth_raw = work / "raw" / "lidc_synthetic"
        with Timer() as t:
            if not synth_raw.is_dir():
                synthetic_lidc(synth_raw, lidc_patients)
            out["lidc"] = str(work / "lidc_synthetic_store")
            r = build_lidc(synth_raw, out["lidc"], PrepConfig(), LidcParams(test_fraction=0.25), workers=0,
                           progress=False, log=quiet)
        record(f"LIDC-IDRI synthetic, {lidc_patients} patients (`build-lidc --test-fraction 0.25`)", out["lidc"],
               t.s, r)
        problem = nodule_eval_problem(out["lidc"])
        if problem is not None:
            out["nodule_skip"] = f"the synthetic LIDC store cannot measure the nodule task either: {problem}"
    return out


def build_bench_stores(work: Path) -> dict[str, Any]:
    """LiTS and VISCERAL stores from ``med3d-prep sample --size bench`` (full-size volumes)."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sample import write_all
    from pipeline.sources.lits import scan_lits
    from pipeline.sources.visceral import scan_visceral

    raw = work / "raw_bench"
    out: dict[str, Any] = {"rows": []}
    for name in ("lits", "visceral"):
        with Timer() as t:
            if not (raw / name / "SAMPLE.json").is_file():
                write_all(raw, seed=0, size="bench", only=name)
        out["rows"].append([f"`med3d-prep sample --size bench --only {name}`", "", f"{t.s:.1f}"])
    spec, cases, _ = scan_lits(raw / "lits")
    out["lits"] = str(work / "lits_bench_store")
    with Timer() as t:
        r = build([(spec, cases)], out["lits"], PrepConfig(ct_window=(-200.0, 250.0)), workers=0,
                  spacing_rule="mean", progress=False, log=quiet)
    if not r.ok:
        raise SystemExit(r.summary())
    out["rows"].append(["LiTS bench (`build-lits`)", split_counts(out["lits"]), f"{t.s:.1f}"])
    cfg = PrepConfig()
    spec, cases, _ = scan_visceral(raw / "visceral", lung_labels="merged", n_test=8, seed=cfg.split_seed)
    out["visceral"] = str(work / "visceral_bench_store")
    with Timer() as t:
        r = build([(spec, cases)], out["visceral"], cfg, workers=0, progress=False, log=quiet)
    if not r.ok:
        raise SystemExit(r.summary())
    out["rows"].append(["VISCERAL bench (`build-visceral`)", split_counts(out["visceral"]), f"{t.s:.1f}"])
    return out


def median_shape(store: str, split: str = "train") -> str:
    from catalog import load_catalog

    cat = load_catalog(store)
    rows = cat[(cat["status"] == "ok") & (cat["split"] == split)]
    shapes = np.array([list(s) for s in rows["shape"]])
    return "×".join(str(int(v)) for v in np.median(shapes, axis=0)) if len(shapes) else "-"


# --------------------------------------------------------------------------------------- 1. transfer on sample
def task_options(task: str, quick: bool) -> dict[str, Any]:
    """Small sizes for the tiny sample volumes (16-80 voxels per axis)."""
    steps = 12 if quick else 48
    opts: dict[str, Any] = {"steps": steps, "batch": 2, "val_every": steps // (3 if quick else 6), "ckpt_every": 0,
                            "workers": 0, "device": "cpu", "seed": 0}
    if task == "liver":
        opts.update(patch=(16, 32, 32), coarse_shape=(16, 32, 32))
    elif task == "lung":
        opts.update(patch=(16, 32, 32), val_max_cases=2)  # the curve on 2 of the 4 test volumes: cheaper
    return opts


def last_val(run: Path, task: str) -> tuple[float | None, int]:
    from model.evaluation.metrics import read_metrics

    folder = run / "fine" if task == "liver" else run
    vals = [r for r in read_metrics(folder, "val") if r.get("metric") is not None]
    return (float(vals[-1]["metric"]) if vals else None), len(vals)


def section_transfer(work: Path, stores: dict[str, Any], quick: bool) -> list[str]:
    import torch

    from model.api import evaluate, finetune
    from model.evaluation.compare import collect_runs, compare_table, encoder_label, write_compare
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    print("## 1. Transfer on the sample data (CPU, small)\n")
    print(f"CPU, {torch.get_num_threads()} torch threads; work folder {work}\n")
    print(md_table(["step", "cases per split", "wall (s)"], stores["rows"], "llr"))
    if stores.get("nodule_note"):
        print(f"\n{stores['nodule_note']}")
    print(flush=True)

    runs_dir = work / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    pre_steps = 8 if quick else 32
    cfg = TrainConfig(store=stores["store"], out=str(runs_dir / "pretrain"), encoder="resnet10", steps=pre_steps,
                      batch=2, patch=(32, 32, 32), workers=0, val_every=0, ckpt_every=0, device="cpu",
                      exclude=(stores["lits"] + ":val",))
    with Timer() as t:
        res = pretrain(cfg, progress=False, log=quiet)
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=True)
    print(f"Pretraining: ResNet-10, {pre_steps} steps of batch 2 at 32³ on the 3DSeg-8 store, "
          f"{len(ckpt['scan_ids'])} train scans, {len(ckpt['excluded'])} LiTS val scan(s) excluded "
          f"({', '.join(ckpt['excluded'])}): {t.s:.1f} s wall, {t.cpu:.1f} s CPU\n", flush=True)

    rows, done = [], []
    for task in TASKS:
        if task == "nodule" and stores.get("nodule_skip"):
            print(f"nodule skipped: {stores['nodule_skip']}")
            continue
        store = stores[{"liver": "lits", "lung": "visceral", "nodule": "lidc"}[task]]
        for init in ("scratch", str(res.run_dir)):
            name = f"{task}_r10_{'scratch' if init == 'scratch' else 'med3d'}"
            run = runs_dir / name
            opts = task_options(task, quick)
            with Timer() as tt:
                results = finetune(task, store, str(run), init=init, progress=False, log=quiet, **opts)
            steps = sum(r.step for r in results)
            with Timer() as te:
                summary = evaluate(run, store, progress=False, log=quiet)
            val, n_val = last_val(run, task)
            extra = ""
            if task == "nodule":
                extra = f"AUC {fmt(summary.get('auc'), '.2f')}"
            elif summary.get("assd_mm_mean") is not None:
                extra = f"ASSD {fmt(summary.get('assd_mm_mean'), '.1f')} mm"
            rows.append([task, "scratch" if init == "scratch" else "Med3D (ours, this run)",
                         f"{'+'.join(str(r.step) for r in results)}", f"{tt.s:.1f}", f"{tt.cpu:.1f}",
                         f"{tt.s / steps:.3f}",
                         f"{fmt(val, '.3f')} ({n_val} pts)",
                         f"{summary['metric_name']} {fmt(summary.get('metric'), '.3f')} on {summary['split']} "
                         f"({summary.get('labelled_cases', summary.get('n', ''))} cases) {extra}".strip(),
                         f"{te.s:.1f}"])
            done.append(run)
            print(f"  {name}: {tt.s:.1f} s train, {te.s:.1f} s evaluate", flush=True)
    print()
    print(md_table(["task", "init", "steps", "train wall (s)", "train CPU (s)", "wall s/step",
                    "last val metric (curve)", "evaluate: metric", "evaluate (s)"], rows, "llrrrrlll"))
    print("\nTrain time includes the validations of the curve (lung: on 2 of its test volumes); liver steps are "
          "coarse + fine, the curve and the compare steps are the fine stage's. Patches 16×32×32 (liver coarse: "
          "volumes at 16×32×32), nodule crops 48³, batch 2, in-process loading (workers=0).")
    df = collect_runs(done)
    table = compare_table(df)
    cols = [c for c in table.columns if (table[c] != "").any()]
    print("\n`compare` table (metric in percent on the evaluation split; in brackets the first step at which the "
          "run's val metric reached the scratch run's final val metric):\n")
    print(md_table(["task", "encoder", *cols],
                   [[task, encoder_label(encoder), *[table.loc[(task, encoder), c] for c in cols]]
                    for task, encoder in table.index], "ll" + "l" * len(cols)))
    md, csv = write_compare(df, work / "compare")
    print(f"\nwrote {md} and {csv}; load average at the end: {os.getloadavg()[0]:.1f}\n", flush=True)
    return [str(r) for r in done]


# ---------------------------------------------------------------------------------------------- 2. data wait
def section_data_wait(work: Path, stores: dict[str, Any], quick: bool, device: str = "cpu",
                      title: str = "## 2. Fine-tune data wait (CPU, 2 loader workers)") -> None:
    import torch

    from model.evaluation.metrics import read_metrics
    from model.api import finetune

    warmup, measured = (3, 8) if quick else (4, 16)
    if device != "cpu":
        warmup, measured = 10, 50  # GPU steps are short: more of them
    steps = warmup + measured
    print(f"{title}\n")
    print(f"device {device}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average "
          f"{os.getloadavg()[0]:.1f} at the start; {measured} steps measured after {warmup} warm-up steps; "
          "patch 64³ (liver coarse: whole volumes at 64×128×128), batch 2, ResNet-10 from scratch, no "
          "validation. Share = mean data wait / (mean data wait + mean step).\n", flush=True)
    rows = []
    for task in TASKS:
        if task == "nodule" and stores.get("nodule_skip"):
            continue
        store = stores[{"liver": "lits", "lung": "visceral", "nodule": "lidc"}[task]]
        run = work / f"runs_wait_{device.replace(':', '')}" / task
        shutil.rmtree(run, ignore_errors=True)
        opts = {"steps": steps, "batch": 2, "val_every": 0, "ckpt_every": 0, "workers": 2, "device": device,
                "seed": 0, "log_every": 1000, **({} if task == "nodule" else {"patch": (64, 64, 64)})}
        with Timer() as t:
            finetune(task, store, str(run), progress=False, log=quiet, **opts)
        for stage in (("coarse", "fine") if task == "liver" else ("main",)):
            folder = run / stage if stage != "main" else run
            train = read_metrics(folder, "train")[warmup:]
            wait = [r["data_wait_s"] for r in train]
            step = [r["step_s"] for r in train]
            share = statistics.fmean(wait) / (statistics.fmean(wait) + statistics.fmean(step))
            label = f"{task}" + (f" {stage}" if stage != "main" else "")
            shape = "64×128×128 (coarse cache)" if stage == "coarse" else (
                "48³ crops" if task == "nodule" else "64³")
            rows.append([label, f"`{Path(store).name}` (train median {median_shape(store)})", shape, len(train),
                         f"{1000 * statistics.fmean(wait):.1f}", f"{1000 * max(wait):.1f}",
                         f"{statistics.fmean(step):.3f}", f"{100 * share:.1f} %",
                         "yes" if share < 0.10 else "**no**"])
        print(f"  {task}: {t.s:.1f} s", flush=True)
    print()
    print(md_table(["stage", "store", "batch items", "steps", "mean wait (ms)", "max wait (ms)", "mean step (s)",
                    "wait share", "< 10 %"], rows, "lllrrrrrl"))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n", flush=True)


# ----------------------------------------------------------------------------------------- 3. liver inference
def write_ct(folder: Path, shape: tuple[int, int, int] = CT_SHAPE, spacing=CT_SPACING, seed: int = 0) -> Path:
    """A LiTS-layout 512×512×200 CT: ``volume-0.nii`` (int16 HU) and ``segmentation-0.nii`` (1 liver)."""
    import SimpleITK as sitk

    scan = folder / "volume-0.nii"
    if scan.is_file():
        return scan
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Z, Y, X = shape
    z = np.linspace(0, 1, Z, dtype=np.float32)[:, None, None]
    y = np.linspace(0, 1, Y, dtype=np.float32)[None, :, None]
    x = np.linspace(0, 1, X, dtype=np.float32)[None, None, :]
    (cz, cy, cx), (rz, ry, rx) = LIVER
    hu = np.full(shape, -1000.0, np.float32)
    hu[np.broadcast_to(((y - 0.5) / 0.36) ** 2 + ((x - 0.5) / 0.46) ** 2 < 1, shape)] = 40.0   # body
    hu[np.broadcast_to(((y - 0.5) / 0.33) ** 2 + ((x - 0.5) / 0.43) ** 2 < 1, shape) & (z < 0.3)] = 0.0
    for side in (0.3, 0.7):                                                                    # lungs
        hu[((z - 0.1) / 0.25) ** 2 + ((y - 0.45) / 0.22) ** 2 + ((x - side) / 0.15) ** 2 < 1] = -850.0
    liver = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    hu[liver] = 60.0
    hu[np.broadcast_to(((y - 0.8) / 0.05) ** 2 + ((x - 0.5) / 0.04) ** 2 < 1, shape)] = 400.0  # spine
    for k in range(0, Z, 20):                                                                  # noise by slabs
        hu[k:k + 20] += rng.normal(0.0, 12.0, hu[k:k + 20].shape).astype(np.float32)
    hu[np.broadcast_to((y - 0.5) ** 2 + (x - 0.5) ** 2 > 0.25, shape)] = -2048.0               # outside the FOV
    for arr, name, dtype in ((hu, "volume-0.nii", np.int16), (liver, "segmentation-0.nii", np.uint8)):
        img = sitk.GetImageFromArray(arr.astype(dtype))
        img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
        img.SetOrigin((-179.2, -179.2, -400.0))
        sitk.WriteImage(img, str(folder / name))
    return scan


def forced_liver_segmenter():
    """``LiverSegmenter`` whose coarse network runs as usual and whose output is then replaced by the liver
    ellipsoid of :func:`write_ct` on the coarse grid, with per-phase timers."""
    import torch

    from model.evaluation.inference import LiverSegmenter

    class ForcedRoi(LiverSegmenter):
        timings: dict[str, float]

        def coarse_probs(self, image: np.ndarray) -> torch.Tensor:
            t = time.perf_counter()
            probs = super().coarse_probs(image)  # the coarse network's real work, discarded
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings["coarse"] = self.timings.get("coarse", 0.0) + time.perf_counter() - t
            axes = [torch.linspace(0, 1, n) for n in self.coarse_shape]
            zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
            (cz, cy, cx), (rz, ry, rx) = LIVER
            inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            return inside.to(probs.dtype)

    return ForcedRoi


def liver_inference(scan: str, recipe: dict[str, Any], patch: int, device: str, amp: bool, threads: int,
                    write_to: str | None, batch: int = 2) -> dict[str, Any]:
    """What ``med3d-train predict`` does for one scan, timed per phase."""
    import SimpleITK as sitk
    import torch

    from model.nets.transfer import build_transfer_net
    from model.tasks.base import get_task
    from volume.original_grid import to_original_grid
    from volume.preprocess import preprocess_scan

    torch.set_num_threads(threads)
    dev = torch.device(device)
    defaults = get_task("liver").config(store="-", out="-", stage="fine")
    torch.manual_seed(0)
    coarse = build_transfer_net("liver_coarse", "resnet10", 2).to(dev)
    fine = build_transfer_net("liver_fine", "resnet10", 2, {"aspp_rates": defaults.aspp_rates}).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base_rss = peak_rss_gib()
    ForcedRoi = forced_liver_segmenter()
    seg = ForcedRoi(coarse, fine, coarse_shape=defaults.coarse_shape, patch=(patch,) * 3,
                    spacing=recipe["target_spacing"], margin_mm=sum(defaults.roi_margin_mm) / 2,
                    overlap=defaults.overlap, batch=batch, device=dev, amp=amp)
    seg.timings = {}
    fine_probs = seg.fine.probs

    def timed_probs(image, box=None):
        t = time.perf_counter()
        out = fine_probs(image, box)
        seg.timings["fine"] = time.perf_counter() - t
        seg.timings["roi"] = box
        return out

    seg.fine.probs = timed_probs
    total, cpu0 = time.perf_counter(), time.process_time()
    with Timer() as t_pre:
        image, attrs = preprocess_scan(scan, recipe)
    with Timer() as t_seg:
        label = seg(image)
    with Timer() as t_paste:
        mask = to_original_grid(label, attrs)
    with Timer() as t_write:
        if write_to:
            sitk.WriteImage(mask, write_to)
    wall = time.perf_counter() - total
    cpu = time.process_time()
    (lo, hi) = seg.timings["roi"]
    roi = [b - a for a, b in zip(lo, hi)]
    from model.evaluation.inference import tile_starts

    tiles = math.prod(len(tile_starts(max(s, patch), patch, defaults.overlap)) for s in roi)
    out = {"patch": patch, "device": device, "amp": amp, "threads": threads, "stored_shape": list(image.shape),
           "roi": roi, "roi_fraction": [r / s for r, s in zip(roi, image.shape)], "tiles": tiles,
           "preprocess_s": t_pre.s, "coarse_s": seg.timings.get("coarse", 0.0), "fine_s": seg.timings["fine"],
           "segment_s": t_seg.s, "paste_s": t_paste.s, "write_s": t_write.s, "wall_s": wall, "cpu_s": cpu - cpu0,
           "mask_voxels": int(sitk.GetArrayViewFromImage(mask).astype(bool).sum()),
           "base_rss_gib": base_rss, "peak_rss_gib": peak_rss_gib()}
    if dev.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def lits_recipe(stores: dict[str, Any]) -> dict[str, Any]:
    from catalog import load_catalog, select
    from volume.preprocess import recipe_from_store

    rows = select(load_catalog(stores["lits"]), split="train", labelled=True)
    return recipe_from_store(stores["lits"], str(rows["store_path"].iloc[0]))


def section_inference(work: Path, stores: dict[str, Any], quick: bool) -> None:
    print("## 3. Liver inference on a 512×512×200 CT (CPU, 2 threads)\n")
    with Timer() as t:
        scan = write_ct(work / "ct512")
    recipe = lits_recipe(stores)
    (work / "recipe.json").write_text(json.dumps(recipe))
    print(f"CT: {CT_SHAPE[2]}×{CT_SHAPE[1]}×{CT_SHAPE[0]} int16 HU, spacing {CT_SPACING[2]}×{CT_SPACING[1]}×"
          f"{CT_SPACING[0]} mm (x, y, z), liver ellipsoid over 60 % of each axis, -2048 outside a circular FOV "
          f"(written in {t.s:.1f} s). Recipe of the LiTS store: target spacing (z, y, x) {recipe['target_spacing']} "
          f"mm, window {recipe['ct_window']} HU, {recipe['dtype']}. ResNet-10 coarse (64×128×128) + fine "
          "(DenseASPP) networks with random weights; the coarse output is replaced by the true liver ellipsoid "
          "(see the docstring); ROI margin 15 mm, overlap 0.25, batch 2. One fresh process per row; peak RSS is "
          "that process's VmHWM (imports and networks included; not `ru_maxrss`, which Linux carries over from "
          "the parent across fork + exec).\n", flush=True)
    rows = []
    for patch in ((64,) if quick else (64, 96)):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--infer-child",
               json.dumps({"scan": str(scan), "recipe": str(work / "recipe.json"), "patch": patch, "device": "cpu",
                           "amp": False, "threads": 2, "write_to": str(work / "ct512" / f"mask_p{patch}.nii.gz")})]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"patch {patch}: the child failed:\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ok = r["wall_s"] < 60 and r["peak_rss_gib"] < 4
        rows.append([f"{patch}³", "×".join(map(str, r["stored_shape"])),
                     "×".join(map(str, r["roi"])) + f" ({', '.join(f'{100 * f:.0f}%' for f in r['roi_fraction'])})",
                     r["tiles"], f"{r['preprocess_s']:.1f}", f"{r['coarse_s']:.1f}", f"{r['fine_s']:.1f}",
                     f"{r['segment_s'] - r['coarse_s'] - r['fine_s']:.1f}", f"{r['paste_s']:.1f}",
                     f"{r['write_s']:.1f}", f"**{r['wall_s']:.1f}**", f"{r['cpu_s']:.1f}", f"{r['base_rss_gib']:.2f}",
                     f"**{r['peak_rss_gib']:.2f}**", "yes" if ok else "**no**"])
        print(f"  patch {patch}: {r['wall_s']:.1f} s, peak {r['peak_rss_gib']:.2f} GiB", flush=True)
    print()
    print(md_table(["fine patch", "stored grid (z×y×x)", "ROI (z×y×x, share of axis)", "tiles", "preprocess (s)",
                    "coarse (s)", "fine (s)", "largest comp. etc. (s)", "paste back (s)", "write .nii.gz (s)",
                    "wall (s)", "CPU (s)", "RSS before (GiB)", "peak RSS (GiB)",
                    "< 60 s and < 4 GiB"], rows, "llllrrrrrrrrrrl"))
    print(f"\nload average: {os.getloadavg()[0]:.1f}\n", flush=True)


# ------------------------------------------------------------------------------------------------- 4. CUDA
def stepper_rate(kind: str, shape: tuple[int, int, int], batch: int, device, amp: bool, steps: int,
                 warmup: int) -> dict[str, float]:
    """Median s/step of ``FinetuneStepper`` on synthetic tensors (augmentation on where training uses it)."""
    import torch

    from model.nets.transfer import build_transfer_net
    from model.tasks.base import get_task
    from model.training.finetune_data import make_augment
    from model.training.finetune_step import FinetuneStepper
    from model.training.loop import make_optimizer, make_scheduler

    task = get_task("liver" if kind.startswith("liver") else kind)
    stage = kind.split("_")[1] if task.name == "liver" else "main"
    sized = {"patch": shape} if hasattr(task.config_type, "patch") else {}
    cfg = task.config(store="-", out="-", stage=stage, batch=batch, steps=steps + warmup, **sized)
    torch.manual_seed(0)
    net = build_transfer_net(kind, "resnet10", 2, task.net_options(cfg, 1))
    opt_cfg = cfg.replace(lr=cfg.effective_lr)
    opt = make_optimizer(net.parameters(), opt_cfg)
    augment = make_augment(cfg, (1.0, 1.0, 1.0)) if kind in ("liver_fine", "lung") else None
    stepper = FinetuneStepper(net, opt, make_scheduler(opt, opt_cfg), loss="ce", device=device, amp=amp,
                              augment=augment)
    x = torch.randn(batch, 1, *shape)
    y = (x[:, 0] > 0.5).long() if net.segmentation else torch.randint(0, 2, (batch,))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        stepper(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"s_per_step": s, "steps_per_s": 1 / s, "peak_gib": peak}


def section_cuda(work: Path, stores: dict[str, Any], dry_run: bool = False) -> None:
    import torch

    device = torch.device("cpu" if dry_run else "cuda")
    if dry_run:
        name = "CPU (dry run of the CUDA section with tiny sizes)"
        configs = [("liver_coarse", (16, 32, 32), 2), ("liver_fine", (32, 32, 32), 2), ("lung", (32, 32, 32), 2),
                   ("nodule", (48, 48, 48), 2)]
        steps, warmup, patches = 1, 1, (32,)
    else:
        name = torch.cuda.get_device_name(device)
        configs = [("liver_coarse", (64, 128, 128), 2), ("liver_fine", (64, 64, 64), 2),
                   ("liver_fine", (128, 128, 128), 2), ("lung", (64, 64, 64), 2), ("lung", (128, 128, 128), 2),
                   ("nodule", (48, 48, 48), 2), ("nodule", (48, 48, 48), 16)]
        steps, warmup, patches = 20, 5, (64, 96, 128)
    print(f"## 4. CUDA: {name}\n")
    print(f"torch {torch.__version__}; ResNet-10, synthetic tensors, the real FinetuneStepper (Adam, "
          f"cross-entropy, rotation + translation on the device for liver fine and lung, channels_last_3d on "
          f"CUDA); median of {steps} steps after {warmup} warm-up.\n", flush=True)
    def precisions(kind: str) -> tuple[str, ...]:
        # a dry run only checks the code paths: bf16 on the CPU is slow, so once
        return ("fp32", "bf16") if not dry_run or kind == "liver_coarse" else ("fp32",)

    rows = []
    for kind, shape, batch in configs:
        for prec in precisions(kind):
            try:
                r = stepper_rate(kind, shape, batch, device, prec == "bf16", steps, warmup)
            except torch.OutOfMemoryError:
                rows.append([kind, "×".join(map(str, shape)), batch, prec, "out of memory", "", "", ""])
                torch.cuda.empty_cache()
                continue
            rows.append([kind, "×".join(map(str, shape)), batch, prec, f"{r['s_per_step']:.4f}",
                         f"{r['steps_per_s']:.2f}", f"{r['steps_per_s'] * batch:.1f}", fmt(r["peak_gib"], ".2f")])
            print(f"  {kind} {shape} b{batch} {prec}: {r['steps_per_s']:.2f} steps/s", flush=True)
    print()
    print(md_table(["network", "input (z×y×x)", "batch", "precision", "s/step", "steps/s", "samples/s",
                    "peak GPU mem (GiB)"], rows, "llrlrrrr"))

    scan = write_ct(work / ("ct_dry" if dry_run else "ct512"), shape=(40, 96, 96) if dry_run else CT_SHAPE)
    recipe = lits_recipe(stores)
    rows = []
    for patch in patches:
        for prec in precisions("liver_fine"):
            try:
                r = liver_inference(str(scan), recipe, patch, str(device), prec == "bf16",
                                    torch.get_num_threads(), None, batch=2 if dry_run else 4)
            except torch.OutOfMemoryError:
                rows.append([f"{patch}³", prec, "out of memory", "", "", "", "", ""])
                torch.cuda.empty_cache()
                continue
            rows.append([f"{patch}³", prec, r["tiles"], f"{r['preprocess_s']:.2f}", f"{r['coarse_s']:.2f}",
                         f"{r['fine_s']:.2f}", f"{r['wall_s']:.2f}", fmt(r.get("peak_gpu_gib"), ".2f")])
            print(f"  inference patch {patch} {prec}: {r['wall_s']:.2f} s", flush=True)
    print(f"\nLiver inference on the {'dry-run' if dry_run else '512×512×200'} CT (as in section 3, batch "
          f"{2 if dry_run else 4} tiles; preprocessing and paste-back stay on the CPU; the first row includes "
          "CUDA warm-up):\n")
    print(md_table(["fine patch", "precision", "tiles", "preprocess (s)", "coarse (s)", "fine (s)", "wall (s)",
                    "peak GPU mem (GiB)"], rows, "llrrrrrr"))
    print(flush=True)


# ------------------------------------------------------------------------ 5. seg on the real hippocampus scans
HIPPO = "Task04_Hippocampus"


def real_msd_root() -> Path | None:
    """The folder holding the real ``Task04_Hippocampus`` (tests/data/real/msd, else ../shared/data/real/msd)."""
    for root in (ROOT / "tests" / "data" / "real", ROOT.parent / "shared" / "data" / "real"):
        if (root / "msd" / HIPPO / "dataset.json").is_file():
            return root / "msd"
    return None


def seg_curve(run: Path) -> dict[int, float]:
    """Step -> val metric (mean foreground Dice) of a seg run's ``metrics.jsonl``."""
    from runlog.records import read_metrics

    return {int(r["step"]): float(r["metric"]) for r in read_metrics(run, "val")
            if isinstance(r.get("metric"), (int, float))}


def section_seg_real(work: Path, quick: bool, steps: int | None, seeds: list[int]) -> None:
    import torch

    from model.api import evaluate, finetune
    from model.training.config import TrainConfig
    from model.training.finetune_config import paper_lr
    from model.training.pretrain import pretrain
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.report import build_report
    from pipeline.sample import write_all
    from pipeline.sources.msd import TASKS_3DSEG8, scan_msd

    print("## 5. `finetune seg` on the real hippocampus scans: scratch vs. an encoder pretrained on other domains\n")
    msd = real_msd_root()
    if msd is None:
        print(f"No real {HIPPO} under tests/data/real/msd or ../shared/data/real/msd: skipped.\n")
        return
    with Timer() as t:
        if not (work / "raw" / "msd" / "SAMPLE.json").is_file():
            write_all(work / "raw", seed=0, size="tiny", only="msd")
        found, _ = scan_msd(msd, [HIPPO])
        hippo = str(work / "hippo_real_store")
        r = build(found, hippo, PrepConfig(), workers=0, progress=False, log=quiet)
        if not r.ok:
            raise SystemExit(r.summary())
        others = [task for task in TASKS_3DSEG8 if task != HIPPO]
        found, _ = scan_msd(work / "raw" / "msd", others)
        pre_store = str(work / "store_no_hippocampus")
        r = build(found, pre_store, PrepConfig(), workers=0, progress=False, log=quiet)
        if not r.ok:
            raise SystemExit(r.summary())
    from catalog import load_catalog

    domains = sorted(load_catalog(pre_store)["domain"].unique())
    print(f"Real scans: {msd / HIPPO} ({split_counts(hippo)}; MR, 3 classes). Pretraining store: the 3DSeg-8 "
          f"sample built without {HIPPO} ({len(domains)} domains: {', '.join(domains)}; {split_counts(pre_store)}), "
          f"so the encoder never saw a hippocampus scan, real or synthetic. Both stores built in {t.s:.1f} s.\n",
          flush=True)

    runs_dir = work / "runs_seg"
    shutil.rmtree(runs_dir, ignore_errors=True)
    pre_steps = 40 if quick else 150
    cfg = TrainConfig(store=pre_store, out=str(runs_dir / "pretrain_no_hippocampus"), encoder="resnet10",
                      steps=pre_steps, batch=2, patch=(32, 32, 32), workers=0, val_every=0, ckpt_every=0,
                      device="cpu", seed=0)
    with Timer() as t:
        pre = pretrain(cfg, progress=False, log=quiet)
    print(f"Pretraining: ResNet-10, {pre_steps} steps of batch 2 at 32³: {t.s:.1f} s wall, {t.cpu:.1f} s CPU "
          f"(load average {os.getloadavg()[0]:.1f})\n", flush=True)

    steps = steps or (60 if quick else 200)
    every = max(1, steps // 10)
    opts = {"steps": steps, "batch": 2, "patch": (32, 32, 32), "decoder": "unet", "val_every": every,
            "ckpt_every": 0, "workers": 0, "device": "cpu", "log_every": 10}
    curves: dict[tuple[str, int], dict[int, float]] = {}
    rows, report_runs = [], []
    for seed in seeds:
        for init in ("scratch", str(pre.run_dir)):
            label = "scratch" if init == "scratch" else "Med3D (other domains)"
            run = runs_dir / f"hippo_{'scratch' if init == 'scratch' else 'med3d'}_seed{seed}"
            with Timer() as tt:
                finetune("seg", hippo, str(run), init=init, seed=seed, progress=False, log=quiet, **opts)
            with Timer() as te:
                summary = evaluate(run, hippo, progress=False, log=quiet)
            curves[(label, seed)] = seg_curve(run)
            lr = json.loads((run / "config.json").read_text()).get("lr") or paper_lr(init)
            per_class = ", ".join(f"{name} {fmt(summary.get(f'dice_{name}_mean'))}" for name in summary["classes"])
            hd95 = ", ".join(fmt(summary.get(f"hd95_mm_{name}_mean"), ".1f") for name in summary["classes"])
            rows.append([label, seed, fmt(lr, "g"), f"{tt.s:.0f}", f"{tt.s / steps:.3f}",
                         f"{fmt(summary['metric'])} ({per_class})", hd95,
                         f"{summary['split']} ({summary['labelled_cases']})", f"{te.s:.1f}"])
            if seed == seeds[0]:
                report_runs.append(str(run))
            print(f"  {run.name}: {tt.s:.1f} s train, {te.s:.1f} s evaluate", flush=True)

    all_steps = sorted({s for c in curves.values() for s in c})
    header = ["step", *[f"{label}, seed {seed}" for label, seed in curves]]
    table = [[s, *[fmt(c.get(s)) for c in curves.values()]] for s in all_steps]
    print(f"\nMean foreground Dice (anterior, posterior) on the val split every {every} steps "
          f"(`metrics.jsonl`), ResNet-10 + U-Net decoder, patch 32³, batch 2, CE + Dice, a third of the patches "
          f"on the hippocampus; Adam at each init's default lr:\n")
    print(md_table(header, table, "r" * len(header)))
    print("\n`evaluate` after the last step (on the source files' grid):\n")
    print(md_table(["init", "seed", "lr", "train wall (s)", "wall s/step", "Dice: mean (per class)",
                    "HD95 mm per class", "split (cases)", "evaluate (s)"], rows, "lrrrrllll"))
    with Timer() as t:
        rep = build_report(hippo, work / "report_hippo", runs=report_runs)
    print(f"\nReport page with both runs' curves: {rep.index} "
          f"({t.s:.1f} s); `med3d-prep report {hippo} OUT --runs {' '.join(report_runs)}` draws the same page.")
    print(f"CPU, {torch.get_num_threads()} torch threads; load average at the end: {os.getloadavg()[0]:.1f}\n",
          flush=True)


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, patch 64 only for inference (~ minutes)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (kept); default a temp folder")
    ap.add_argument("--sections", default="1,2,3,4,5", help="which sections to run, e.g. 1,3")
    ap.add_argument("--seg-steps", type=int, default=None, help="section 5: fine-tuning steps (200; quick 60)")
    ap.add_argument("--seg-seeds", default="0", help="section 5: comma-separated seeds, one run pair each")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for sections 1, 2 and 4 (default: torch's; section 3 always uses 2)")
    ap.add_argument("--lidc-patients", type=int, default=None, help="synthetic LIDC cohort size (8; quick 6)")
    ap.add_argument("--gpu-dry-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--infer-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.infer_child:  # section 3's fresh process: one configuration, a JSON line on stdout
        spec = json.loads(args.infer_child)
        recipe = json.loads(Path(spec.pop("recipe")).read_text())
        print(json.dumps(liver_inference(spec.pop("scan"), recipe, **spec)))
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    work = args.out or Path(tempfile.mkdtemp(prefix="med3d-transfer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    wait_stores: dict[str, Any] | None = None
    print(f"# Transfer benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n", flush=True)
    try:
        stores: dict[str, Any] = {}
        if sections & {1, 2, 3, 4}:
            stores = build_stores(work, lidc_patients=args.lidc_patients or (6 if args.quick else 8))
        if 1 in sections:
            t = time.perf_counter()
            section_transfer(work, stores, args.quick)
            print(f"section 1: {time.perf_counter() - t:.0f} s\n", flush=True)
        if 2 in sections:
            t = time.perf_counter()
            wait_stores = dict(stores)
            if not args.quick:
                bench = build_bench_stores(work)
                print(md_table(["full-size stores for section 2", "cases per split", "wall (s)"], bench["rows"],
                               "llr") + "\n")
                wait_stores.update(lits=bench["lits"], visceral=bench["visceral"])
            section_data_wait(work, wait_stores, args.quick)
            print(f"section 2: {time.perf_counter() - t:.0f} s\n", flush=True)
        if 3 in sections:
            t = time.perf_counter()
            section_inference(work, stores, args.quick)
            print(f"section 3: {time.perf_counter() - t:.0f} s\n", flush=True)
        if 4 in sections:
            if torch.cuda.is_available() or args.gpu_dry_run:
                section_cuda(work, stores, dry_run=not torch.cuda.is_available())
                if torch.cuda.is_available():  # the loader against GPU-speed steps (bf16 autocast, the default)
                    try:
                        section_data_wait(work, wait_stores or stores, args.quick, device="cuda",
                                          title="### Fine-tune data wait on CUDA (2 loader workers)")
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        print(f"data wait on CUDA failed: {type(exc).__name__}: {exc}\n")
            else:
                print("## 4. CUDA\n\nNo CUDA device (torch.cuda.is_available() is False): skipped.\n")
        if 5 in sections:
            t = time.perf_counter()
            section_seg_real(work, args.quick, args.seg_steps, [int(s) for s in args.seg_seeds.split(",") if s])
            print(f"section 5: {time.perf_counter() - t:.0f} s\n", flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total: {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
