"""``finetune seg`` on the real MSD hippocampus scans (tests/data/real/msd/Task04_Hippocampus: 4 MR cases, 3
classes): every init with both decoders, foreground oversampling, evaluate's per-class Dice/HD95/ASSD against
MedPy on the written files, predict on an nnU-Net imagesTs folder and on a reoriented copy, exact resume after
SIGKILL, and the refusals (a store of the wrong kind, a crafted case id)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import zarr
from click.testing import CliRunner

from model.evaluation.metrics import read_metrics
from model.task_api import TaskStoreError
from model.training.checkpoint import load_checkpoint
from model.api import finetune

from test_transfer import medicalnet_file, our_checkpoint  # noqa: F401  (module fixtures: the two init files)

TINY = {"steps": 2, "batch": 2, "patch": (16, 16, 16), "workers": 0, "device": "cpu", "ckpt_every": 0,
        "val_every": 0, "log_every": 1, "decoder_widths": (8, 8, 8)}
NAMES = ["Anterior", "Posterior"]


@pytest.fixture(scope="module")
def hippo(real_dir, tmp_path_factory) -> dict:
    """The four real cases built once with the pipeline's build API (train 3, val 1)."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("seg")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    result = build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False, log=lambda s: None)
    assert result.failed == []
    return {"store": store, "root": root, "task": real_dir / "msd" / "Task04_Hippocampus"}


@pytest.fixture(scope="module")
def seg_run(hippo) -> Path:
    run = hippo["root"] / "run"
    finetune("seg", hippo["store"], str(run), progress=False, log=lambda s: None, **TINY)
    return run


class ShiftedOracle:
    """A segmenter returning the stored multi-label map of the image it is given, rolled by ``shift`` voxels
    along x (so Dice, HD95 and ASSD are not trivially 1 and 0)."""

    def __init__(self, store: str, shift: int = 0) -> None:
        from catalog import load_catalog

        self.cases = []
        for path in load_catalog(store)["store_path"]:
            grp = zarr.open_group(store, path=path, mode="r")
            self.cases.append((grp["image"][0].astype(np.float32), grp["label"][...]))
        self.shift = shift

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for stored, label in self.cases:
            if stored.shape == image.shape and np.allclose(stored, image, atol=1e-3):
                return np.roll(label, self.shift, axis=2).astype(np.uint8)
        raise AssertionError(f"the oracle does not know this image {image.shape}")


