"""``predict --format dicom-seg``: a DICOM Segmentation object (highdicom) referencing the source series.

The input must be a DICOM series folder (:mod:`volume.dicom_series`): predict reads it as one image whose slice
``k`` is the series' ``k``-th slice along its normal, resamples it to the run's grid, segments, and pastes the
label map back onto that image's grid, index for index. So the mask is already on the source series' grid, one
mask slice per source slice, rows and columns as stored; this module only checks that (size, origin, direction
against the headers; each slice's UID and position as pydicom reads them) and hands the source datasets, in that order, to highdicom,
which takes each frame's position, orientation and pixel spacing from its source slice.

What the object holds:

- BINARY segmentation, one segment per foreground class of the run (value ``c`` of the mask is segment ``c``),
  labelled with the task's class names (``finetune.json``'s ``classes``; a binary task that records none, liver
  or lung, names its one segment after the task); property category and type "Tissue" (SNOMED CT 85756007),
  the generic pair 3D Slicer also gives a new segment, since a class name maps to no code we could trust;
  algorithm type AUTOMATIC, algorithm "Med3D", version the package's, parameters the run and the task.
- Every segment has one frame per source slice, empty frames included (``omit_empty_frames=False``), so a
  class the network did not find is an all-zero segment that is still described: the reader sees that it was
  looked for. predict says so in a line. (highdicom writes such segments; asked to omit empty frames
  when all are empty, it warns and keeps them all.)
- Each frame references its source slice (``DerivationImageSequence``), the object the whole series
  (``ReferencedSeriesSequence``), with the source's patient, study and frame of reference.

highdicom and pydicom are the ``dicom`` extra: ``pip install 'med3d[dicom]'``; without them the format is refused
before any scan is read.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from volume.dicom_series import DicomSeries, is_series_folder, scan_series

if TYPE_CHECKING:
    from model.evaluation.predict import ScanCase

__all__ = ["DicomSegMasks", "build_segmentation", "segment_names"]

_LO = 64  # characters of a DICOM LO value (segment label, series description)


def _require() -> Any:
    try:
        import highdicom
    except ImportError:
        raise ValueError("--format dicom-seg needs the highdicom package: pip install 'med3d[dicom]'") from None
    return highdicom


def segment_names(spec: dict[str, Any]) -> list[str]:
    """The names of classes 1..n of a run (its ``finetune.json`` as ``spec``): ``classes`` without the
    background; a run that records none (liver, lung: binary) has one class named after its task."""
    classes = spec.get("classes")
    if classes:
        return [str(c) for c in list(classes)[1:]]
    return [str(spec["task"])]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("med3d")
    except PackageNotFoundError:
        return "unknown"


def _check_grid(mask: sitk.Image, series: DicomSeries) -> None:
    """The mask must lie on the series' grid index for index (predict pastes it back there)."""
    same = (mask.GetSize() == series.size_xyz and np.allclose(mask.GetOrigin(), series.origin, atol=1e-3)
            and np.allclose(mask.GetDirection(), series.direction, atol=1e-5))
    if not same:
        raise ValueError(f"{series.folder}: the mask (size {mask.GetSize()}, origin {mask.GetOrigin()}) is not on "
                         f"the series' grid (size {series.size_xyz}, origin {series.origin}); the SEG would not "
                         "match its slices")


def build_segmentation(mask: sitk.Image, series: DicomSeries, names: list[str], *, run: str | Path,
                       task: str) -> tuple[Any, list[str]]:
    """The highdicom ``Segmentation`` of ``mask`` (a label map on ``series``' grid, values 0..len(names)) and the
    names of the segments without a voxel. Raises ValueError naming the folder."""
    import pydicom
    from pydicom.sr.codedict import codes

    hd = _require()
    _check_grid(mask, series)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in sources])
    if (tuple(str(s.SOPInstanceUID) for s in sources) != series.sop_uids
            or not np.allclose(positions, series.positions, atol=1e-3)):  # GDCM and pydicom read one header
        raise ValueError(f"{series.folder}: pydicom and GDCM disagree on the slices' UIDs or positions")
    labels = sitk.GetArrayFromImage(mask)
    top = int(labels.max()) if labels.size else 0
    if labels.min() < 0 or top > len(names):
        raise ValueError(f"{series.folder}: the mask holds values {int(labels.min())}..{top}, the run has "
                         f"{len(names)} classes besides the background ({', '.join(names)})")
    labels = labels.astype(np.uint8 if len(names) < 256 else np.uint16)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Med3D", family=codes.cid7162.ArtificialIntelligence, version=_version()[:_LO],
        parameters={"run": Path(run).name, "task": task})
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:_LO], segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for number, name in enumerate(names, start=1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="Med3D", manufacturer_model_name=f"Med3D {task}"[:_LO],
        software_versions=_version(), device_serial_number=Path(run).name[:_LO], omit_empty_frames=False,
        content_label="MED3D", content_description=f"Med3D {task} run {Path(run).name}"[:_LO])
    seg.SeriesDescription = f"Med3D {task} segmentation ({Path(run).name})"[:_LO]
    present = set(np.unique(labels).tolist())
    return seg, [name for number, name in enumerate(names, start=1) if number not in present]


class DicomSegMasks:
    """``--format dicom-seg``: ``SERIESFOLDER_seg.dcm`` per DICOM series input (see the module docstring)."""

    def __init__(self, run: str | Path, spec: dict[str, Any], log: Callable[[str], None]) -> None:
        _require()
        self.run, self.task, self.log = Path(run), str(spec["task"]), log
        self.names = segment_names(spec)

    def name(self, case: ScanCase) -> str:
        if not is_series_folder(case.scan):
            raise ValueError(f"{case.scan}: --format dicom-seg needs a DICOM series input (a folder of one "
                             "series' slices) for the SEG to reference; this is no DICOM series: use --format "
                             "nifti")
        return f"{case.scan.name}_seg.dcm"

    def write(self, mask: sitk.Image, path: Path, case: ScanCase) -> None:
        seg, empty = build_segmentation(mask, scan_series(case.scan), self.names, run=self.run, task=self.task)
        seg.save_as(str(path))
        if empty:
            self.log(f"{path.name}: no voxel of {', '.join(empty)}: written as empty segment(s), one all-zero "
                     "frame per slice")
