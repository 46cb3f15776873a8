"""The real abdominal CT (tests/data/real/ct) built as a CT domain at another spacing than its own 3 mm."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from catalog import load_catalog
from pipeline.config import Case, DomainSpec, PrepConfig
from pipeline.job import build

from helpers import source_label_stats, stored_label_stats

TARGET = (2.0, 1.5, 1.5)  # (z, y, x) mm; the file is 3 mm isotropic


@pytest.fixture(scope="module")
def ct_store(real_dir, tmp_path_factory):
    ct = real_dir / "ct"
    spec = DomainSpec(name="abdomen", source_dataset="example_ct", modality="CT", channel_names=("CT",),
                      labels={0: "background", 1: "liver"})
    case = Case(domain="abdomen", case_id="ct_sm", scan_id="test:ct_sm", patient_id="ct_sm",
                images=(str(ct / "example_ct_sm.nii.gz"),), label=str(ct / "example_ct_sm_liver.nii.gz"))
    store = str(tmp_path_factory.mktemp("ct") / "store")
    res = build([(spec, [case])], store, PrepConfig(chunks=(32, 32, 32)), workers=0, progress=False,
                log=lambda s: None, target_spacing={"abdomen": TARGET})
    assert res.failed == []
    return store, ct


def test_liver_volume_and_centroid(ct_store):
    store, ct = ct_store
    src_mm3, src_c = source_label_stats(ct / "example_ct_sm_liver.nii.gz", 1)
    dst_mm3, dst_c = stored_label_stats(store, "abdomen/ct_sm", 1)
    assert src_mm3 > 100_000  # a real liver, not an empty mask
    assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.02
    assert np.linalg.norm(dst_c - src_c) < 1.5  # one stored voxel (largest spacing 2 mm, smallest 1.5)


def test_ct_geometry_and_statistics(ct_store):
    store, ct = ct_store
    row = load_catalog(store).iloc[0]
    src = sitk.ReadImage(str(ct / "example_ct_sm.nii.gz"))
    arr = sitk.GetArrayViewFromImage(src)
    assert row["orig_spacing"] == [3.0, 3.0, 3.0]
    assert row["shape"] == [round(30 * 3 / 2.0), round(101 * 3 / 1.5), round(122 * 3 / 1.5)]
    # statistics from the source voxels with values below -1024 HU clamped to air first
    clamped = np.maximum(arr, -1024).astype(np.float64)
    lo, hi = np.percentile(clamped, [0.5, 99.5])
    assert row["p005"][0] == pytest.approx(lo) and row["p995"][0] == pytest.approx(hi)
    clipped = np.clip(clamped, lo, hi)
    assert row["mean"][0] == pytest.approx(clipped.mean()) and row["std"][0] == pytest.approx(clipped.std())
    assert row["air_clamped_fraction"][0] == pytest.approx(np.mean(arr < -1024))
    assert row["air_clamped_fraction"][0] > 0  # this CT has values down to -1100
    grp = zarr.open_group(store, path="abdomen/ct_sm", mode="r")
    # the file is stored RAS-flipped (direction diag(-1,-1,1)); the store is LPS: identity direction
    assert np.allclose(grp.attrs["direction"], np.eye(3).ravel())
    assert grp.attrs["original"]["direction"] == list(src.GetDirection())