@pytest.mark.parametrize("decoder", ["med3d", "unet"])
@pytest.mark.parametrize("init", ["scratch", "ours", "medicalnet"])
def test_seg_trains_from_every_init_with_both_decoders(init, decoder, hippo, medicalnet_file, our_checkpoint,
                                                       tmp_path):
    source = {"scratch": "scratch", "ours": our_checkpoint, "medicalnet": medicalnet_file}[init]
    run = tmp_path / "run"
    # lr 1e-9: the encoder still holds the init's weights after the steps, so the test sees which were loaded
    [result] = finetune("seg", hippo["store"], str(run), init=source, decoder=decoder, lr=1e-9, progress=False,
                        log=lambda s: None, **TINY)
    spec = json.loads((run / "finetune.json").read_text())
    assert spec["task"] == "seg" and spec["domain"] == "hippocampus" and spec["decoder"] == decoder
    assert spec["classes"] == ["background", *NAMES] and spec["eval_split"] == "val" and spec["metric"] == "dice"
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["kind"] == f"seg_{decoder}" and ckpt["num_classes"] == 3 and ckpt["config"]["loss"] == "ce+dice"
    assert result.net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    if decoder == "unet":  # the skip from layer1 (stride 4) exists and is fed by the encoder's stage features
        assert ckpt["model"]["head.block4.0.weight"].shape[1] == 128 + 64
    losses = [r["loss"] for r in read_metrics(run, "train")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    if init == "scratch":
        assert ckpt["init_report"] is None
        return
    ref = (torch.load(medicalnet_file, weights_only=True)["state_dict"]["module.conv1.weight"] if init == "medicalnet"
           else load_checkpoint(our_checkpoint)["model"]["encoder.conv1.weight"])
    torch.testing.assert_close(ckpt["model"]["encoder.conv1.weight"], ref, atol=1e-6, rtol=0)


def test_foreground_oversampling_centres_the_chosen_share_on_labels(hippo, tmp_path):
    from model.tasks.base import get_task
    from model.training.loop import DistEnv

    task = get_task("seg")
    shares = {}
    for fg in (1.0, 0.0):
        cfg = task.config(store=hippo["store"], out=str(tmp_path), domain="hippocampus",
                             fg_fraction=fg, **{**TINY, "patch": (8, 8, 8), "batch": 4})
        loader, _ = task.loader(cfg, task.data(cfg, "train"), tmp_path, start=0, steps=10, env=DistEnv(),
                                progress=False)
        labels = torch.cat([b["label"] for b in loader])
        shares[fg] = float((labels.flatten(1) > 0).any(dim=1).float().mean())
    assert shares[1.0] == 1.0  # every patch holds a labelled voxel
    assert shares[0.0] < 0.9  # 8³ patches drawn uniformly often miss the hippocampus


def test_evaluate_per_class_dice_hd95_assd_equal_medpy_on_the_written_files(hippo, seg_run):
    from medpy.metric import binary

    from model.api import evaluate

    summary = evaluate(seg_run, hippo["store"], segmenter=ShiftedOracle(hippo["store"], shift=1), progress=False,
                       log=lambda s: None)
    out = seg_run / "eval" / "val"
    cases = pd.read_csv(out / "cases.csv")
    assert list(cases.columns) == ["case_id", "dice_Anterior", "hd95_mm_Anterior", "assd_mm_Anterior",
                                   "dice_Posterior", "hd95_mm_Posterior", "assd_mm_Posterior", "prediction"]
    assert list(cases["case_id"]) == ["hippocampus_004"]
    pred = sitk.ReadImage(str(out / "pred" / "hippocampus_004.nii.gz"))
    truth = sitk.ReadImage(str(hippo["task"] / "labelsTr" / "hippocampus_004.nii.gz"))
    assert pred.GetSize() == truth.GetSize() and pred.GetSpacing() == truth.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) == {0, 1, 2}
    p, t = sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(truth).astype(np.uint8)
    spacing = tuple(reversed(truth.GetSpacing()))
    row = cases.iloc[0]
    for value, name in enumerate(NAMES, 1):
        pv, tv = p == value, t == value
        assert row[f"dice_{name}"] == pytest.approx(binary.dc(pv, tv), abs=1e-12)
        assert row[f"hd95_mm_{name}"] == pytest.approx(binary.hd95(pv, tv, voxelspacing=spacing), abs=1e-9)
        assert row[f"assd_mm_{name}"] == pytest.approx(binary.assd(pv, tv, voxelspacing=spacing), abs=1e-9)
        assert 0.3 < row[f"dice_{name}"] < 1 and row[f"hd95_mm_{name}"] >= 1.0  # the shift is measured
        assert summary[f"dice_{name}_mean"] == row[f"dice_{name}"]
    assert summary["metric"] == pytest.approx((row["dice_Anterior"] + row["dice_Posterior"]) / 2)
    assert json.loads((out / "summary.json").read_text())["classes"] == NAMES


def test_a_class_absent_from_both_masks_scores_nan_and_one_missing_scores_zero():
    from model.tasks.seg import per_class_scores

    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    pred = truth.copy()
    pred[4, 4, 4] = 3  # class 3 predicted where the truth has none
    scores = per_class_scores(pred, truth, 4, (1.0, 1.0, 1.0))
    assert scores[0] == {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0}
    assert np.isnan(scores[1]["dice"]) and np.isnan(scores[1]["hd95_mm"])  # class 2: in neither mask
    assert scores[2]["dice"] == 0.0 and np.isnan(scores[2]["assd_mm"])  # class 3: in one mask only


def _reorient(img: sitk.Image) -> sitk.Image:
    """The same physical image with permuted and flipped axes (direction and origin follow)."""
    return sitk.Flip(sitk.PermuteAxes(img, [2, 0, 1]), [True, False, True])


def test_predict_imagesTs_folder_and_reoriented_copy_in_each_inputs_geometry(hippo, seg_run, tmp_path):
    from model.api import predict

    image = sitk.ReadImage(str(hippo["task"] / "imagesTr" / "hippocampus_004.nii.gz"))
    label = sitk.ReadImage(str(hippo["task"] / "labelsTr" / "hippocampus_004.nii.gz"))
    ts = tmp_path / "imagesTs"
    ts.mkdir()
    sitk.WriteImage(image, str(ts / "hippo_004_0000.nii.gz"))
    sitk.WriteImage(image * 0, str(ts / "hippo_004_0001.nii.gz"))  # a second channel file of the same case
    sitk.WriteImage(_reorient(image), str(ts / "turned_0000.nii.gz"))
    out = tmp_path / "pred"
    written = predict(seg_run, [ts], out, segmenter=ShiftedOracle(hippo["store"]), log=lambda s: None)
    assert sorted(p.name for p in written) == ["hippo_004.nii.gz", "turned.nii.gz"]  # one mask per case
    expected = {"hippo_004.nii.gz": label, "turned.nii.gz": _reorient(label)}
    for name, truth in expected.items():
        mask = sitk.ReadImage(str(out / name))
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(mask, get)(), getattr(truth, get)(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(truth).astype(np.uint8))
    with pytest.raises(ValueError, match="without their _0000 file"):
        predict(seg_run, [ts / "hippo_004_0001.nii.gz"], out, segmenter=ShiftedOracle(hippo["store"]))


