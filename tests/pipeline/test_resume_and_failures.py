"""Resume (second run skips all, rewrites nothing) and bad inputs (failed rows with clear messages)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from catalog import load_catalog
from pipeline.cli import main
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sources.msd import scan_msd

from helpers import write_nifti


def _snapshot(store: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(store).rglob("*") if p.is_file()}


def test_second_run_skips_all_and_rewrites_nothing(real_dir, tmp_path):
    found, _ = scan_msd(real_dir / "msd")
    store = str(tmp_path / "store")
    first = build(found, store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert first.converted == 4 and first.skipped == 0
    before = _snapshot(store)
    second = build(found, store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert second.converted == 0 and second.skipped == 4 and second.failed == []
    assert _snapshot(store) == before
    # changed parameters rebuild every case
    third = build(found, store, PrepConfig(dtype="float32"), workers=0, progress=False, log=lambda s: None)
    assert third.converted == 4 and third.skipped == 0


def test_incomplete_case_is_rebuilt(real_dir, tmp_path):
    """A case whose marker is missing (crash mid-write) does not count and is rebuilt."""
    import zarr

    found, _ = scan_msd(real_dir / "msd")
    store = str(tmp_path / "store")
    build(found, store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    grp = zarr.open_group(store, path="hippocampus/hippocampus_004", mode="a")
    del grp.attrs["med3d_complete"]
    res = build(found, store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert res.converted == 1 and res.skipped == 3


@pytest.fixture()
def bad_task(real_dir, tmp_path):
    """A copy of the real hippocampus task plus one broken case of each kind."""
    task = tmp_path / "msd" / "Task04_Hippocampus"
    shutil.copytree(real_dir / "msd" / "Task04_Hippocampus", task)
    meta = json.loads((task / "dataset.json").read_text())
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (20, 24, 22)).astype(np.float32)
    lab = np.zeros((20, 24, 22), np.uint8)
    lab[5:12, 6:14, 5:12] = 1

    def add(name, image_arr=img, label_arr=lab, label_spacing=(1.0, 1.0, 1.0), raw_image=None, ext=".nii.gz"):
        ipath = task / "imagesTr" / f"{name}{ext}"
        if raw_image is not None:
            ipath.write_bytes(raw_image)
        else:
            write_nifti(ipath, image_arr)
        write_nifti(task / "labelsTr" / f"{name}.nii.gz", label_arr, spacing_xyz=label_spacing)
        meta["training"].append({"image": f"./imagesTr/{name}{ext}", "label": f"./labelsTr/{name}.nii.gz"})

    add("bad_unreadable", raw_image=b"\x1f\x8b this is not a nifti file")
    add("bad_geometry", label_spacing=(1.0, 1.0, 2.0))
    nan_img = img.copy()
    nan_img[3, 3, 3] = np.nan
    # SimpleITK's NIfTI reader turns NaN into 0 (checked with SimpleITK 2.5), so NaNs reach us only through
    # other formats; MetaImage keeps them.
    add("bad_nan", image_arr=nan_img, ext=".mha")
    lab7 = lab.copy()
    lab7[1, 1, 1] = 7
    add("bad_labels", label_arr=lab7)
    meta["training"].append({"image": "./imagesTr/bad_missing.nii.gz", "label": "./labelsTr/bad_missing.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_bad_inputs_become_failed_rows_and_the_rest_complete(bad_task, tmp_path):
    store = str(tmp_path / "store")
    runner = CliRunner()
    res = runner.invoke(main, ["build-3dseg8", str(bad_task.parent), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 3, res.output
    cat = load_catalog(store).set_index("case_id")
    ok = cat[cat["status"] == "ok"].index.tolist()
    assert sorted(ok) == ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
    err = cat["error"]
    assert "bad_unreadable.nii.gz" in err["bad_unreadable"] and "cannot read" in err["bad_unreadable"]
    assert "bad_geometry.nii.gz" in err["bad_geometry"] and "label grid differs" in err["bad_geometry"]
    assert "spacing" in err["bad_geometry"]
    assert "bad_nan.mha" in err["bad_nan"] and "NaN" in err["bad_nan"]
    assert "bad_labels.nii.gz" in err["bad_labels"] and "[7]" in err["bad_labels"]
    assert "bad_missing.nii.gz" in err["bad_missing"] and "not found" in err["bad_missing"]
    assert "5 case(s) failed" in res.output
    for case in ["bad_unreadable", "bad_geometry", "bad_nan", "bad_labels", "bad_missing"]:
        assert f"FAILED hippocampus/{case}" in res.output
    # failed cases leave nothing that counts in the store
    import zarr

    from pipeline.store import case_marker

    root = zarr.open_group(store, mode="r")
    assert all(case_marker(root, f"hippocampus/{c}") is None for c in err.index if c.startswith("bad_"))


def test_info_prints_domains(real_dir, tmp_path):
    store = str(tmp_path / "store")
    runner = CliRunner()
    res = runner.invoke(main, ["build-3dseg8", str(real_dir / "msd"), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "not found under" in res.output and "Task09_Spleen" in res.output
    res = runner.invoke(main, ["info", store, "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)
    assert row["domain"] == "hippocampus" and row["volumes"] == 4 and row["failed"] == 0
    assert row["target_spacing_zyx_mm"] == "1×1×1" and row["store_bytes"] > 0
    res = runner.invoke(main, ["info", store])
    assert "hippocampus" in res.output and "total: 4 volumes, 0 failed" in res.output


def test_case_that_lost_its_label_is_rebuilt(real_dir, tmp_path):
    """Resume compares the whole set of sources: a case whose label was dropped from its source (dataset.json
    edited) must not keep the stale label and a has_label row."""
    import dataclasses

    found, _ = scan_msd(real_dir / "msd")
    store = str(tmp_path / "store")
    build(found, store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    (spec, cases), = found
    cases = [dataclasses.replace(c, label=None, split_hint="test") if c.case_id == "hippocampus_004" else c
             for c in cases]
    res = build([(spec, cases)], store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert res.converted == 1 and res.skipped == 3
    row = load_catalog(store).set_index("case_id").loc["hippocampus_004"]
    assert not row["has_label"] and row["source_label"] == ""


def test_bad_chunks_option_is_a_usage_error(real_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["build-3dseg8", str(real_dir / "msd"), str(tmp_path / "s"), "--chunks", "a,b"])
    assert res.exit_code == 2 and "--chunks" in res.output and "Z,Y,X" in res.output
    res = runner.invoke(main, ["build-3dseg8", str(real_dir / "msd"), str(tmp_path / "s"), "--chunks", "8,8"])
    assert res.exit_code == 2 and "chunks must be a list of three whole numbers" in res.output and "(8, 8)" in res.output


def test_multichannel_label_is_a_failed_row_naming_the_label(real_dir, tmp_path):
    import SimpleITK as sitk

    task = tmp_path / "msd" / "Task04_Hippocampus"
    shutil.copytree(real_dir / "msd" / "Task04_Hippocampus", task)
    lab = sitk.ReadImage(str(task / "labelsTr" / "hippocampus_004.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([lab, lab]), str(task / "labelsTr" / "hippocampus_004.nii.gz"))
    found, _ = scan_msd(tmp_path / "msd")
    res = build(found, str(tmp_path / "s"), PrepConfig(), workers=0, progress=False, log=lambda s: None)
    (row,) = res.failed
    assert row["case_id"] == "hippocampus_004"
    assert "labelsTr/hippocampus_004.nii.gz: a label must have one channel, this file has 2" in row["error"]


def test_duplicate_cases_in_dataset_json_are_refused_before_converting(real_dir, tmp_path):
    task = tmp_path / "msd" / "Task04_Hippocampus"
    shutil.copytree(real_dir / "msd" / "Task04_Hippocampus", task)
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (task / "dataset.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(main, ["build-3dseg8", str(tmp_path / "msd"), str(tmp_path / "s"), "--workers", "0"])
    assert res.exit_code == 2 and "listed more than once: hippocampus_001" in res.output
    assert not (tmp_path / "s").exists()
