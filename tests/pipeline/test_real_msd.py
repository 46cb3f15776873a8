"""build-3dseg8 on the real MSD Task04_Hippocampus cases (tests/data/real/msd)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from catalog import load_catalog, load_domains
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sources.msd import scan_msd

from helpers import source_label_stats, stored_label_stats

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]


@pytest.fixture(scope="module")
def hippo_store(real_dir, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("hippo") / "store")
    found, missing = scan_msd(real_dir / "msd")
    assert [spec.name for spec, _ in found] == ["hippocampus"]
    assert len(missing) == 7
    # Build at 0.8 mm (not the files' 1 mm) so resampling is exercised on real anatomy.
    result = build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False, log=lambda s: None,
                   target_spacing={"hippocampus": (0.8, 0.8, 0.8)})
    return store, result, real_dir / "msd" / "Task04_Hippocampus"


def test_all_four_cases_succeed_including_uint8_image_and_float32_label(hippo_store):
    store, result, task = hippo_store
    assert result.failed == []
    cat = load_catalog(store)
    assert sorted(cat["case_id"]) == CASES
    assert set(cat["status"]) == {"ok"}
    # The quirks are real: case 001's image is uint8, case 003's label float32.
    assert sitk.ReadImage(str(task / "imagesTr/hippocampus_001.nii.gz")).GetPixelID() == sitk.sitkUInt8
    assert sitk.ReadImage(str(task / "labelsTr/hippocampus_003.nii.gz")).GetPixelID() == sitk.sitkFloat32
    row = cat.set_index("case_id").loc["hippocampus_003"]
    assert row["label_values"] == [0, 1, 2]
    assert row["target_spacing"] == [0.8, 0.8, 0.8]
    assert row["scan_id"] == "msd:Task04_Hippocampus:hippocampus_003"
    # new size = round(old size × old spacing / new spacing)
    assert row["shape"] == [int(round(n * 1.0 / 0.8)) for n in row["orig_shape"]]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("value", [1, 2])
def test_label_volume_and_centroid_preserved(hippo_store, case, value):
    store, _, task = hippo_store
    src_mm3, src_c = source_label_stats(task / f"labelsTr/{case}.nii.gz", value)
    dst_mm3, dst_c = stored_label_stats(store, f"hippocampus/{case}", value)
    assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.02
    assert np.linalg.norm(dst_c - src_c) < 0.8  # one stored voxel


def test_arrays_open_with_plain_zarr_with_recorded_dtype_chunks_attrs(hippo_store):
    store, _, task = hippo_store
    root = zarr.open_group(store, mode="r")
    assert root.attrs["format_version"] == 1 and root.attrs["created_by"] == "med3d-prep"
    grp = root["hippocampus/hippocampus_001"]
    img, lab = grp["image"], grp["label"]
    assert img.dtype == np.float16 and lab.dtype == np.uint8
    assert img.chunks == (1, 16, 16, 16) and lab.chunks == (16, 16, 16)
    assert img.shape[0] == 1 and img.shape[1:] == lab.shape
    meta = json.loads((task / "dataset.json").read_text())
    assert grp.attrs["labels"] == meta["labels"]
    assert grp.attrs["spacing"] == [0.8, 0.8, 0.8]
    assert grp.attrs["med3d_complete"]["params_hash"] == grp.attrs["params_hash"]
    assert len(grp.attrs["sources"]) == 2 and len(grp.attrs["sources"][0]["sha256"]) == 64
    # z-scored within the clip: mean ~0, std ~1 on the stored grid (resampling smooths a little)
    arr = img[0].astype(np.float32)
    assert abs(arr.mean()) < 0.1 and 0.85 < arr.std() < 1.1
    codecs = img.metadata.to_dict()["codecs"]
    assert codecs[-1]["name"] == "blosc" and codecs[-1]["configuration"]["cname"] == "lz4hc"


def test_values_map_back_to_source_units(hippo_store):
    """Stored values × std + mean recovers the source intensities (within the clip) at voxel centres."""
    store, _, task = hippo_store
    cat = load_catalog(store).set_index("case_id")
    row = cat.loc["hippocampus_004"]
    src = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(task / "imagesTr/hippocampus_004.nii.gz")), "LPS"))
    stored = zarr.open_group(store, path="hippocampus/hippocampus_004", mode="r")["image"][0].astype(np.float64)
    back = stored * row["std"][0] + row["mean"][0]
    # voxel (0,0,0) coincides in both grids (same origin); compare a few interior voxels at matching positions
    # where 0.8 mm and 1 mm grids meet: index 5 (×0.8 = 4 mm) ↔ index 4
    ref = np.clip(src[4, 4, 4], row["p005"][0], row["p995"][0])
    assert back[5, 5, 5] == pytest.approx(ref, rel=0.01, abs=0.01 * (row["p995"][0] - row["p005"][0]))


def test_domains_table(hippo_store):
    store, _, _ = hippo_store
    d = load_domains(store).set_index("domain").loc["hippocampus"]
    assert d["num_classes"] == 3 and d["labels"] == ["background", "Anterior", "Posterior"]
    assert d["modality"] == "MR" and d["n_volumes"] == 4 and d["target_spacing"] == [0.8, 0.8, 0.8]


def test_median_spacing_plan_from_headers(real_dir, tmp_path):
    found, _ = scan_msd(real_dir / "msd")
    res = build(found, str(tmp_path / "s"), PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert res.target_spacing["hippocampus"] == (1.0, 1.0, 1.0)
    splits = load_catalog(str(tmp_path / "s"))["split"].tolist()
    assert splits.count("val") == 1 and splits.count("train") == 3  # at least one val case when >= 3