def test_cli_finetune_seg_evaluate_predict(hippo, tmp_path):
    from model.cli import main

    runner = CliRunner()
    run = str(tmp_path / "run")
    res = runner.invoke(main, ["finetune", "seg", hippo["store"], "--out", run, "--decoder", "unet", "--steps", "2",
                               "--patch", "16", "--workers", "0", "--device", "cpu", "--val-every", "2",
                               "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "dice on val" in res.output
    res = runner.invoke(main, ["evaluate", run, hippo["store"], "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(Path(run) / "eval" / "val" / "cases.csv")) == 1
    scan = hippo["task"] / "imagesTr" / "hippocampus_001.nii.gz"
    res = runner.invoke(main, ["predict", run, str(scan), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    mask = sitk.ReadImage(str(tmp_path / "pred" / "hippocampus_001_mask.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(scan)).GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1, 2}


@pytest.mark.parametrize("task", ["liver", "lung", "nodule"])
def test_paper_tasks_refuse_the_hippocampus_store_before_writing(task, hippo, tmp_path):
    with pytest.raises(TaskStoreError, match="finetune seg|build-lidc"):
        finetune(task, hippo["store"], str(tmp_path / "run"), progress=False, log=lambda s: None, **TINY)
    assert not (tmp_path / "run").exists()


def test_seg_needs_a_domain_on_a_store_of_several_and_evaluate_refuses_another_store(tiny_store, seg_run,
                                                                                      tmp_path):
    from model.api import evaluate

    with pytest.raises(TaskStoreError, match=r"2 domains \(alpha, beta\); choose one with --domain"):
        finetune("seg", tiny_store, str(tmp_path / "run"), progress=False, log=lambda s: None, **TINY)
    assert not (tmp_path / "run").exists()
    with pytest.raises(TaskStoreError, match="no domain 'hippocampus'"):
        evaluate(seg_run, tiny_store, progress=False, log=lambda s: None)
    assert not (seg_run / "eval" / "train").exists()


def test_a_crafted_case_id_never_writes_outside_the_pred_folder(hippo, seg_run, tmp_path, monkeypatch):
    """The catalog reader refuses such ids too (catalog/); here it is bypassed, so evaluate's own check is what
    keeps the write inside RUN/eval/<split>/pred."""
    import catalog
    from model.api import evaluate
    from model.run_folder import inside

    crafted = catalog.load_catalog(hippo["store"])
    crafted.loc[crafted["split"] == "val", "case_id"] = "../../../../../escape"
    monkeypatch.setattr(catalog, "load_catalog", lambda store, **kw: crafted.copy())
    run = tmp_path / "deep" / "er" / "a" / "run"
    shutil.copytree(seg_run, run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    with pytest.raises(ValueError, match="refusing to write '../../../../../escape.nii.gz'.*outside"):
        evaluate(run, hippo["store"], segmenter=ShiftedOracle(hippo["store"]), progress=False, log=lambda s: None)
    assert not list(tmp_path.rglob("escape*"))
    assert not (run / "eval" / "val" / "pred").exists()  # refused before the first write
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path, "a/../../b.nii.gz")
    assert inside(tmp_path, "b.nii.gz") == (tmp_path / "b.nii.gz").resolve()


@pytest.mark.slow
def test_seg_killed_with_sigkill_resumes_to_the_uninterrupted_result(hippo, tmp_path):
    """A SIGKILL between checkpoints, then ``--resume``: every step once, the same losses and weights as the
    uninterrupted run (both in fresh one-thread processes)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["finetune", "seg", hippo["store"], "--decoder", "unet", "--steps", "6", "--ckpt-every", "2", "--patch",
            "16", "--workers", "0", "--device", "cpu", "--val-every", "0", "--no-progress"]
    cmd = [sys.executable, "-m", "model.cli", *args]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], cwd=root, env=env, check=True, capture_output=True,
                   timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(run)], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and any(r["step"] >= 3 for r in read_metrics(run, "train")):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= load_checkpoint(run / "checkpoint.pt")["step"] < 6
    subprocess.run([*cmd, "--out", str(run), "--resume"], cwd=root, env=env, check=True, capture_output=True,
                   timeout=300)
    rows = read_metrics(run, "train")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {r["step"]: r["loss"] for r in rows} == {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole",
                                                                                              "train")}
    wa = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    wb = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
