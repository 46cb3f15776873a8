"""Does the pretraining transfer? The label-efficiency studies of the README, on the real scans of
``../shared/data/real``, resumable (re-run the same command to finish), each printed with its command, wall time
and the machine's load.

    python benchmarks/study.py --sections b          # mini Med3D: pretrain on real MR + CT, study on hippocampus
    python benchmarks/study.py --sections a,c        # MedMNIST 3D from scratch; real-MR encoder vs scratch
    python benchmarks/study.py --quick               # every section, small, in minutes

b. Pretrain a ResNet-10 with the multi-branch scheme on the 80 left-atrium LGE-MRI volumes plus the abdominal CT
   (no hippocampus scan in either), then ``med3d-train study`` on the 200 MSD hippocampus cases: 50 test and 10
   val patients held out once, training fractions of the other 140 patients, seeds, inits scratch, that encoder
   and a control: the same recipe pretrained on the synthetic 3DSeg-8 sample (``med3d-prep sample``). A study
   started with fewer inits is extended by the re-run (its finished cells are kept).
a. MedMNIST v2 28³ (AdrenalMNIST3D, VesselMNIST3D) from scratch with ResNet-18 (the published recipe shortened to
   what 2 cores allow; the full recipe's command is printed), test AUC / ACC beside the published rows.
c. The classify study on AdrenalMNIST3D (28³ and 64³) with the real-MR encoder against scratch.

Work folder: ``data/study`` (``--work``). Everything a section writes is under it; nothing is deleted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_data import BIN, REAL, ROOT, build_stores  # noqa: E402

PUBLISHED_MEDMNIST = {  # Yang et al., Scientific Data 2023, Table (3D): test AUC / ACC
    ("adrenalmnist3d", "resnet18"): (0.827, 0.721), ("vesselmnist3d", "resnet18"): (0.874, 0.877),
    ("adrenalmnist3d", "resnet50"): (0.828, 0.745), ("vesselmnist3d", "resnet50"): (0.907, 0.918),
}


def sh(cmd: list[str]) -> float:
    """Run ``cmd`` (printed first), raise on failure; its wall time in seconds."""
    print("$", " ".join(map(str, cmd)), flush=True)
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True)
    return time.perf_counter() - t0


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def pretrain_real(work: Path, steps: int) -> Path:
    """The mini Med3D encoder: ResNet-10, multi-branch pretraining on the left-atrium MR and abdominal CT stores
    (resumed when a run is there)."""
    stores = build_stores(work)
    run = work / f"pretrain_real_mr_ct{'' if steps == 800 else f'_{steps}'}"
    ckpt = run / "checkpoint.pt"
    if ckpt.is_file():
        import torch

        if int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["step"]) >= steps:
            return run
    sh([BIN / "med3d-train", "pretrain", stores["la"], stores["ct"], "--out", run, "--depth", "10", "--steps", steps,
        "--batch", "4", "--patch", "48", "--device", "cpu", "--workers", "1", "--val-every", "400",
        "--ckpt-every", "100", "--val-max-cases", "3", "--no-progress", *(["--resume"] if ckpt.is_file() else [])])
    return run


def pretrain_sample(work: Path, steps: int) -> Path:
    """The control: the same ResNet-10 recipe pretrained on the miniature 3DSeg-8 sample (``med3d-prep sample``:
    synthetic volumes in the eight MSD layouts), every scan id of the real hippocampus store kept out."""
    raw, store = work / "sample_raw", work / "sample_3dseg8_store"
    if not (store / "catalog.parquet").is_file():
        sh([BIN / "med3d-prep", "sample", raw])
        sh([BIN / "med3d-prep", "build-3dseg8", raw / "msd", store, "--workers", "2", "--no-progress"])
    run = work / f"pretrain_sample_3dseg8{'' if steps == 800 else f'_{steps}'}"
    ckpt = run / "checkpoint.pt"
    if ckpt.is_file():
        import torch

        if int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["step"]) >= steps:
            return run
    sh([BIN / "med3d-train", "pretrain", store, "--out", run, "--depth", "10", "--steps", steps, "--batch", "4",
        "--patch", "48", "--device", "cpu", "--workers", "1", "--val-every", "400", "--ckpt-every", "100",
        "--val-max-cases", "3", "--no-progress", "--exclude", work / "hippo_store",
        *(["--resume"] if ckpt.is_file() else [])])
    return run


def section_b(work: Path, quick: bool) -> None:
    encoder = pretrain_real(work, 40 if quick else 800)
    control = pretrain_sample(work, 40 if quick else 800)
    out = work / ("study_hippocampus_quick" if quick else "study_hippocampus")
    grid = (["--fractions", "0.036,0.143", "--seeds", "0,1", "--holdout", "10,4", "--steps", "12", "--val-every", "6"]
            if quick else
            ["--fractions", "0.036,0.072,0.143,1", "--seeds", "0,1,2", "--holdout", "50,10", "--steps", "100",
             "--val-every", "25"])
    t = sh([BIN / "med3d-train", "study", work / "hippo_store", "--task", "seg", "--out", out, "--init", "scratch",
            "--init", f"real_mr_ct={encoder}", "--init", f"sample_3dseg8={control}", *grid, "--batch", "2",
            "--patch", "32", "--decoder", "unet",
            "--device", "cpu", "--workers", "0", "--ckpt-every", "25"])
    print(f"\nsection b: {t / 60:.1f} min wall, {load()}; table: {out}/summary.md\n", flush=True)


def medmnist_store(work: Path, name: str) -> Path:
    store = work / f"{name}_store"
    if not (store / "labels.csv").is_file():
        sh([BIN / "med3d-prep", "build-medmnist", REAL / "medmnist" / f"{name}.npz", store])
    return store


def section_a(work: Path, quick: bool) -> None:
    # ResNet-18 at 28³, batch 32, trains at ~5-9 samples/s on these 2 cores: the published 100 epochs (3,713 steps
    # on AdrenalMNIST3D) would take ~4 h per run; 60 steps (1.6 epochs) is what the session could afford.
    plan = {"adrenalmnist3d": "0,1,2", "vesselmnist3d": "0,1,2"}
    steps = "10" if quick else "60"
    for name, seeds in plan.items():
        store = medmnist_store(work, name)
        out = work / f"medmnist_{name}_resnet18_{steps}steps"
        t = sh([BIN / "med3d-train", "study", store, "--task", "classify", "--labels", store / "labels.csv",
                "--out", out, "--init", "scratch", "--fractions", "1", "--seeds", "0" if quick else seeds,
                "--depth", "18", "--shape", "28,28,28", "--batch", "32", "--lr", "1e-3", "--steps", steps,
                "--val-every", "20", "--ckpt-every", "20", "--device", "cpu", "--workers", "0", "--no-figures"])
        auc, acc = PUBLISHED_MEDMNIST[(name, "resnet18")]
        print(f"\nsection a, {name}: {t / 60:.1f} min wall, {load()}; published ResNet-18 (3D) test AUC {auc} / "
              f"ACC {acc}; ours: {out}/summary.md", flush=True)
    print("The published recipe (100 epochs of batch 32 = 3,713 steps on AdrenalMNIST3D, 4,172 on VesselMNIST3D, lr "
          "x0.1 at epochs 50 and 75, model chosen on val) is, per dataset and seed:\n  med3d-train finetune classify "
          "STORE --labels STORE/labels.csv --out RUN --depth 18 --shape 28,28,28 --batch 32 --lr 1e-3 --steps 3713 "
          "--val-every 37\n(our scheduler is poly decay, not the step decay; the last checkpoint is measured)\n")


def section_c(work: Path, quick: bool) -> None:
    encoder = pretrain_real(work, 40 if quick else 800)
    # A 64³ step costs ~10x a 28³ one here: at 64³ (MedMNIST+) one seed of the full training set, fewer steps.
    grids = {"adrenalmnist3d": ("28,28,28", "16", ["--fractions", "0.05,1", "--seeds", "0,1,2", "--steps", "60"]),
             "adrenalmnist3d_64": ("64,64,64", "8", ["--fractions", "1", "--seeds", "0", "--steps", "40"])}
    for name, (shape, batch, grid) in grids.items():
        store = medmnist_store(work, name)
        out = work / f"study_{name}{'_quick' if quick else ''}"
        if quick:
            grid = ["--fractions", "0.1,1", "--seeds", "0", "--steps", "10"]
        t = sh([BIN / "med3d-train", "study", store, "--task", "classify", "--labels", store / "labels.csv", "--out",
                out, "--init", "scratch", "--init", f"real_mr_ct={encoder}", *grid, "--shape", shape, "--batch", batch,
                "--val-every", "25", "--ckpt-every", "25", "--device", "cpu", "--workers", "0"])
        print(f"\nsection c, {name}: {t / 60:.1f} min wall, {load()}; table: {out}/summary.md\n", flush=True)
    print("More seeds at 64³: the same study command with --seeds 0,1,2 (a superset of the seeds extends a study)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="b,a,c", help="comma-separated: a, b, c")
    ap.add_argument("--quick", action="store_true", help="small grids and few steps: minutes, not hours")
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "study")
    args = ap.parse_args()
    if not REAL.is_dir():
        sys.exit(f"{REAL}: the real scans are not there (../shared/data/real beside the repository)")
    t0 = time.perf_counter()
    for s in args.sections.split(","):
        {"a": section_a, "b": section_b, "c": section_c}[s.strip()](args.work, args.quick)
    print(f"all sections: {(time.perf_counter() - t0) / 60:.1f} min, {load()}")


if __name__ == "__main__":
    main()
