"""build-lits on a LiTS layout made from the real abdominal CT (tests/data/real/ct), and on the LiTS sample.

Layout: volume-0 is the real CT (3 mm, RAS-stored) with liver → 1 and spleen → 2 (a stand-in for tumour, to
exercise both values); volume-1 holds the same voxels with the header stripped (identity direction, 1 mm, zero
origin: what LiTS 28-47 look like); volume-2 the same voxels declared at 2 × 2 × 4 mm; test-volume-0 the CT.
Training volumes with usable spacing: 0 (z, y, x 3, 3, 3) and 2 (4, 2, 2): mean (3.5, 2.5, 2.5) mm.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import zarr
from click.testing import CliRunner

from catalog import load_catalog, load_domains
from pipeline.cli import main
from pipeline.sample import write_lits_sample
from pipeline.sources.lits import read_spacing_csv, scan_lits
from volume.geometry import Header
from volume.original_grid import to_original_grid
from volume.preprocess import has_usable_spacing

from helpers import source_label_stats, stored_label_stats

MEAN_ZYX = [3.5, 2.5, 2.5]


def _write(img: sitk.Image, path: Path, spacing=None, direction=None, origin=None) -> None:
    img = sitk.Image(img)
    if spacing is not None:
        img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    if origin is not None:
        img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), False)


@pytest.fixture(scope="module")
def lits_root(real_dir, tmp_path_factory) -> Path:
    ct_dir = real_dir / "ct"
    ct = sitk.ReadImage(str(ct_dir / "example_ct_sm.nii.gz"))
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_dir / "example_ct_sm_liver.nii.gz")))
    spleen = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_dir / "example_ct_sm_spleen.nii.gz")))
    seg_arr = liver.astype(np.uint8)
    seg_arr[spleen > 0] = 2
    seg = sitk.GetImageFromArray(seg_arr)
    seg.CopyInformation(ct)
    root = tmp_path_factory.mktemp("lits")
    stripped = {"spacing": (1.0, 1.0, 1.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1), "origin": (0.0, 0.0, 0.0)}
    for n, kw in ((0, {}), (1, stripped), (2, {"spacing": (2.0, 2.0, 4.0)})):
        _write(ct, root / f"volume-{n}.nii", **kw)
        _write(seg, root / f"segmentation-{n}.nii", **kw)
    _write(ct, root / "test-volume-0.nii")
    return root


@pytest.fixture(scope="module")
def lits_store(lits_root, tmp_path_factory) -> str:
    store = str(tmp_path_factory.mktemp("store") / "lits.zarr")
    res = CliRunner().invoke(main, ["build-lits", str(lits_root), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "volume-1: header spacing (1.0, 1.0, 1.0) unusable" in res.output
    return store


def _row(store: str, case_id: str):
    cat = load_catalog(store).set_index("case_id")
    return cat.loc[case_id]


def test_identities_splits_and_test_volume_without_label(lits_store):
    cat = load_catalog(lits_store).set_index("case_id")
    assert sorted(cat.index) == ["test-volume-0", "volume-0", "volume-1", "volume-2"]
    assert (cat["status"] == "ok").all() and (cat["domain"] == "lits").all()
    assert cat.loc["volume-0", "scan_id"] == "lits:0" and cat.loc["volume-0", "patient_id"] == "lits:0"
    assert cat.loc["test-volume-0", "scan_id"] == "lits-test:0"
    test = cat.loc["test-volume-0"]
    assert test["split"] == "test" and not test["has_label"] and test["source_label"] == ""
    assert "label" not in zarr.open_group(lits_store, path="lits/test-volume-0", mode="r")
    assert set(cat.loc[["volume-0", "volume-1", "volume-2"], "split"]) <= {"train", "val"}
    assert cat.loc["volume-0", "label_values"] == [0, 1, 2]


def test_window_recorded_and_applied(lits_store, lits_root):
    cat = load_catalog(lits_store)
    assert all(p == [-200.0] for p in cat["p005"]) and all(p == [250.0] for p in cat["p995"])
    grp = zarr.open_group(lits_store, path="lits/volume-0", mode="r")
    norm = grp.attrs["normalization"]
    assert norm["ct_window"] == [-200.0, 250.0]
    # mean/std are those of the windowed source voxels; stored values are their z-score
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(lits_root / "volume-0.nii"))).astype(np.float64)
    windowed = np.clip(hu, -200, 250)
    row = _row(lits_store, "volume-0")
    assert row["mean"][0] == pytest.approx(windowed.mean()) and row["std"][0] == pytest.approx(windowed.std())
    img = grp["image"][0].astype(np.float32)
    assert img.max() == pytest.approx((250 - windowed.mean()) / windowed.std(), abs=5e-3)
    assert img.min() == pytest.approx((-200 - windowed.mean()) / windowed.std(), abs=5e-3)


def test_no_spacing_volume_gets_the_training_mean_and_is_flagged(lits_store):
    cat = load_catalog(lits_store).set_index("case_id")
    assert cat.loc["volume-1", "spacing_flag"] == "no_spacing:train_mean"
    assert cat.loc["volume-1", "orig_spacing"] == pytest.approx(MEAN_ZYX)
    assert (cat.drop(index="volume-1")["spacing_flag"] == "").all()
    assert cat.loc["volume-2", "orig_spacing"] == [4.0, 2.0, 2.0]
    # target spacing: the training volumes' mean (the flagged one adds the mean itself)
    assert all(t == pytest.approx(MEAN_ZYX) for t in cat["target_spacing"])
    assert load_domains(lits_store).set_index("domain").loc["lits", "target_spacing"] == pytest.approx(MEAN_ZYX)
    grp = zarr.open_group(lits_store, path="lits/volume-1", mode="r")
    assert grp.attrs["original"]["header_spacing_xyz"] == [1.0, 1.0, 1.0]
    assert grp.attrs["extra"]["spacing_flag"] == "no_spacing:train_mean"


def test_liver_and_tumour_volumes_match_the_source(lits_store, lits_root):
    for value in (1, 2):
        src_mm3, src_c = source_label_stats(lits_root / "segmentation-0.nii", value)
        dst_mm3, dst_c = stored_label_stats(lits_store, "lits/volume-0", value)
        assert src_mm3 > 200_000  # the real liver (~1.06 l) and spleen (~0.26 l)
        assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.02
        assert np.linalg.norm(dst_c - src_c) < 2.5
    # the header-stripped copy: same voxels, at the mean spacing
    liver_voxels = int((sitk.GetArrayFromImage(sitk.ReadImage(str(lits_root / "segmentation-1.nii"))) == 1).sum())
    dst_mm3, _ = stored_label_stats(lits_store, "lits/volume-1", 1)
    assert abs(dst_mm3 - liver_voxels * np.prod(MEAN_ZYX)) / dst_mm3 < 0.02


@pytest.mark.parametrize("case", ["volume-0", "volume-1", "volume-2"])
def test_prediction_pasted_back_onto_the_original_grid(lits_store, lits_root, case):
    grp = zarr.open_group(lits_store, path=f"lits/{case}", mode="r")
    back = to_original_grid(grp["label"][...], dict(grp.attrs))
    src = sitk.ReadImage(str(lits_root / f"{case.replace('volume', 'segmentation')}.nii"))
    assert back.GetSize() == src.GetSize()
    assert np.allclose(back.GetSpacing(), src.GetSpacing(), atol=1e-5)  # the file's own header, even 1 mm
    assert np.allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), src.GetDirection())
    a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src)
    for value in (1, 2):
        dice = 2 * np.sum((a == value) & (b == value)) / (np.sum(a == value) + np.sum(b == value))
        assert dice > 0.95, (case, value, dice)


def test_to_original_grid_rejects_a_non_3d_array():
    with pytest.raises(ValueError, match="Z, Y, X"):
        to_original_grid(np.zeros((4, 4)), {"original": {}})


def test_second_build_skips_everything(lits_store, lits_root):
    res = CliRunner().invoke(main, ["build-lits", str(lits_root), lits_store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "4 cases: 4 unchanged (skipped), 0 to convert" in res.output


def test_spacing_override_csv(lits_root, tmp_path):
    csv = tmp_path / "spacing.csv"
    csv.write_text("file,spacing_x,spacing_y,spacing_z\nvolume-1.nii,3,3,3\n")
    store = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["build-lits", str(lits_root), store, "--spacing-override", str(csv),
                                    "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    cat = load_catalog(store).set_index("case_id")
    assert cat.loc["volume-1", "spacing_flag"] == "override:csv"
    assert cat.loc["volume-1", "orig_spacing"] == [3.0, 3.0, 3.0]
    # mean of (3, 3, 3), (3, 3, 3), (4, 2, 2)
    assert cat.loc["volume-0", "target_spacing"] == pytest.approx([10 / 3, 8 / 3, 8 / 3], abs=1e-5)
    src_mm3, _ = source_label_stats(lits_root / "segmentation-0.nii", 1)
    dst_mm3, _ = stored_label_stats(store, "lits/volume-1", 1)
    assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.02  # 3 mm is the scan's true spacing


@pytest.mark.parametrize("text, match", [
    ("name,spacing_x,spacing_y,spacing_z\nvolume-1,1,1,1\n", "'case' \\(or 'file'\\)"),
    ("case,spacing_x,spacing_y,spacing_z\nvolume-1,1,1,1\nvolume-2,0.8,abc,2\n", "row 3 \\(volume-2\\)"),
    ("case,spacing_x,spacing_y,spacing_z\nvolume-1,1,-1,1\n", "row 2 .*positive"),
    ("case,spacing_x,spacing_y,spacing_z\nvolume-1,1,1,1\nvolume-1.nii,1,1,2\n", "row 3: volume-1 is listed twice"),
    ("case,spacing_x,spacing_y,spacing_z\n,1,1,1\n", "row 2: empty"),
])
def test_malformed_spacing_csv_names_the_row(tmp_path, text, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_spacing_csv(csv)


def test_malformed_spacing_csv_is_a_usage_error(lits_root, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("case,spacing_x,spacing_y,spacing_z\nvolume-1,1,1,\n")
    res = CliRunner().invoke(main, ["build-lits", str(lits_root), str(tmp_path / "s"), "--spacing-override",
                                    str(csv), "--workers", "0", "--no-progress"])
    assert res.exit_code == 2 and "row 2 (volume-1)" in res.output


def test_read_spacing_csv_normalizes_names(tmp_path):
    csv = tmp_path / "ok.csv"
    csv.write_text("case, spacing_x, spacing_y, spacing_z\nTraining Batch 2/volume-28.nii,0.7,0.7,2.5\n\n"
                   "test-volume-3.nii.gz,0.8,0.8,1\n")
    assert read_spacing_csv(csv) == {"volume-28": (0.7, 0.7, 2.5), "test-volume-3": (0.8, 0.8, 1.0)}


def _header(spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Header:
    return Header(path="x.nii", size=(8, 8, 8), spacing=spacing, origin=(0.0, 0.0, 0.0), direction=direction,
                  n_channels=1, pixel_type="16-bit signed integer", component_bytes=2)


def test_usable_spacing_rule():
    assert not has_usable_spacing(_header((1.0, 1.0, 1.0)))
    assert not has_usable_spacing(_header((1.0, 1.0, 1.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)))  # NIfTI identity
    assert not has_usable_spacing(_header((0.7, 0.7, 0.0)))
    assert not has_usable_spacing(_header((0.7, float("nan"), 2.0)))
    assert has_usable_spacing(_header((0.7, 0.7, 1.0)))
    c, s = np.cos(0.3), np.sin(0.3)
    assert has_usable_spacing(_header((1.0, 1.0, 1.0), (c, -s, 0, s, c, 0, 0, 0, 1)))  # oblique: a real scanner


def test_missing_segmentation_is_a_failed_row(lits_root, tmp_path):
    root = tmp_path / "lits"
    shutil.copytree(lits_root, root)
    shutil.copy(root / "volume-0.nii", root / "volume-9.nii")
    (root / "segmentation-2.nii").rename(root / "segmentation-7.nii")  # orphan: no volume-7
    spec, cases, notes = scan_lits(root)
    assert "segmentation-7 has no volume-7: ignored" in notes
    store = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["build-lits", str(root), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 3
    cat = load_catalog(store).set_index("case_id")
    assert cat.loc["volume-9", "status"] == "failed" and "segmentation-9.nii" in cat.loc["volume-9", "error"]
    assert cat.loc["volume-2", "status"] == "failed" and "not found" in cat.loc["volume-2", "error"]
    assert (cat.drop(index=["volume-2", "volume-9"])["status"] == "ok").all()


def test_lits_sample_volume_without_spacing_is_flagged(tmp_path):
    root = tmp_path / "lits"
    write_lits_sample(root, seed=0)
    manifest = json.loads((root / "SAMPLE.json").read_text())["lits"]
    store = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["build-lits", str(root), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    cat = load_catalog(store).set_index("case_id")
    flagged = sorted(cat.index[cat["spacing_flag"] == "no_spacing:train_mean"])
    assert flagged == sorted(manifest["no_spacing"]) and flagged
    usable = [e["case"] for e in manifest["volumes"] if e["case"] not in manifest["no_spacing"]]
    mean_zyx = np.mean([cat.loc[c, "orig_spacing"] for c in usable], axis=0)
    for case in flagged:
        assert cat.loc[case, "orig_spacing"] == pytest.approx(mean_zyx.tolist(), abs=1e-5)
    assert sorted(cat.index[cat["split"] == "test"]) == sorted(e["case"] for e in manifest["test"])
    assert not cat.loc[[e["case"] for e in manifest["test"]], "has_label"].any()
    assert cat.loc["volume-0", "scan_id"] == "lits:0"
