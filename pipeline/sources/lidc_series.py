"""Find LIDC-IDRI CT series on disk and read one DICOM series into a HU volume.

Layout: ``ROOT/LIDC-IDRI-NNNN/<study>/<series>/*.dcm`` plus one ``*.xml`` reader file per series. Folder names are
UIDs in the original release but descriptive names in newer TCIA downloads, so UIDs come from the DICOM header.
Slices are ordered by GDCM's series sorting (position along the slice normal), never by file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["LidcSeriesError", "LidcSeriesRef", "SliceIndex", "find_lidc_series", "read_ct_series"]

SOP_UID, IMAGE_POSITION, IMAGE_ORIENTATION = "0008|0018", "0020|0032", "0020|0037"
STUDY_UID, SERIES_UID, MODALITY = "0020|000d", "0020|000e", "0008|0060"
GAP_TOLERANCE = 0.10  # relative deviation from the median slice gap that counts as a missing slice


class LidcSeriesError(ValueError):
    """A series folder cannot be read as one evenly spaced CT volume."""


@dataclass(frozen=True)
class LidcSeriesRef:
    """One series found under a LIDC root: patient, UIDs, DICOM folder and the reader XML (None if absent)."""

    patient_id: str
    study_uid: str
    series_uid: str
    dicom_dir: Path
    xml_path: Path | None


@dataclass(frozen=True, eq=False)
class SliceIndex:
    """Per-slice metadata in array order (slice k is array[k] of the (z, y, x) volume).

    ``sop_uids[k]`` is the SOPInstanceUID, ``z_mm[k]`` the ImagePositionPatient z (mm), ``files[k]`` the file.
    """

    sop_uids: tuple[str, ...]
    z_mm: np.ndarray
    files: tuple[str, ...]
    _by_sop: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_sop", {uid: k for k, uid in enumerate(self.sop_uids)})

    def __len__(self) -> int:
        return len(self.sop_uids)

    @property
    def gap_mm(self) -> float:
        """Median absolute distance between consecutive slice z positions (mm)."""
        return float(np.median(np.abs(np.diff(self.z_mm)))) if len(self) > 1 else float("nan")

    def slice_of(self, sop_uid: str, z_mm: float) -> int | None:
        """Slice index of an annotation: by SOPInstanceUID first, else the nearest z within half a gap."""
        k = self._by_sop.get(sop_uid)
        if k is not None:
            return k
        if len(self) == 0:
            return None
        nearest = int(np.argmin(np.abs(self.z_mm - z_mm)))
        return nearest if abs(self.z_mm[nearest] - z_mm) <= 0.5 * self.gap_mm else None

    def continuous_index(self, z_mm: float) -> float:
        """Continuous slice index of a z position (mm), extrapolated linearly beyond the series."""
        if len(self) < 2:
            return 0.0
        step = (self.z_mm[-1] - self.z_mm[0]) / (len(self) - 1)
        return float((z_mm - self.z_mm[0]) / step)


def find_lidc_series(root: str | Path, *, modality: str | None = "CT") -> list[LidcSeriesRef]:
    """List the series under a LIDC root (``LIDC-IDRI-*/<study>/<series>/``), sorted by patient and folder.

    ``root`` may also be a single patient folder. UIDs are read from one DICOM header per series (folder
    names as fallback); series of another ``modality`` (LIDC also holds chest X-rays) are skipped unless
    ``modality=None``. ``xml_path`` is the series' ``LidcReadMessage`` XML, or None when there is none.
    """
    root = Path(os.path.abspath(root))  # the catalog records absolute paths (usable from any folder)
    if not root.is_dir():
        raise FileNotFoundError(f"LIDC root {root} is not a folder")
    patients = sorted(p for p in root.glob("LIDC-IDRI-*") if p.is_dir())
    if not patients and root.name.startswith("LIDC-IDRI-"):
        patients = [root]
    refs = []
    for patient in patients:
        for study in sorted(p for p in patient.iterdir() if p.is_dir()):
            for series in sorted(p for p in study.iterdir() if p.is_dir()):
                dicoms = sorted(series.glob("*.dcm"))
                if not dicoms:
                    continue
                tags = _first_header(dicoms, (STUDY_UID, SERIES_UID, MODALITY))
                if modality is not None and tags[MODALITY] not in ("", modality):
                    continue
                refs.append(
                    LidcSeriesRef(
                        patient_id=patient.name,
                        study_uid=tags[STUDY_UID] or study.name,
                        series_uid=tags[SERIES_UID] or series.name,
                        dicom_dir=series,
                        xml_path=_find_xml(series),
                    )
                )
    return refs


def _find_xml(series_dir: Path) -> Path | None:
    """The series' reader XML; when several XMLs lie there, the one whose root is LidcReadMessage."""
    xmls = sorted(series_dir.glob("*.xml"))
    if len(xmls) <= 1:
        return xmls[0] if xmls else None
    for xml in xmls:
        with xml.open("rb") as fh:
            if b"LidcReadMessage" in fh.read(4096):
                return xml
    return None


