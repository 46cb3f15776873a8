"""The whole geometry path of evaluate and predict on the real abdominal CT (tests/data/real/ct), with the
network replaced by an oracle that returns the stored label: what lands in the source file's grid must be the
real liver (Dice > 0.97), whatever the orientation of the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import zarr
from click.testing import CliRunner

from model.api import evaluate
from model.api import predict
from model.api import finetune


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _write(img: sitk.Image, path: Path, spacing=None) -> None:
    img = sitk.Image(img)
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), False)


@pytest.fixture(scope="module")
def real_lits(real_dir, tmp_path_factory):
    """A LiTS layout from the real CT and its liver mask: three training volumes (the CT as stored, RAS, 3 mm;
    the same voxels declared at 2 x 2 x 4 mm and 3.5 x 3.5 x 2.5 mm, so the store resamples every one) and the
    CT as test-volume-0; plus a one-step liver run on it (its preprocessing is what predict replays)."""
    from pipeline.cli import main as prep

    ct = sitk.ReadImage(str(real_dir / "ct" / "example_ct_sm.nii.gz"))
    liver = sitk.ReadImage(str(real_dir / "ct" / "example_ct_sm_liver.nii.gz"))
    root = tmp_path_factory.mktemp("real_lits")
    raw = root / "raw"
    raw.mkdir()
    for n, spacing in ((0, None), (1, (2.0, 2.0, 4.0)), (2, (3.5, 3.5, 2.5))):
        _write(ct, raw / f"volume-{n}.nii", spacing)
        _write(sitk.Cast(liver, sitk.sitkUInt8), raw / f"segmentation-{n}.nii", spacing)
    _write(ct, raw / "test-volume-0.nii")
    store = str(root / "store")
    res = CliRunner().invoke(prep, ["build-lits", str(raw), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    run = root / "run"
    finetune("liver", store, str(run), steps=1, batch=1, patch=(16, 16, 16), coarse_shape=(16, 16, 16),
             aspp_rates=(1, 2), workers=0, device="cpu", ckpt_every=0, val_every=0, progress=False,
             log=lambda s: None)
    return {"raw": raw, "store": store, "run": run, "ct": ct, "liver": liver}


class Oracle:
    """A segmenter that recognises a stored image and returns that case's stored label (any voxel > 0)."""

    def __init__(self, store: str) -> None:
        from catalog import load_catalog

        self.cases = []
        for path in load_catalog(store)["store_path"]:
            grp = zarr.open_group(store, path=path, mode="r")
            label = grp["label"][...] if "label" in grp else None
            self.cases.append((grp["image"][0].astype(np.float32), label))
        # test-volume-0 holds the same voxels as volume-0 but no label: look among the labelled cases first
        self.cases.sort(key=lambda c: c[1] is None)
        self.calls = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        for stored, label in self.cases:
            if stored.shape == image.shape and np.allclose(stored, image, atol=1e-3):
                return np.zeros(image.shape, np.uint8) if label is None else (label > 0).astype(np.uint8)
        raise AssertionError(f"the oracle does not know this image {image.shape}")


def test_evaluate_pastes_the_stored_label_back_onto_the_source_liver(real_lits):
    oracle = Oracle(real_lits["store"])
    run = real_lits["run"]
    for split in ("train", "val"):
        summary = evaluate(run, real_lits["store"], split=split, segmenter=oracle, progress=False,
                           log=lambda s: None)
        assert summary["labelled_cases"] >= 1
        assert summary["dice_mean"] > 0.97 and summary["dice_global"] > 0.97
        cases = __import__("pandas").read_csv(run / "eval" / split / "cases.csv")
        for row in cases.itertuples():
            pred = sitk.ReadImage(row.prediction)
            source = sitk.ReadImage(row.source_image)
            # the prediction carries the source volume's grid index for index
            assert pred.GetSize() == source.GetSize() and pred.GetDirection() == source.GetDirection()
            np.testing.assert_allclose(pred.GetOrigin(), source.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(pred.GetSpacing(), source.GetSpacing(), atol=1e-6)
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(row.source_image).parent /
                                                          Path(row.source_image).name.replace("volume",
                                                                                              "segmentation"))))
            assert _dice(sitk.GetArrayFromImage(pred), truth) == pytest.approx(row.dice, abs=1e-9)
            assert row.dice > 0.97 and row.msd_mm < 10.0 and abs(row.rvd) < 0.05


def test_evaluate_on_lits_test_writes_a_submission_in_the_test_volume_geometry(real_lits):
    summary = evaluate(real_lits["run"], real_lits["store"], split="test", segmenter=Oracle(real_lits["store"]),
                       progress=False, log=lambda s: None)
    assert summary["labelled_cases"] == 0 and "predictions only" in summary["note"]
    sub = sitk.ReadImage(str(real_lits["run"] / "eval" / "test" / "pred" / "test-segmentation-0.nii"))
    vol = sitk.ReadImage(str(real_lits["raw"] / "test-volume-0.nii"))
    assert sub.GetSize() == vol.GetSize() and sub.GetDirection() == vol.GetDirection()
    np.testing.assert_allclose(sub.GetOrigin(), vol.GetOrigin(), atol=1e-4)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_predict_lands_on_the_real_liver_whatever_the_input_orientation(real_lits, orientation, tmp_path):
    ct = sitk.DICOMOrient(real_lits["ct"], orientation)
    liver = sitk.DICOMOrient(real_lits["liver"], orientation)
    scan = tmp_path / f"ct_{orientation}.nii.gz"
    sitk.WriteImage(ct, str(scan))
    oracle = Oracle(real_lits["store"])
    [path] = predict(real_lits["run"], [scan], tmp_path / "out", segmenter=oracle, log=lambda s: None)
    assert path.name == f"ct_{orientation}_mask.nii.gz" and oracle.calls == 1
    mask = sitk.ReadImage(str(path))
    assert mask.GetSize() == ct.GetSize() and mask.GetDirection() == ct.GetDirection()
    np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert _dice(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(liver)) > 0.97


