"""Label composition: one label volume from per-structure masks (VISCERAL's one file per organ), for the build
(``pipeline/labels.py``, onto the image's grid) and for evaluation (the source label a prediction is measured
against, ``model/evaluation``) alike.

>>> label, overlap = compose_masks([("liver.nii.gz", 1), ("spleen.nii.gz", 2)], sitk.ReadImage)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry
from .diagnose import CaseError

__all__ = ["compose_masks"]


def compose_masks(parts: Sequence[tuple[str, int]] | Sequence[list], read: Callable[[str], sitk.Image],
                  ref: sitk.Image | None = None, ref_name: str = "") -> tuple[sitk.Image, int]:
    """One uint8 label from the masks ``parts`` ((path, value) pairs, read with ``read``): the voxels > 0 of
    each mask take its value, in the order given (a later mask wins where masks overlap), on the grid of ``ref``
    (the image ``ref_name``; the first mask's grid when None). Returns (label, count of voxels claimed by masks
    of different values).

    Raises CaseError naming the mask when its value is outside 1..255, it cannot be read (a ValueError of
    ``read``) or it lies on another grid than ``ref``.
    """
    if not parts:
        raise ValueError("compose_masks: no masks given")
    out = None
    overlap = 0
    for path, value in parts:
        path, value = str(path), int(value)
        if not 0 < value <= 255:
            raise CaseError(f"{path}: label value {value} outside 1..255")
        try:
            mask = read(path)
        except ValueError as exc:
            raise CaseError(str(exc)) from None
        if ref is None:
            ref, ref_name = mask, path
        if not geometry.same_grid(ref, mask):
            raise CaseError(f"{path}: mask grid differs from image {ref_name} ({geometry.grid_mismatch(ref, mask)}); "
                            "fix the header or resample the mask")
        on = sitk.GetArrayViewFromImage(mask) > 0
        if out is None:
            out = np.zeros(on.shape, np.uint8)
        overlap += int(np.count_nonzero(on & (out != 0) & (out != value)))
        out[on] = value
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(ref)
    return img, overlap
