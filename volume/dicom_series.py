"""One DICOM series folder (single-frame slices, as scanners and PACS exports write them) as one 3D image.

Headers first: :func:`scan_series` reads every file's header (no pixel data) through SimpleITK's GDCM, checks
that the folder holds exactly one series of evenly spaced, parallel, single-frame slices of one size, no more
than ``max_voxels``, and orders the slices along the slice normal (``ImageOrientationPatient``'s row × column
direction), never by file name. :func:`read_series` then reads the pixels in that order: slice ``k`` of the
image (array index ``[k]`` of its (z, y, x) array) is ``files[k]``, row for row and column for column as stored,
so a mask on this image is a mask on the source slices (what a DICOM Segmentation object needs).

The geometry is the headers': origin = the first slice's ``ImagePositionPatient``, direction = (row direction,
column direction, normal), spacing = (column spacing, row spacing, median gap along the normal) in mm, LPS, as
DICOM and SimpleITK both use. SimpleITK only (the base install); pydicom is needed only to write DICOM-SEG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .diagnose import one_line
from .value_checks import MAX_SPACING_MM, MIN_SPACING_MM, check_direction

__all__ = ["DicomSeries", "is_dicom_file", "is_series_folder", "read_series", "scan_series", "series_files",
           "series_modality"]

GAP_TOLERANCE = 0.10
"""Relative deviation of a slice gap from the median gap that counts as a missing slice (the LIDC reader's)."""

_TAGS = {"sop": "0008|0018", "series": "0020|000e", "modality": "0008|0060", "position": "0020|0032",
         "orientation": "0020|0037", "rows": "0028|0010", "columns": "0028|0011", "spacing": "0028|0030",
         "frames": "0028|0008"}


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """A DICOM Part 10 file: the ``DICM`` marker after the 128-byte preamble, whatever the file's name."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def series_files(folder: str | os.PathLike[str]) -> tuple[Path, ...]:
    """The DICOM files directly in ``folder``, sorted by name (hidden files left out)."""
    return tuple(sorted(p for p in Path(folder).iterdir()
                        if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)))


def is_series_folder(path: str | os.PathLike[str]) -> bool:
    """A folder holding DICOM files directly (not in subfolders)."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() and not p.name.startswith(".") and is_dicom_file(p)
                                 for p in path.iterdir())


@dataclass(frozen=True)
class DicomSeries:
    """What the headers of one series folder say, slices in image order (``files[k]`` is slice ``k``)."""

    folder: Path
    files: tuple[Path, ...]
    sop_uids: tuple[str, ...]
    series_uid: str
    modality: str
    rows: int
    columns: int
    positions: np.ndarray
    """(n, 3) ``ImagePositionPatient`` of each slice, mm (LPS)."""
    orientation: np.ndarray
    """(6,) ``ImageOrientationPatient``: row direction (along a row, x), then column direction (y)."""
    pixel_spacing: tuple[float, float]
    """``PixelSpacing``: (between rows, between columns) mm, i.e. (y, x)."""
    gap: float
    """Median distance between consecutive slices along the normal, mm."""

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        return (self.columns, self.rows, len(self.files))

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return (self.pixel_spacing[1], self.pixel_spacing[0], self.gap)

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.positions[0])

    @property
    def direction(self) -> tuple[float, ...]:
        """3×3 row-major, columns (row direction, column direction, normal), as SimpleITK's ``GetDirection``."""
        return tuple(float(v) for v in np.stack([self.orientation[:3], self.orientation[3:], self.normal], 1).ravel())


def _header(path: Path) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot read the DICOM header ({one_line(exc)})") from None
    return {k: reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "" for k, t in _TAGS.items()}


