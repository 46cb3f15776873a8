"""Isotropic crops around LIDC-IDRI nodules: a cube in LPS around the centroid, padded with air past the scan."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .lidc_nodules import AIR_HU, MIN_HU, BoxMask

__all__ = ["nodule_crop"]


def nodule_crop(
    image: sitk.Image,
    masks: BoxMask | np.ndarray | sitk.Image | None,
    centroid_mm: np.ndarray | list[float],
    size_mm: float = 48.0,
    spacing_mm: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Resample a cube of ``size_mm`` centred at ``centroid_mm`` (x, y, z LPS) onto an isotropic grid.

    The grid is axis-aligned in LPS, so arrays are (z, y, x) with x→L, y→P, z→S. ``masks`` is the nodule's
    consensus mask on ``image``'s grid (BoxMask, full (z, y, x) array or image) or None. Returns the float32
    HU crop (linear; values below -1024 clamped to -1024 first; voxels outside the scanned volume set to
    -1000 air), the uint8 mask crop (nearest) and an info dict: ``padded`` (any voxel outside),
    ``fraction_outside``, ``n_clamped`` (source voxels clamped), ``origin_mm``, ``spacing_mm``.
    """
    n = int(round(size_mm / spacing_mm))
    origin = np.asarray(centroid_mm, float) - spacing_mm * (n - 1) / 2.0
    grid = dict(size=[n] * 3, outputOrigin=origin.tolist(), outputSpacing=[spacing_mm] * 3,
                outputDirection=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    inside = _inside_source(image, origin, spacing_mm, n)
    corners = origin + np.array([[i, j, k] for i in (0, n - 1) for j in (0, n - 1) for k in (0, n - 1)]) * spacing_mm
    cidx = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(c)) for c in corners])
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(cidx.min(0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(cidx.max(0)).astype(int) + 2, 0, size)
    info = {"origin_mm": origin.tolist(), "spacing_mm": spacing_mm, "n_clamped": 0}
    if np.any(hi <= lo):
        crop = np.full((n, n, n), AIR_HU, np.float32)
    else:
        region = image[int(lo[0]) : int(hi[0]), int(lo[1]) : int(hi[1]), int(lo[2]) : int(hi[2])]
        values = sitk.GetArrayFromImage(region).astype(np.float32)
        info["n_clamped"] = int(np.count_nonzero(values < MIN_HU))
        clamped = sitk.GetImageFromArray(np.maximum(values, MIN_HU))
        clamped.CopyInformation(region)
        resampled = sitk.Resample(clamped, transform=sitk.Transform(), interpolator=sitk.sitkLinear,
                                  defaultPixelValue=AIR_HU, outputPixelType=sitk.sitkFloat32, **grid)
        crop = sitk.GetArrayFromImage(resampled)
        crop[~inside] = AIR_HU  # linear interpolation may reach half a voxel past the edge: keep it air
    mask_crop = np.zeros((n, n, n), np.uint8)
    if masks is not None:
        if isinstance(masks, BoxMask):
            mask_image = masks.to_image(image)
        elif isinstance(masks, np.ndarray):
            mask_image = sitk.GetImageFromArray(masks.astype(np.uint8))
            mask_image.CopyInformation(image)
        else:
            mask_image = sitk.Cast(masks, sitk.sitkUInt8)
        mask_crop = sitk.GetArrayFromImage(sitk.Resample(
            mask_image, transform=sitk.Transform(), interpolator=sitk.sitkNearestNeighbor,
            defaultPixelValue=0, outputPixelType=sitk.sitkUInt8, **grid))
    fraction = float(1.0 - inside.mean())
    info.update(padded=fraction > 0, fraction_outside=fraction)
    return crop, mask_crop, info


def _inside_source(image: sitk.Image, origin: np.ndarray, spacing: float, n: int) -> np.ndarray:
    """(z, y, x) bool: which crop voxel centres fall inside the image's voxel extent (half a voxel margin)."""
    axis = np.arange(n) * spacing
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([xx, yy, zz], -1).reshape(-1, 3) + origin
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    cidx = np.linalg.solve(matrix, (points - np.asarray(image.GetOrigin())).T).T
    size = np.asarray(image.GetSize())
    ok = np.all((cidx >= -0.5) & (cidx <= size - 0.5), axis=1)
    return ok.reshape(n, n, n)
