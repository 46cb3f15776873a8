"""The files ``predict`` writes a segmentation run's masks as: ``--format nifti`` (the default) or ``dicom-seg``.

A format is a small class with a file name per case and a ``write`` of the mask, which
:func:`model.evaluation.predict.predict` calls for every case; it is built once per call by :func:`mask_writer`,
before any scan is read, so a format that cannot be written (a missing package, an input of the wrong kind) is
refused before anything is read or written. Adding a format is one class and one entry of :data:`MASK_FORMATS`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import SimpleITK as sitk

if TYPE_CHECKING:
    from model.evaluation.predict import ScanCase

__all__ = ["MASK_FORMATS", "MaskWriter", "NiftiMasks", "mask_writer"]


class MaskWriter(Protocol):
    """How one format names and writes the mask of a case (a label map on the scan's own grid)."""

    def name(self, case: ScanCase) -> str:
        """The file name in the output folder; raises ValueError when the case cannot be written so."""

    def write(self, mask: sitk.Image, path: Path, case: ScanCase) -> None:
        """Write ``mask`` (one value per class, on ``case``'s scan grid) to ``path``."""


class NiftiMasks:
    """The label map as a NIfTI file in the scan's geometry (``CASE_mask.nii.gz``, nnU-Net's ``CASE.nii.gz``)."""

    def __init__(self, run: str | Path, spec: dict[str, Any], log: Callable[[str], None]) -> None:
        pass

    def name(self, case: ScanCase) -> str:
        return case.mask

    def write(self, mask: sitk.Image, path: Path, case: ScanCase) -> None:
        sitk.WriteImage(mask, str(path))


def _dicom_seg(run: str | Path, spec: dict[str, Any], log: Callable[[str], None]) -> MaskWriter:
    from model.export.dicom_seg import DicomSegMasks

    return DicomSegMasks(run, spec, log)


MASK_FORMATS: dict[str, Callable[..., MaskWriter]] = {"nifti": NiftiMasks, "dicom-seg": _dicom_seg}
"""``--format`` name -> writer factory ``(run, spec, log)``."""


def mask_writer(fmt: str, run: str | Path, spec: dict[str, Any], log: Callable[[str], None] = print) -> MaskWriter:
    """The writer of format ``fmt`` for ``run`` (its ``finetune.json`` as ``spec``). Raises ValueError for an
    unknown format or one whose package is not installed (naming the extra)."""
    if fmt not in MASK_FORMATS:
        raise ValueError(f"unknown mask format {fmt!r}; one of {', '.join(MASK_FORMATS)}")
    return MASK_FORMATS[fmt](run, spec, log)
