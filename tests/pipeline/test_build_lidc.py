"""build-lidc: real LIDC-IDRI-0001 and the miniature LIDC through the job (crops, nodules table, splits, resume,
failed series, info), plus the dask LocalCluster path."""
from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import zarr
from click.testing import CliRunner

from catalog import load_catalog, load_domains, load_nodules, patient_splits
from pipeline.cli import main
from pipeline.config import PrepConfig
from pipeline.job_lidc import build_lidc
from pipeline.sample.lidc import write_lidc_sample
from pipeline.sources.lidc import LidcParams
from pipeline.sources.lidc_nodules import consensus_mask, group_marks, reader_marks
from pipeline.sources.lidc_series import find_lidc_series, read_ct_series
from pipeline.sources.lidc_xml import parse_lidc_xml

QUIET = {"workers": 0, "progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def real_series(real_dir) -> Path:
    (ref,) = find_lidc_series(real_dir / "lidc")
    return ref.dicom_dir


def _snapshot(store: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(store).rglob("*") if p.is_file()}


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_real_lidc_0001(real_dir, real_series, tmp_path):
    store = tmp_path / "store"
    res = _cli("build-lidc", real_dir / "lidc", store, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "1 converted" in res.output and "4 nodules (3 < 3 mm), 1 nodule crops" in res.output

    cat = load_catalog(str(store))
    (row,) = cat.itertuples()
    nod = load_nodules(str(store))
    assert len(nod) == 4
    big = nod[~nod.is_small].iloc[0]
    assert big.malignancy == [4, 5, 5, 5] and big.label == "malignant" and big.selected
    assert big.case_id == row.case_id and row.case_id.startswith("LIDC-IDRI-0001_s") and row.case_id.endswith(
        f"_n{big.nodule_index}")
    assert row.scan_id == f"lidc:{real_series.name}" and row.patient_id == "LIDC-IDRI-0001"
    assert row.status == "ok" and row.split == big.split and row.shape == [48, 48, 48]
    small = nod[nod.is_small]
    assert len(small) == 3 and small.label.isna().all() and (small.case_id == "").all()
    assert not small.selected.any() and small.malignancy.map(len).eq(0).all()

    # whole-series statistics: padding clamped to -1024 HU, then the 0.5/99.5 percentiles of the series
    hu = sitk.GetArrayFromImage(read_ct_series(real_series)[0]).astype(np.float64)
    assert row.air_clamped_fraction[0] == pytest.approx(np.mean(hu < -1024))
    hu = np.maximum(hu, -1024)
    lo, hi = np.percentile(hu, [0.5, 99.5])
    assert (row.p005[0], row.p995[0]) == (lo, hi) == (-1024.0, hi)
    clipped = np.clip(hu, lo, hi)
    assert row.mean[0] == pytest.approx(clipped.mean()) and row.std[0] == pytest.approx(clipped.std())

    grp = zarr.open_group(str(store), path=row.store_path, mode="r")
    image, label = grp["image"][...], grp["label"][...]
    assert image.shape == (1, 48, 48, 48) and image.dtype == np.float16
    assert label.shape == (48, 48, 48) and label.dtype == np.uint8
    attrs = grp.attrs.asdict()
    assert attrs["padded"] is True and attrs["fraction_outside"] == pytest.approx(8 / 48, abs=1 / 48)
    assert attrs["nodule"]["malignancy"] == [4, 5, 5, 5] and attrs["malignancy_label"] == "malignant"
    assert attrs["spacing"] == [1.0, 1.0, 1.0] and "med3d_complete" in attrs
    assert [s.get("listing_sha256", s.get("sha256"))[:8] for s in attrs["sources"]] == [
        h[:8] for h in row.source_sha256.split(";")]
    # outside the 16 slices the crop is -1000 HU air, z-scored with the series' statistics
    assert np.allclose(image[0, 0], (-1000 - row.mean[0]) / row.std[0], atol=2e-3)
    assert image[0, 24, 24, 24] * row.std[0] + row.mean[0] > -300  # soft tissue at the nodule centre

    # the label's volume (1 mm voxels) against the consensus computed from the source directly
    img, index = read_ct_series(real_series)
    nodules = group_marks(reader_marks(parse_lidc_xml(real_series / "69.xml"), img, index))
    source = consensus_mask(next(n for n in nodules if not n.is_small), img.GetSize()[::-1])
    source_mm3 = source.voxels * float(np.prod(img.GetSpacing()))
    assert label.sum() == row.foreground_voxels == pytest.approx(source_mm3, rel=0.05)
    assert attrs["nodule"]["consensus_mm3_source"] == pytest.approx(source_mm3)
    assert float(image[0][label > 0].astype(np.float32).mean()) * row.std[0] + row.mean[0] > -300

    assert load_domains(str(store)).set_index("domain").loc["lidc", "target_spacing"] == [1.0, 1.0, 1.0]
    res = _cli("info", store)
    assert res.exit_code == 0 and "LIDC nodules" in res.output and "malignant" in res.output
    res = _cli("info", store, "--json")
    (dom,) = json.loads(res.output)
    total = next(r for r in dom["nodules"] if r["split"] == "total")
    assert total == {"split": "total", "patients": 1, "nodules": 4, "small_lt_3mm": 3, "selected": 1,
                     "benign": 0, "malignant": 1, "unlabelled": 0, "crops": 1}


@pytest.fixture()
def sample(tmp_path) -> Path:
    raw = tmp_path / "raw"
    write_lidc_sample(raw, seed=0)
    return raw


def test_sample_labels_splits_and_resume(sample, tmp_path):
    store = str(tmp_path / "store")
    first = build_lidc(sample, store, PrepConfig(), **QUIET)
    assert (first.series, first.converted, first.skipped, first.failed) == (3, 2, 0, [])
    assert len(first.no_xml) == 1 and "LIDC-IDRI-0003" in first.no_xml[0]

    nod = load_nodules(store)
    assert sorted(set(nod.patient_id)) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]  # 0003 has no XML: no nodules
    p1 = nod[nod.patient_id == "LIDC-IDRI-0001"].set_index("label", drop=False)
    assert p1.loc["malignant", "malignancy"] == [4, 4, 5, 5] and p1.loc["malignant", "n_readers"] == 4
    assert p1.loc["benign", "malignancy"] == [1, 2, 2] and p1.loc["benign", "n_readers"] == 3
    assert (p1.loc[["malignant", "benign"], "case_id"] != "").all()
    (small,) = nod[nod.is_small].itertuples()
    assert small.label is None and small.case_id == "" and small.patient_id == "LIDC-IDRI-0001"
    (p2,) = nod[nod.patient_id == "LIDC-IDRI-0002"].itertuples()
    assert p2.label == "malignant" and not p2.selected and p2.case_id == "" and p2.n_rois_outside_series > 0

    cat = load_catalog(store)
    assert sorted(cat.case_id) == sorted(nod.case_id[nod.case_id != ""])
    for r in cat.itertuples():
        attrs = zarr.open_group(store, path=r.store_path, mode="r").attrs
        assert attrs["malignancy_label"] == nod.set_index("case_id").loc[r.case_id, "label"]
        assert r.foreground_voxels > 0 and r.shape == [48, 48, 48]

    # patient-level splits, the same in the catalog and the nodules table, from all patients found
    expected = patient_splits(["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"],
                              test_fraction=LidcParams().test_fraction, val_fraction=0.1, seed=0, domain="lidc")
    assert "test" in expected.values()  # at least one test patient among three
    for table in (cat, nod):
        assert (table.groupby("patient_id")["split"].nunique() == 1).all()
        assert all(table.split == table.patient_id.map(expected))

    # resume: nothing converted, nothing written; a touched but identical XML does not rebuild either
    before = _snapshot(store)
    xml = next(sample.glob("LIDC-IDRI-0001/*/*/*.xml"))
    os.utime(xml, ns=(xml.stat().st_atime_ns, xml.stat().st_mtime_ns + 10**9))
    second = build_lidc(sample, store, PrepConfig(), **QUIET)
    assert (second.converted, second.skipped, second.failed) == (0, 2, [])
    assert _snapshot(store) == before
    # new crop parameters rebuild every series
    third = build_lidc(sample, store, PrepConfig(), LidcParams(crop_mm=32.0), **QUIET)
    assert (third.converted, third.skipped) == (2, 0)
    assert set(load_catalog(store)["shape"].map(tuple)) == {(32, 32, 32)}


def test_sample_fewer_readers_selects_more_and_drops_stale_crops(sample, tmp_path):
    store = str(tmp_path / "store")
    build_lidc(sample, store, PrepConfig(), LidcParams(min_readers=2), **QUIET)
    nod = load_nodules(store)
    assert nod.selected.sum() == 3 and (nod.case_id != "").sum() == 3  # + LIDC-IDRI-0002's two-reader nodule
    build_lidc(sample, store, PrepConfig(), **QUIET)
    cat = load_catalog(store)
    assert len(cat) == 2
    root = zarr.open_group(store, mode="r")
    assert sorted(k for k in root["lidc"].keys() if not k.startswith("_")) == sorted(cat.case_id)


def write_other_series(folder: Path, n: int = 3) -> None:
    """A few 8x8 CT slices of another series, 2.5 mm apart (as tests/sources/test_lidc_series.py does)."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.9999.7"
    for k in range(n):
        image = sitk.Image(8, 8, 1, sitk.sitkInt16)
        for key, value in {"0008|0060": "CT", "0020|000e": uid, "0008|0018": f"{uid}.{k}",
                           "0020|0032": f"0\\0\\{2.5 * k}", "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"other-{k}.dcm"))
        writer.Execute(image)


@pytest.fixture()
def bad_root(real_dir, real_series, tmp_path) -> tuple[Path, dict[str, Path]]:
    """A good copy of the real patient next to broken copies of it, one problem each."""
    root = tmp_path / "lidc"
    rel = real_series.relative_to(real_dir / "lidc" / "LIDC-IDRI-0001")
    series = {}
    for n, name in enumerate(("good", "two_series", "missing_slice", "not_lidc_xml", "other_series_xml"), 1):
        series[name] = root / f"LIDC-IDRI-{n:04d}" / rel
        shutil.copytree(real_series, series[name])
    write_other_series(series["two_series"])
    (series["missing_slice"] / "-115.000000.dcm").unlink()
    (series["not_lidc_xml"] / "69.xml").write_text("<foo/>")
    xml = series["other_series_xml"] / "69.xml"
    xml.write_text(xml.read_text().replace(real_series.name, "1.2.3.4.5", 1))
    return root, series


def test_bad_series_fail_alone(bad_root, tmp_path):
    root, series = bad_root
    store = tmp_path / "store"
    res = _cli("build-lidc", root, store, "--workers", "0", "--no-progress")
    assert res.exit_code == 3, res.output
    assert "4 failed" in res.output and "1 converted" in res.output
    cat = load_catalog(str(store)).set_index("patient_id")
    assert len(cat) == 5 and cat.loc["LIDC-IDRI-0001", "status"] == "ok"
    err = cat[cat.status == "failed"]
    assert all(err.case_id.str.fullmatch(r"LIDC-IDRI-000\d_s[0-9a-f]{8}"))
    assert "holds 2 DICOM series" in err.loc["LIDC-IDRI-0002", "error"]
    assert str(series["two_series"]) in err.loc["LIDC-IDRI-0002", "error"]
    assert "missing slice between z=-117.50 and z=-112.50" in err.loc["LIDC-IDRI-0003", "error"]
    assert str(series["missing_slice"]) in err.loc["LIDC-IDRI-0003", "error"]
    assert "not an LIDC CT read" in err.loc["LIDC-IDRI-0004", "error"]
    assert str(series["not_lidc_xml"] / "69.xml") in err.loc["LIDC-IDRI-0004", "error"]
    assert "annotates series 1.2.3.4.5" in err.loc["LIDC-IDRI-0005", "error"]
    for patient, error in err.error.items():
        assert f"FAILED lidc/{err.loc[patient, 'case_id']}: {error}" in res.output
    nod = load_nodules(str(store))
    assert set(nod.patient_id) == {"LIDC-IDRI-0001"} and len(nod) == 4  # failed series add no nodules
    # fixing one series rebuilds it alone; the good one stays skipped
    (series["not_lidc_xml"] / "69.xml").write_bytes((series["good"] / "69.xml").read_bytes())
    again = build_lidc(root, str(store), PrepConfig(), **QUIET)
    assert (again.converted, again.skipped, len(again.failed)) == (1, 1, 3)


def test_patient_splits_proportion_and_determinism():
    patients = [f"LIDC-IDRI-{i:04d}" for i in range(1, 1011)]
    kw = {"test_fraction": LidcParams().test_fraction, "val_fraction": 0.1, "seed": 0, "domain": "lidc"}
    splits = patient_splits(patients, **kw)
    counts = collections.Counter(splits.values())
    assert 0.05 < counts["test"] / len(patients) < 0.12 and 0.06 < counts["val"] / len(patients) < 0.14
    assert patient_splits(list(reversed(patients)), **kw) == splits
    more = patient_splits(patients + ["LIDC-IDRI-2000"], **kw)
    assert all(more[p] == s for p, s in splits.items())  # adding a patient moves nobody
    assert "test" not in patient_splits(["a", "b"], **kw).values()  # the minimum needs three patients
    assert collections.Counter(patient_splits(["a", "b", "c"], **kw).values())["test"] == 1
    with pytest.raises(ValueError, match="test_fraction"):
        patient_splits(patients, **{**kw, "test_fraction": 1.0})


def test_dask_local_cluster_matches_in_process(sample, tmp_path):
    """`--workers 1` runs the series on a LocalCluster (tasks and results pickle) with the same store."""
    local, dask = tmp_path / "local", tmp_path / "dask"
    assert _cli("build-lidc", sample, local, "--workers", "0", "--no-progress").exit_code == 0
    res = _cli("build-lidc", sample, dask, "--workers", "1", "--no-progress")
    assert res.exit_code == 0, res.output
    a, b = load_catalog(str(local)), load_catalog(str(dask))
    cols = ["case_id", "split", "p005", "p995", "mean", "std", "foreground_voxels", "params_hash"]
    assert a[cols].equals(b[cols])
    assert load_nodules(str(local)).equals(load_nodules(str(dask)))
    for path in a.store_path:
        ga, gb = (zarr.open_group(str(s), path=path, mode="r") for s in (local, dask))
        assert np.array_equal(ga["image"][...], gb["image"][...]) and np.array_equal(ga["label"][...],
                                                                                     gb["label"][...])