def _first_header(paths: list[Path], tags: tuple[str, ...]) -> dict[str, str]:
    """Tags of the first readable file (all '' when none is): an unreadable file must not stop the scan of
    every other series; converting the series then fails, naming the file (:func:`read_ct_series`)."""
    for path in paths:
        try:
            return _header(path, tags)
        except RuntimeError:
            continue
    return dict.fromkeys(tags, "")


def _header(path: Path | str, tags: tuple[str, ...]) -> dict[str, str]:
    """Selected DICOM tags of one file (header only, no pixel data); missing tags map to ''."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {t: reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "" for t in tags}


def read_ct_series(dicom_dir: str | Path, max_voxels: int | None = None) -> tuple[sitk.Image, SliceIndex]:
    """Read the one DICOM series in ``dicom_dir`` as a HU volume and its per-slice index.

    Slices are ordered by GDCM (position along the slice normal). The image keeps the scanner's geometry and
    raw HU, including padding values (-2048/-3024) outside the field of view; SimpleITK applies
    RescaleSlope/Intercept. Integer data is returned as int16. The z spacing is set to the median slice gap.

    Raises LidcSeriesError naming the folder when it holds no series or several, or when slice gaps deviate
    from the median gap by more than 10% (a missing slice), or when slices share a position, or when slices ×
    rows × columns exceed ``max_voxels`` (checked from the headers, before any pixel is read).
    """
    folder = str(dicom_dir)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series_ids:
        raise LidcSeriesError(f"{folder}: no DICOM series found")
    if len(series_ids) > 1:
        raise LidcSeriesError(
            f"{folder}: holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); expected exactly one"
        )
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_ids[0]))
    # GDCM silently leaves out files it cannot parse: a corrupt first or last slice would shorten the volume.
    listed = {os.path.realpath(f) for f in files}
    unread = sorted(str(p) for p in Path(folder).glob("*.dcm") if p.is_file() and os.path.realpath(p) not in listed)
    if unread:
        raise LidcSeriesError(f"{folder}: {len(unread)} unreadable DICOM file(s): {', '.join(unread[:5])}")
    if len(files) < 2:
        raise LidcSeriesError(f"{folder}: only {len(files)} slice(s); a volume needs at least 2")
    headers = [_header(f, (SOP_UID, IMAGE_POSITION, IMAGE_ORIENTATION)) for f in files]
    if max_voxels is not None:
        rows_cols = _header(files[0], ("0028|0010", "0028|0011"))
        try:
            n_voxels = len(files) * int(rows_cols["0028|0010"]) * int(rows_cols["0028|0011"])
        except ValueError:
            raise LidcSeriesError(f"{files[0]}: no usable Rows/Columns in the DICOM header") from None
        if n_voxels > max_voxels:
            raise LidcSeriesError(f"{folder}: {len(files)} slices of {rows_cols['0028|0010']} × "
                                  f"{rows_cols['0028|0011']} = {n_voxels:,} voxels, more than --max-voxels "
                                  f"{max_voxels:,}")
    positions = np.array([_floats(h[IMAGE_POSITION], 3, f) for h, f in zip(headers, files)])
    orientation = _floats(headers[0][IMAGE_ORIENTATION], 6, files[0])
    normal = np.cross(orientation[:3], orientation[3:])
    _check_spacing(folder, positions @ normal, positions[:, 2])
    index = SliceIndex(sop_uids=tuple(h[SOP_UID] for h in headers), z_mm=positions[:, 2].copy(), files=files)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LidcSeriesError(f"{folder}: expected a scalar 3D volume, got {image.GetDimension()}D")
    if image.GetPixelID() in (sitk.sitkInt32, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkInt16):
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if -32768 <= stats.GetMinimum() and stats.GetMaximum() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
    spacing = list(image.GetSpacing())
    spacing[2] = float(np.median(np.abs(np.diff(positions @ normal))))
    image.SetSpacing(spacing)
    return image, index


def _floats(text: str, n: int, path: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=float)
    except ValueError:
        values = np.array([])
    if values.shape != (n,):
        raise LidcSeriesError(f"{path}: malformed DICOM position/orientation {text!r}")
    return values


def _check_spacing(folder: str, along_normal: np.ndarray, z_mm: np.ndarray) -> None:
    """Raise if slices repeat a position or a gap deviates > 10% from the median gap (missing slice)."""
    gaps = np.diff(along_normal)
    if np.any(np.abs(gaps) < 1e-3):
        k = int(np.argmin(np.abs(gaps)))
        raise LidcSeriesError(f"{folder}: two slices share position z={z_mm[k]:.2f} mm (duplicate slice)")
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > GAP_TOLERANCE * abs(median))
    if bad.size:
        where = "; ".join(f"between z={z_mm[k]:.2f} and z={z_mm[k + 1]:.2f}" for k in bad)
        raise LidcSeriesError(
            f"{folder}: uneven slice spacing (median gap {abs(median):.3f} mm), missing slice {where}"
        )
