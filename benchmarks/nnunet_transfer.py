"""nnU-Net fine-tuning from a Med3D encoder against nnU-Net from scratch, on the real MSD hippocampus (issue 21).

Both arms are nnU-Net v2 itself (``nnUNetv2_train``, its ResEnc M plans, its data loader, augmentation, loss,
SGD and poly schedule), trained for the same fixed budget on the same 140 training cases; they differ only in the
network's starting weights:

- ``scratch``: nnU-Net's own initialisation;
- ``med3d``: ``-pretrained_weights`` = ``med3d-train export RUN --format nnunet --plans PLANS``, where RUN is
  Med3D multi-branch pretraining of the encoder those plans build (``--encoder-from-plans``) on the two real
  non-hippocampus domains of the study (80 left-atrium MR, the abdominal CT); the decoder as nnU-Net initialises it.

Splits are the label-efficiency study's (``--holdout 50,10``, :func:`model.study.subsets.holdout`): nnU-Net plans
and preprocesses the 150 train and val cases (the 50 test cases sit in ``imagesTs`` only), its fold 0 trains on the 140 train cases and validates (its own logging, nothing chosen) on the 10 val cases; Dice is
measured here on the 50 test cases, predicted by ``nnUNetv2_predict`` from ``checkpoint_final.pth`` (its default
mirroring test-time augmentation), against the original label files.

The fixed budget: nnU-Net's 1000 epochs of 250 iterations at batch 58 (its ResEnc M plan for this dataset) take
days on 2 CPU cores (3.5 s an iteration at batch 4 here). The benchmark trains ``--epochs`` x ``--iters`` at batch
``--batch`` (default 12 x 25 at 4: 300 iterations, ~20 min a run) with a one-file trainer
(``nnUNetTrainer_Med3DBudget``, written into the nnU-Net install; nnU-Net finds trainers there) and a copy of the
plans with that batch size (``nnUNetResEncUNetMCPUPlans``, the same preprocessed data). The full recipe is printed.

Resumable: every step checks what is there (raw folder, plans, pretraining checkpoint, export, each run's
``checkpoint_final.pth``, each prediction) and does only what is missing. ``--quick``: 2 x 5 iterations, 20
pretraining steps, 5 test cases (a smoke run of the whole path, minutes).

nnU-Net lives in its own virtual environment (``--venv``, default ``/work/bench-venv``: ``pip install nnunetv2``
with ``torch==2.13.0`` CPU already there). nnU-Net imports every trainer module when it looks one up; its Primus
modules import ``timm``, which needs a torchvision built for the installed torch (none for the CPU 2.13 here): when
``timm`` cannot be imported a stand-in package is written (Primus is not used).

Usage::

    python benchmarks/nnunet_transfer.py                 # data/nnunet_bench, results in its summary.md
    python benchmarks/nnunet_transfer.py --quick
    python benchmarks/nnunet_transfer.py --repeats 2     # a second run of each arm (nnU-Net is not seeded)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_data import BIN, REAL, ROOT, build_stores  # noqa: E402

TASK = "Dataset004_Hippocampus"
PLANS = "nnUNetResEncUNetMPlans"
CPU_PLANS = "nnUNetResEncUNetMCPUPlans"
TRAINER = "nnUNetTrainer_Med3DBudget"
CLASSES = {1: "Anterior", 2: "Posterior"}

TRAINER_SOURCE = '''import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Med3DBudget(nnUNetTrainer):
    """nnU-Net's trainer at a fixed short budget (written by med3d's benchmarks/nnunet_transfer.py): MED3D_NNUNET_EPOCHS
    epochs of MED3D_NNUNET_ITERS iterations and MED3D_NNUNET_VAL_ITERS validation iterations; all else nnU-Net's."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("MED3D_NNUNET_EPOCHS", 12))
        self.num_iterations_per_epoch = int(os.environ.get("MED3D_NNUNET_ITERS", 25))
        self.num_val_iterations_per_epoch = int(os.environ.get("MED3D_NNUNET_VAL_ITERS", 5))