def test_predict_refuses_a_ct_without_usable_spacing_unless_given(real_lits, tmp_path):
    """The LiTS 28-47 header (identity affine, 1 x 1 x 1 mm) is not a spacing: predicting with it would resample
    the scan at the wrong size. Given --spacing, the mask lands on the liver and keeps the file's own header."""
    ct = sitk.Image(real_lits["ct"])
    true_spacing = ct.GetSpacing()
    ct.SetSpacing((1.0, 1.0, 1.0))
    ct.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    scan = tmp_path / "volume-30.nii"
    sitk.WriteImage(ct, str(scan))
    with pytest.raises(ValueError, match="cannot be trusted.*--spacing"):
        predict(real_lits["run"], [scan], tmp_path / "out", segmenter=Oracle(real_lits["store"]), log=lambda s: None)
    for bad in ((float("nan"), 0.7, 2.5), (0.7, float("inf"), 2.5), (0.7, 0.7, 0.0)):
        with pytest.raises(ValueError, match="not three positive voxel sizes"):
            predict(real_lits["run"], [scan], tmp_path / "out", segmenter=Oracle(real_lits["store"]),
                    spacing_xyz=bad, log=lambda s: None)
    # the oracle knows the stored case's physical grid, which needs the real direction too
    ct2 = sitk.Image(real_lits["ct"])
    ct2.SetSpacing((1.0, 1.0, 1.0))
    scan2 = tmp_path / "volume-31.nii"
    sitk.WriteImage(ct2, str(scan2))
    [path] = predict(real_lits["run"], [scan2], tmp_path / "out", segmenter=Oracle(real_lits["store"]),
                     spacing_xyz=true_spacing, log=lambda s: None)
    mask = sitk.ReadImage(str(path))
    assert mask.GetSpacing() == (1.0, 1.0, 1.0)  # the file's own header back
    assert _dice(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(real_lits["liver"])) > 0.97


@pytest.mark.parametrize("spacing", ["nan,0.7,2.5", "0.7,inf,2.5", "0.7,0.7,-1", "0.7,0.7"])
def test_predict_cli_refuses_a_spacing_that_is_no_voxel_size(tmp_path, spacing):
    from model.cli_transfer import predict as predict_cmd

    (tmp_path / "run").mkdir()
    (tmp_path / "scan.nii").write_bytes(b"")
    res = CliRunner().invoke(predict_cmd, [str(tmp_path / "run"), str(tmp_path / "scan.nii"), "--out",
                                           str(tmp_path / "out"), "--spacing", spacing])
    assert res.exit_code == 2 and "three positive spacings" in res.output, res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_evaluate_reads_a_store_given_as_an_fsspec_url(real_lits, scheme):
    """The same store as a ``memory://`` copy (what an object store looks like to the readers: no local folder,
    every node's zarr.json and chunk one fsspec GET) or a ``file://`` URL gives the local store's measurements."""
    import fsspec
    import pandas as pd

    run, local = real_lits["run"], real_lits["store"]
    evaluate(run, local, split="val", segmenter=Oracle(local), progress=False, log=lambda s: None)
    expected = pd.read_csv(run / "eval" / "val" / "cases.csv")
    if scheme == "memory":
        fs = fsspec.filesystem("memory")
        fs.put(local, f"/geometry_{scheme}", recursive=True)
        url = f"memory://geometry_{scheme}"
    else:
        url = Path(local).resolve().as_uri()
    try:
        summary = evaluate(run, url, split="val", segmenter=Oracle(local), progress=False, log=lambda s: None)
    finally:
        if scheme == "memory":
            fs.rm(f"/geometry_{scheme}", recursive=True)
    got = pd.read_csv(run / "eval" / "val" / "cases.csv")
    assert summary["labelled_cases"] == len(expected) >= 1 and summary["dice_mean"] > 0.97
    pd.testing.assert_frame_equal(got, expected)


def test_a_run_trained_on_a_memory_url_store_predicts_as_the_local_one(real_lits, tmp_path):
    """finetune reads the recipe, catalog and patches of a ``memory://`` store; predict then replays the same
    recipe as for the local store's run, and the masks agree voxel for voxel."""
    import fsspec

    from model.run_folder import read_run

    fs = fsspec.filesystem("memory")
    fs.put(real_lits["store"], "/geometry_run_store", recursive=True)
    try:
        finetune("liver", "memory://geometry_run_store", str(tmp_path / "run"), steps=1, batch=1,
                 patch=(16, 16, 16), coarse_shape=(16, 16, 16), aspp_rates=(1, 2), workers=0, device="cpu",
                 ckpt_every=0, val_every=0, progress=False, log=lambda s: None)
    finally:
        fs.rm("/geometry_run_store", recursive=True)
    assert read_run(tmp_path / "run")["preprocessing"] == read_run(real_lits["run"])["preprocessing"]
    scan = real_lits["raw"] / "test-volume-0.nii"
    oracle = Oracle(real_lits["store"])
    [remote] = predict(tmp_path / "run", [scan], tmp_path / "remote", segmenter=oracle, log=lambda s: None)
    [local] = predict(real_lits["run"], [scan], tmp_path / "local", segmenter=oracle, log=lambda s: None)
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (remote, local))
    assert a.shape == b.shape and a.any() and np.array_equal(a, b)
