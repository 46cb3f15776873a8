"""volume.dicom_series on the real LIDC slices: order along the normal whatever the file names, the headers'
geometry, HU pixels as pydicom reads them, and the refusals (a missing slice, a duplicated one, two series, too
many voxels), each before any pixel is read."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from volume.dicom_series import is_series_folder, read_series, scan_series, series_modality
from volume.geometry import read_channels, read_header


@pytest.fixture(scope="module")
def series_dir(real_dir) -> Path:
    [folder] = {p.parent for p in (real_dir / "lidc").rglob("*.dcm")}
    return folder


def _copy(series_dir: Path, dest: Path, names=None) -> Path:
    dest.mkdir(parents=True)
    files = sorted(series_dir.glob("*.dcm"))
    for i, f in enumerate(files):
        shutil.copy(f, dest / (names[i] if names else f.name))
    return dest


def test_slices_are_ordered_along_the_normal_not_by_name(series_dir, tmp_path):
    n = len(list(series_dir.glob("*.dcm")))
    scrambled = _copy(series_dir, tmp_path / "s", names=[f"IM{(7 * i) % n:04d}" for i in range(n)])  # no .dcm
    assert is_series_folder(scrambled) and not is_series_folder(tmp_path)
    series = scan_series(scrambled)
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in series.files]
    assert z == sorted(z) and len(z) == 16 and z[0] == -132.5 and z[-1] == -95.0
    assert series.modality == "CT" and series.size_xyz == (512, 512, 16)
    assert series.spacing_xyz == pytest.approx((0.703125, 0.703125, 2.5))
    assert series.origin == pytest.approx((-166.0, -171.699997, -132.5))
    image = read_series(series)
    assert image.GetPixelID() == sitk.sitkInt16 and image.GetOrigin() == pytest.approx(series.origin)
    hu = sitk.GetArrayFromImage(image)
    for k in (0, 9, 15):
        ds = pydicom.dcmread(series.files[k])
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu[k], expected)
    # geometry's readers take the folder as one scan
    header = read_header(str(scrambled))
    assert header.size == (512, 512, 16) and header.origin == pytest.approx(series.origin)
    [channel] = read_channels(str(scrambled))
    assert np.array_equal(sitk.GetArrayViewFromImage(channel), hu)


def test_a_missing_slice_is_refused(series_dir, tmp_path):
    folder = _copy(series_dir, tmp_path / "s")
    (folder / "-115.000000.dcm").unlink()
    with pytest.raises(ValueError, match=r"5 mm between -117\.500000\.dcm and -112\.500000\.dcm.*missing slice"):
        scan_series(folder)


def test_a_duplicated_slice_and_two_series_are_refused(series_dir, tmp_path):
    folder = _copy(series_dir, tmp_path / "dup")
    shutil.copy(folder / "-115.000000.dcm", folder / "copy.dcm")
    with pytest.raises(ValueError, match="lie at the same position"):
        scan_series(folder)
    other = _copy(series_dir, tmp_path / "two")
    ds = pydicom.dcmread(other / "-115.000000.dcm")
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.save_as(other / "-115.000000.dcm")
    with pytest.raises(ValueError, match=r"holds 2 DICOM series \(1\.2\.3\.4, "):
        scan_series(other)


def test_too_many_voxels_is_refused_from_the_headers(series_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", lambda self: calls.append(1))
    with pytest.raises(ValueError, match=r"16 slices of 512 × 512 = 4,194,304 voxels, more than --max-voxels"):
        scan_series(series_dir, max_voxels=1_000_000)
    assert calls == []


def test_the_modality_must_fit_the_run(series_dir):
    series = scan_series(series_dir)
    assert series_modality(series, None, "CT") == "CT"
    assert series_modality(series, "CT", "CT/MR") == "CT"
    with pytest.raises(ValueError, match="a CT series, and the run was trained on MR scans"):
        series_modality(series, None, "MR")
    with pytest.raises(ValueError, match="--modality MR, but the series says CT"):
        series_modality(series, "MR", "CT/MR")


def test_a_gantry_tilt_is_refused(series_dir, tmp_path):
    """Slices whose positions drift in-plane as they go (a tilted gantry): the stack is sheared, no 3D grid."""
    folder = _copy(series_dir, tmp_path / "tilt")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.4 * (z + 132.5), z]  # 0.4 mm per mm along z: about 22 degrees
        ds.save_as(f)
    with pytest.raises(ValueError, match="not stacked along their normal"):
        scan_series(folder)


@pytest.mark.parametrize("tag, value, message", [
    ("PixelSpacing", [300.0, 300.0], r"voxel size 300 × 300 × 2\.5 mm .* outside"),
    ("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.5, 1.0, 0.0], "direction cosines are not orthonormal"),
])
def test_a_damaged_geometry_is_refused(series_dir, tmp_path, tag, value, message):
    folder = _copy(series_dir, tmp_path / "bad")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        setattr(ds, tag, value)
        ds.save_as(f)
    with pytest.raises(ValueError, match=message):
        scan_series(folder)