'''

TIMM_STANDIN = '''"""Stand-in written by med3d's benchmarks/nnunet_transfer.py: nnU-Net imports every trainer module when it looks
one up, and its Primus/Eva modules import timm, which needs a torchvision built for the installed torch. Nothing here
runs; building a Primus network raises."""


def __getattr__(name):
    return _Missing


class _Missing:
    def __init__(self, *args, **kwargs):
        raise ImportError("timm is a stand-in in this environment (benchmarks/nnunet_transfer.py)")
'''


def sh(cmd: list, env: dict | None = None, log: Path | None = None) -> float:
    """Run ``cmd`` (printed first; output to ``log`` when given), raise on failure; its wall time in seconds."""
    print("$", " ".join(map(str, cmd)), flush=True)
    t0 = time.perf_counter()
    if log is None:
        subprocess.run([str(c) for c in cmd], check=True, env=env)
    else:
        with open(log, "a") as fh:
            res = subprocess.run([str(c) for c in cmd], env=env, stdout=fh, stderr=subprocess.STDOUT)
        if res.returncode:
            raise SystemExit(f"{cmd[0]} failed (exit {res.returncode}); see {log}")
    return time.perf_counter() - t0


def prepare_venv(venv: Path) -> Path:
    """nnU-Net's site-packages in ``venv``, with the budget trainer (and the timm stand-in where timm is missing)."""
    py = venv / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{py}: nnunetv2 does not import ({out.stderr.strip().splitlines()[-1:]}); create it: "
                         f"python -m venv {venv} && {venv}/bin/pip install torch==2.13.0 nnunetv2")
    pkg = Path(out.stdout.strip())
    trainer = pkg / "training" / "nnUNetTrainer" / "variants" / "training_length" / f"{TRAINER}.py"
    if not trainer.is_file() or trainer.read_text() != TRAINER_SOURCE:
        trainer.write_text(TRAINER_SOURCE)
    if subprocess.run([str(py), "-c", "import timm.layers"], capture_output=True).returncode:
        stub = pkg.parent / "timm"
        (stub / "models").mkdir(parents=True, exist_ok=True)
        for f in ("__init__.py", "layers.py", "models/__init__.py", "models/eva.py"):
            (stub / f).write_text(TIMM_STANDIN)
    return pkg


def study_split(work: Path) -> dict[str, str]:
    """``{case: train | val | test}`` of the hippocampus study (``--holdout 50,10``), case = MSD file stem."""
    from model.study.grid import StudyGrid, plan_study

    stores = build_stores(work)
    grid = StudyGrid(task="seg", store=str(stores["hippo"]), inits=(("scratch", "scratch"),), fractions=(1.0,),
                     seeds=(0,), holdout=(50, 10))
    cases = plan_study(grid).cases
    return {str(c).split("/")[-1]: str(s) for c, s in zip(cases["case_id"], cases["split"])}


def nnunet_folders(root: Path, split: dict[str, str], batch: int, venv: Path, env: dict) -> Path:
    """Raw dataset (links to the shared files), ResEnc M plans and preprocessing, the CPU-batch plans copy and
    the study's fold 0; returns the plans file Med3D exports against."""
    src = REAL / "msd_full" / "Task04_Hippocampus"
    raw = root / "raw" / TASK
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for case, where in split.items():  # test cases only in imagesTs: nnU-Net plans without them
        sub = "Ts" if where == "test" else "Tr"
        pairs = [(src / "imagesTr" / f"{case}.nii.gz", raw / f"images{sub}" / f"{case}_0000.nii.gz"),
                 (src / "labelsTr" / f"{case}.nii.gz", raw / f"labels{sub}" / f"{case}.nii.gz")]
        for target, link in pairs:
            if not link.exists():
                link.symlink_to(target)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, **{v: k for k, v in CLASSES.items()}},
        "numTraining": sum(s != "test" for s in split.values()), "file_ending": ".nii.gz"}, indent=1))
    pre = root / "pre" / TASK
    if not (pre / f"{PLANS}.json").is_file() or not (pre / "nnUNetPlans_3d_fullres").is_dir():
        sh([venv / "bin" / "nnUNetv2_plan_and_preprocess", "-d", "4", "-pl", "nnUNetPlannerResEncM", "-c",
            "3d_fullres", "-np", "2"], env=env, log=root / "nnunet_prep.log")
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    plans["plans_name"] = CPU_PLANS
    plans["configurations"]["3d_fullres"]["batch_size"] = int(batch)
    (pre / f"{CPU_PLANS}.json").write_text(json.dumps(plans, indent=1))
    fold0 = {"train": sorted(c for c, s in split.items() if s == "train"),
             "val": sorted(c for c, s in split.items() if s == "val")}
    (pre / "splits_final.json").write_text(json.dumps([fold0], indent=1))
    return pre / f"{CPU_PLANS}.json"


def pretrain_and_export(work: Path, root: Path, plans: Path, steps: int) -> Path:
    """Med3D pretraining of the plans' encoder on the left-atrium MR and abdominal CT stores (resumed when a run
    is there), then the nnU-Net export."""
    import torch

    stores = build_stores(work)
    run = root / f"pretrain_med3d_{steps}"
    ckpt = run / "checkpoint.pt"
    done = ckpt.is_file() and int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["step"]) >= steps
    if not done:
        sh([BIN / "med3d-train", "pretrain", stores["la"], stores["ct"], "--out", run, "--encoder-from-plans", plans,
            "--steps", steps, "--batch", "4", "--patch", "48", "--device", "cpu", "--workers", "1",
            "--val-every", "0", "--ckpt-every", "50", "--no-progress", *(["--resume"] if ckpt.is_file() else [])])
    out = root / f"med3d_encoder_{steps}.pth"
    if not out.is_file() or out.stat().st_mtime < ckpt.stat().st_mtime:
        sh([BIN / "med3d-train", "export", run, "--format", "nnunet", "--plans", plans, out])
    return out


def train_and_predict(root: Path, arm: str, repeat: int, weights: Path | None, venv: Path, env: dict,
                      test_cases: list[str]) -> Path:
    """One nnU-Net run (resumed from its latest checkpoint when interrupted) and its test predictions."""
    results = root / "results" / f"{arm}_r{repeat}"
    env = {**env, "nnUNet_results": str(results)}
    fold = results / TASK / f"{TRAINER}__{CPU_PLANS}__3d_fullres" / "fold_0"
    log = root / f"train_{arm}_r{repeat}.log"
    if not (fold / "checkpoint_final.pth").is_file():
        cmd = [venv / "bin" / "nnUNetv2_train", "4", "3d_fullres", "0", "-p", CPU_PLANS, "-tr", TRAINER,
               "-device", "cpu"]
        if (fold / "checkpoint_latest.pth").is_file():
            cmd.append("--c")
        elif weights is not None:
            cmd += ["-pretrained_weights", weights]
        t = sh(cmd, env=env, log=log)
        (results / "train_seconds.txt").write_text(f"{t:.0f}\n")
    pred = root / "predictions" / f"{arm}_r{repeat}"
    missing = [c for c in test_cases if not (pred / f"{c}.nii.gz").is_file()]
    if missing:
        inp = root / "predict_input"
        shutil.rmtree(inp, ignore_errors=True)
        inp.mkdir(parents=True)
        for c in missing:
            (inp / f"{c}_0000.nii.gz").symlink_to(root / "raw" / TASK / "imagesTs" / f"{c}_0000.nii.gz")
        sh([venv / "bin" / "nnUNetv2_predict", "-i", inp, "-o", pred, "-d", "4", "-c", "3d_fullres", "-p", CPU_PLANS,
            "-tr", TRAINER, "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1"],
           env=env, log=log)
    return pred


def dice_table(root: Path, pred: Path, test_cases: list[str]) -> dict[str, dict[str, float]]:
    """{case: {class name: Dice}} of the predictions against the original label files (empty-empty = 1)."""
    import numpy as np
    import SimpleITK as sitk

    out = {}
    for c in test_cases:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "raw" / TASK / "labelsTs" / f"{c}.nii.gz")))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{c}.nii.gz")))
        if ref.shape != seg.shape:
            raise SystemExit(f"{pred / c}.nii.gz: shape {seg.shape}, the label's {ref.shape}")
        row = {}
        for value, name in CLASSES.items():
            a, b = ref == value, seg == value
            denom = int(a.sum()) + int(b.sum())
            row[name] = 1.0 if denom == 0 else 2.0 * float(np.logical_and(a, b).sum()) / denom
        out[c] = row
    return out


def summarise(root: Path, dice: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace, wall: float,
              pretrain_steps: int) -> str:
    """The markdown table: mean Dice per arm and run, with the paired per-case difference's t interval."""
    import numpy as np
    from scipy import stats

    def mean_dice(table: dict[str, dict[str, float]]) -> dict[str, float]:
        return {c: float(np.mean(list(v.values()))) for c, v in table.items()}

    lines = ["| arm | run | test cases | Dice mean | Dice Anterior | Dice Posterior | train wall |",
             "|---|---|---|---|---|---|---|"]
    for run, table in sorted(dice.items()):
        arm, rep = run.rsplit("_r", 1)
        per = mean_dice(table)
        ant = np.mean([v["Anterior"] for v in table.values()])
        post = np.mean([v["Posterior"] for v in table.values()])
        secs = root / "results" / run / "train_seconds.txt"
        wall_s = f"{float(secs.read_text()) / 60:.1f} min" if secs.is_file() else "-"
        lines.append(f"| {arm} | {rep} | {len(per)} | {np.mean(list(per.values())):.3f} | {ant:.3f} | {post:.3f} | "
                     f"{wall_s} |")
    lines.append("")
    for rep in range(args.repeats):
        a, b = dice.get(f"med3d_r{rep}"), dice.get(f"scratch_r{rep}")
        if not a or not b:
            continue
        pa, pb = mean_dice(a), mean_dice(b)
        diff = np.array([pa[c] - pb[c] for c in pa])
        lo, hi = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
        lines.append(f"Run {rep}: med3d - scratch = {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] (paired over the "
                     f"{len(diff)} test cases, Student t); med3d higher on {int((diff > 0).sum())} of {len(diff)}.")
    lines += ["", f"Budget: {args.epochs} epochs x {args.iters} iterations at batch {args.batch} (patch 40x56x40), "
              f"nnU-Net 2.8.1 on CPU; Med3D encoder pretrained {pretrain_steps} steps (batch 4, 48^3) on left-atrium "
              f"MR + abdominal CT. Whole benchmark {wall / 60:.1f} min wall here, load average "
              + ", ".join(f"{v:.1f}" for v in os.getloadavg()) + ".",
              "Full nnU-Net recipe (days on 2 CPU cores): nnUNetv2_train 4 3d_fullres 0 -p nnUNetResEncUNetMPlans "
              "[-pretrained_weights med3d_encoder.pth] (1000 epochs x 250 iterations at batch 58)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "study", help="the study's stores (built if absent)")
    ap.add_argument("--out", type=Path, default=None, help="default data/nnunet_bench (…_quick with --quick)")
    ap.add_argument("--venv", type=Path, default=Path("/work/bench-venv"), help="the environment with nnunetv2")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.iters, args.pretrain_steps, args.repeats = 2, 5, 20, 1
    root = (args.out or ROOT / "data" / ("nnunet_bench_quick" if args.quick else "nnunet_bench")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare_venv(args.venv)
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "2", "MED3D_NNUNET_EPOCHS": str(args.epochs),
           "MED3D_NNUNET_ITERS": str(args.iters), "MED3D_NNUNET_VAL_ITERS": "2" if args.quick else "5"}
    split = study_split(args.work)
    plans = nnunet_folders(root, split, args.batch, args.venv, env)
    test_cases = sorted(c for c, s in split.items() if s == "test")[: 5 if args.quick else None]
    weights = pretrain_and_export(args.work, root, plans, args.pretrain_steps)
    dice = {}
    for rep in range(args.repeats):
        for arm, w in (("scratch", None), ("med3d", weights)):
            pred = train_and_predict(root, arm, rep, w, args.venv, env, test_cases)
            dice[f"{arm}_r{rep}"] = dice_table(root, pred, test_cases)
    (root / "dice.json").write_text(json.dumps(dice, indent=1))
    table = summarise(root, dice, args, time.perf_counter() - t0, args.pretrain_steps)
    (root / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
