"""Stored grid -> physical space and back: where a stored voxel lies in mm, and a stored label map resampled onto
the grid of the file the case came from (for predictions written beside the original volume)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from .geometry import zyx_to_xyz

if TYPE_CHECKING:
    from catalog.store_format import CaseAttrs

__all__ = ["index_to_physical", "to_original_grid"]


def index_to_physical(idx_zyx: np.ndarray, origin, direction, spacing_zyx) -> np.ndarray:
    """Physical points (x, y, z) mm in LPS of array indices (N, 3) given as (z, y, x): the store's attrs
    (``origin``, ``direction`` row-major 3×3, ``spacing`` (z, y, x)) are enough to place any voxel."""
    idx_xyz = np.asarray(idx_zyx, dtype=float)[:, ::-1]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return np.asarray(origin, dtype=float) + (idx_xyz * np.asarray(spacing_zyx, dtype=float)[::-1]) @ d.T


def to_original_grid(arr_zyx: np.ndarray, attrs: CaseAttrs | Mapping[str, Any]) -> sitk.Image:
    """Map a label array on a case's stored grid back onto the grid of the file it came from.

    ``arr_zyx`` is (Z, Y, X) on the stored grid (e.g. a predicted label); ``attrs`` are the case group's attrs
    (a :class:`catalog.store_format.CaseAttrs`, or their mapping: ``spacing`` (z, y, x) mm, ``origin``,
    ``direction`` of the stored LPS grid, and ``original``: the file's size, spacing, origin and direction in
    x, y, z order). Resampling is nearest neighbour with nearest
    extrapolation, so the file's edge voxels that lie up to half a stored voxel beyond the stored grid still get
    a value. The result has the original file's size and geometry, index for index: where the build replaced an
    unusable header spacing, the image carries the file's own header spacing again (``header_spacing_xyz``), so
    it can be written next to the original volume (e.g. as a LiTS submission).
    """
    arr = np.asarray(arr_zyx)
    if arr.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) array, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    from catalog.store_format import CaseAttrs

    grid = attrs if isinstance(attrs, CaseAttrs) else CaseAttrs.from_attrs(attrs, "to_original_grid attrs")
    orig = grid.original
    stored = sitk.GetImageFromArray(arr)
    stored.SetSpacing(tuple(float(s) for s in zyx_to_xyz(grid.spacing)))
    stored.SetOrigin(tuple(float(v) for v in grid.origin))
    stored.SetDirection(tuple(float(v) for v in grid.direction))
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in orig["size_xyz"]])
    f.SetOutputSpacing(tuple(float(s) for s in orig["spacing_xyz"]))
    f.SetOutputOrigin(tuple(float(v) for v in orig["origin"]))
    f.SetOutputDirection(tuple(float(v) for v in orig["direction"]))
    f.SetInterpolator(sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(0)
    f.SetUseNearestNeighborExtrapolator(True)
    out = f.Execute(stored)
    if orig.get("header_spacing_xyz"):
        out.SetSpacing(tuple(float(s) for s in orig["header_spacing_xyz"]))
    return out
