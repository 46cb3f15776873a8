"""LIDC series discovery and DICOM reading on the real 16 slices, plus the folder errors the job must report."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.sources.lidc_series import LidcSeriesError, find_lidc_series, read_ct_series

LIDC = Path(__file__).resolve().parents[1] / "data" / "real" / "lidc"
STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


@pytest.fixture(scope="module")
def series_dir() -> Path:
    path = LIDC / "LIDC-IDRI-0001" / STUDY / SERIES
    if not path.is_dir():
        pytest.skip(f"real LIDC data not found at {LIDC}")
    return path


@pytest.fixture(scope="module")
def real(series_dir):
    return read_ct_series(series_dir)


def test_find_real_series(series_dir):
    refs = find_lidc_series(LIDC)
    assert len(refs) == 1
    ref = refs[0]
    assert (ref.patient_id, ref.study_uid, ref.series_uid) == ("LIDC-IDRI-0001", STUDY, SERIES)
    assert ref.dicom_dir == series_dir and ref.xml_path == series_dir / "69.xml"
    assert find_lidc_series(LIDC / "LIDC-IDRI-0001") == refs  # a patient folder works as root too


def test_real_series_geometry_and_order(real):
    image, index = real
    assert image.GetSize() == (512, 512, 16) and len(index) == 16
    assert np.allclose(image.GetSpacing(), (0.703125, 0.703125, 2.5))
    assert np.allclose(image.GetOrigin(), (-166.0, -171.699997, -132.5))
    assert np.allclose(index.z_mm, np.arange(-132.5, -94.9, 2.5)) and index.gap_mm == 2.5
    assert [Path(f).name for f in index.files] == [f"{z:.6f}.dcm" for z in index.z_mm]
    assert len(set(index.sop_uids)) == 16
    assert image.GetPixelID() == sitk.sitkInt16


def test_real_series_is_hu(real):
    """Stored values + RescaleIntercept (-1024): the files are uncompressed, pixel data at their end."""
    image, index = real
    hu = sitk.GetArrayViewFromImage(image)
    for k in (0, 9):
        raw = np.frombuffer(Path(index.files[k]).read_bytes()[-512 * 512 * 2 :], "<i2").reshape(512, 512)
        assert np.array_equal(raw.astype(np.int32) - 1024, hu[k])
    assert hu.min() == -2048  # padding outside the FOV is kept for the caller to clamp
    assert -1000 < np.median(hu[hu > -1024]) < 0


def test_slice_lookup(real):
    _, index = real
    assert index.slice_of(index.sop_uids[3], 999.0) == 3  # SOP UID wins over z
    assert index.slice_of("unknown", -124.2) == 3  # nearest z within half a gap
    assert index.slice_of("unknown", -135.1) is None and index.slice_of("unknown", -175.0) is None
    assert index.continuous_index(-175.0) == pytest.approx(-17.0)


def test_missing_slice_raises_naming_the_gap(series_dir, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(series_dir, folder)
    (folder / "-115.000000.dcm").unlink()
    with pytest.raises(LidcSeriesError, match=r"missing slice between z=-117\.50 and z=-112\.50") as info:
        read_ct_series(folder)
    assert str(folder) in str(info.value)


def write_slices(folder: Path, series_uid: str, n: int = 3) -> None:
    """A few 8x8 CT slices of another series, 2.5 mm apart."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        image = sitk.Image(8, 8, 1, sitk.sitkInt16)
        for key, value in {"0008|0060": "CT", "0020|000d": STUDY, "0020|000e": series_uid,
                           "0008|0018": f"{series_uid}.{k}", "0020|0032": f"0\\0\\{2.5 * k}",
                           "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"other-{k}.dcm"))
        writer.Execute(image)


def test_two_series_in_one_folder_raise(series_dir, tmp_path):
    for f in sorted(series_dir.glob("*.dcm"))[:3]:
        shutil.copy(f, tmp_path / f.name)
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.9999.7")
    with pytest.raises(LidcSeriesError, match="holds 2 DICOM series") as info:
        read_ct_series(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and SERIES in message and "1.2.826.0.1.3680043.2.9999.7" in message


def test_empty_folder_raises(tmp_path):
    with pytest.raises(LidcSeriesError, match="no DICOM series"):
        read_ct_series(tmp_path)


def test_unreadable_edge_slice_is_named_not_dropped(series_dir, tmp_path):
    # GDCM leaves unparsable files out of the series: a corrupt first slice must not silently shorten the volume
    folder = tmp_path / "series"
    shutil.copytree(series_dir, folder)
    first = min(folder.glob("*.dcm"))
    first.write_bytes(b"not a DICOM file")
    with pytest.raises(LidcSeriesError, match="1 unreadable DICOM file") as info:
        read_ct_series(folder)
    assert str(first) in str(info.value)


def test_scan_survives_an_unreadable_first_file(series_dir, tmp_path):
    # the scan reads one header per series: a corrupt one must not stop the listing of every series
    folder = tmp_path / "LIDC-IDRI-0001" / "study" / "series"
    shutil.copytree(series_dir, folder)
    min(folder.glob("*.dcm")).write_bytes(b"not a DICOM file")
    (ref,) = find_lidc_series(tmp_path)
    assert ref.series_uid == SERIES and ref.dicom_dir == folder