def _floats(text: str, n: int, path: Path, tag: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")], dtype=float)
    except ValueError:
        values = np.array([])
    if values.shape != (n,) or not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: {tag} is {text!r}, not {n} numbers; a slice without geometry cannot be placed")
    return values


def scan_series(folder: str | os.PathLike[str], max_voxels: int | None = None) -> DicomSeries:
    """Read and check the headers of every DICOM file in ``folder`` (no pixel data). Raises ValueError naming
    the folder or file: no DICOM file, an unreadable header, several series, a multi-frame file, fewer than 2
    slices, slices of different sizes or orientations, slices not stacked along their normal (a gantry tilt),
    two slices at one position, a gap off the median by more than 10 % (a missing slice), direction cosines that
    are not orthonormal, a voxel size outside the build's bounds, or more than ``max_voxels`` voxels."""
    folder = Path(folder)
    files = list(series_files(folder))
    if not files:
        raise ValueError(f"{folder}: no DICOM file in this folder (give the folder of one series' slices)")
    heads = [_header(f) for f in files]
    series = sorted({h["series"] for h in heads})
    if len(series) > 1:
        raise ValueError(f"{folder}: holds {len(series)} DICOM series ({', '.join(series[:4])}); put each series "
                         "in its own folder")
    multi = next((f for f, h in zip(files, heads) if h["frames"] not in ("", "1")), None)
    if multi is not None:
        raise ValueError(f"{multi}: a multi-frame DICOM file; predict reads series of single-frame slices")
    if len(files) < 2:
        raise ValueError(f"{folder}: only {len(files)} slice; a volume needs at least 2")
    sizes = {(h["rows"], h["columns"]) for h in heads}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: slices of different sizes (rows, columns) {sorted(sizes)}; not one volume")
    try:
        rows, columns = int(heads[0]["rows"]), int(heads[0]["columns"])
    except ValueError:
        raise ValueError(f"{files[0]}: no usable Rows/Columns in the DICOM header") from None
    n_voxels = len(files) * rows * columns
    if max_voxels is not None and n_voxels > max_voxels:
        raise ValueError(f"{folder}: {len(files)} slices of {rows} × {columns} = {n_voxels:,} voxels, more than "
                         f"--max-voxels {max_voxels:,}")
    orients = [_floats(h["orientation"], 6, f, "ImageOrientationPatient") for f, h in zip(files, heads)]
    if any(not np.allclose(o, orients[0], atol=1e-4) for o in orients):
        raise ValueError(f"{folder}: slices with different ImageOrientationPatient; not one volume")
    positions = np.array([_floats(h["position"], 3, f, "ImagePositionPatient") for f, h in zip(files, heads)])
    spacing = _floats(heads[0]["spacing"], 2, files[0], "PixelSpacing")
    if not np.all(spacing > 0):
        raise ValueError(f"{files[0]}: PixelSpacing {tuple(spacing)} is not two positive sizes (mm)")
    normal = np.cross(orients[0][:3], orients[0][3:])
    check_direction(str(files[0]), np.stack([orients[0][:3], orients[0][3:], normal], 1).ravel())
    order = np.argsort(positions @ normal, kind="stable")
    files, heads, positions = [files[i] for i in order], [heads[i] for i in order], positions[order]
    gap = _check_stack(folder, files, positions, normal, float(min(spacing)))
    if not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in (*spacing, gap)):
        raise ValueError(f"{folder}: voxel size {spacing[1]:g} × {spacing[0]:g} × {gap:g} mm (PixelSpacing, slice "
                         f"gap) outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm: a damaged header")
    return DicomSeries(folder=folder, files=tuple(files), sop_uids=tuple(h["sop"] for h in heads),
                       series_uid=series[0], modality=heads[0]["modality"].upper(), rows=rows, columns=columns,
                       positions=positions, orientation=orients[0], pixel_spacing=(float(spacing[0]),
                                                                                   float(spacing[1])), gap=gap)


def _check_stack(folder: Path, files: list[Path], positions: np.ndarray, normal: np.ndarray, pixel: float) -> float:
    """The median gap along ``normal`` of slices sorted along it; refuses ties, missing slices and shear."""
    along = positions @ normal
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise ValueError(f"{folder}: {files[k].name} and {files[k + 1].name} lie at the same position; "
                         "two series mixed, or a duplicated slice")
    gap = float(np.median(gaps))
    off = np.abs(gaps - gap) > GAP_TOLERANCE * gap
    if np.any(off):
        k = int(np.argmax(off))
        raise ValueError(f"{folder}: {gaps[k]:.3g} mm between {files[k].name} and {files[k + 1].name}, the median "
                         f"gap is {gap:.3g} mm: a missing slice or uneven spacing")
    lateral = (positions - positions[0]) - np.outer(along - along[0], normal)
    if np.max(np.linalg.norm(lateral, axis=1)) > 0.1 * pixel:
        raise ValueError(f"{folder}: the slices are not stacked along their normal (a gantry tilt or sheared "
                         "stack); resample the series to an orthogonal grid first")
    return gap


def read_series(series: DicomSeries) -> sitk.Image:
    """The pixels of ``series`` (rescale slope and intercept applied, e.g. CT in HU) as one 3D image with the
    headers' geometry; slice ``k`` is ``series.files[k]``. Raises ValueError naming the folder."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"{series.folder}: cannot read the DICOM pixels ({one_line(exc)})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{series.folder}: expected scalar slices, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per pixel (a colour series)")
    if image.GetSize() != series.size_xyz:
        raise ValueError(f"{series.folder}: read {image.GetSize()} voxels, the headers say {series.size_xyz}")
    if image.GetPixelID() in (sitk.sitkInt32, sitk.sitkUInt16, sitk.sitkUInt32):  # GDCM widens CT's int16
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if -32768 <= stats.GetMinimum() and stats.GetMaximum() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
    image.SetOrigin(series.origin)
    image.SetDirection(series.direction)
    image.SetSpacing(series.spacing_xyz)
    return image


def series_modality(series: DicomSeries, given: str | None, trained: str) -> str:
    """The modality to preprocess ``series`` as: its ``Modality`` tag, which must be CT or MR, agree with
    ``given`` (``--modality``) and fit ``trained`` (the run's: CT, MR, or CT/MR for a mixed domain). Raises
    ValueError naming the folder."""
    mod = series.modality
    if mod not in ("CT", "MR"):
        raise ValueError(f"{series.folder}: a {mod or 'modality-less'} series; predict reads CT and MR series")
    if given is not None and given != mod:
        raise ValueError(f"{series.folder}: --modality {given}, but the series says {mod}")
    if mod not in trained.split("/"):
        raise ValueError(f"{series.folder}: a {mod} series, and the run was trained on {trained} scans; predict "
                         f"it with a run fine-tuned on {mod}")
    return mod
