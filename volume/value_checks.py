"""Rules on the values a header or a volume holds: voxel counts, voxel sizes, direction cosines, extents, pixel
types, finite voxels, contrast. Each raises :class:`IntegrityError` (a ``ValueError``) whose message names the
file, the problem and the fix; nothing here reads files (``integrity`` does, and applies these rules).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from catalog.values import MAX_SPACING_MM, MIN_SPACING_MM

__all__ = [
    "DEFAULT_MAX_VOXELS", "MAX_SPACING_MM", "MIN_SPACING_MM", "IntegrityError", "check_contrast", "check_direction",
    "check_extent", "check_finite", "check_pixel_type", "check_resampled_voxels", "check_spacing",
    "check_voxel_count", "count_nonfinite",
]

_BLOCK = 1 << 20  # elements per NaN/Inf counting pass


DEFAULT_MAX_VOXELS = 2_000_000_000
"""Largest volume (voxels × channels) read by default: 5× a 512×512×1500 CT (393 M voxels), 56× the largest MSD
image (BrainTumour, 240×240×155×4); a header announcing 4000³ (64 G) voxels is refused before any read."""


class IntegrityError(ValueError):
    """An input file is damaged or its header is unusable; the message names the file and the fix."""


def check_extent(path: str, size_xyz: Sequence[int]) -> None:
    """Refuse a "volume" with one voxel along an axis (a single slice saved as 3D): nothing 3D to learn from,
    and a 3D patch or resampling of it is meaningless."""
    if len(size_xyz) >= 3 and min(size_xyz[:3]) < 2:
        raise IntegrityError(f"{path}: a single slice ({' × '.join(str(int(n)) for n in size_xyz[:3])} voxels), not a "
                             "3D volume: build from volumes with at least 2 voxels along each axis")


def check_pixel_type(path: str, dtype: np.dtype) -> None:
    """Refuse complex-valued voxels (MR raw data): Med3D normalizes real intensities."""
    if np.dtype(dtype).kind == "c":
        raise IntegrityError(f"{path}: complex-valued voxels ({np.dtype(dtype).name}): Med3D reads real-valued "
                             "images; store the magnitude (abs) of the image instead")


def check_voxel_count(path: str, n_voxels: int, max_voxels: int | None, what: str = "") -> None:
    """Refuse a volume larger than ``max_voxels`` (voxels × channels) before anything tries to allocate it."""
    if max_voxels is not None and n_voxels > max_voxels:
        raise IntegrityError(
            f"{path}: the header announces {n_voxels:,} voxels{what}, more than --max-voxels {max_voxels:,}: "
            "a damaged header, or raise --max-voxels if the volume is real")


# Voxel sizes a scan can have, one range for headers and for the cards and run recipes that ask for a grid
# (catalog.values: 0.01-50 mm).


def check_spacing(path: str, spacing_xyz: Sequence[float], source: str = "header spacing") -> None:
    """Refuse zero, negative or NaN voxel sizes (x, y, z mm), which ITK would silently read as 1 mm, and sizes
    outside :data:`MIN_SPACING_MM`..:data:`MAX_SPACING_MM`."""
    bad = [(axis, s) for axis, s in zip("xyz", spacing_xyz) if not (math.isfinite(s) and s > 0)]
    if bad:
        where = ", ".join(f"{s:g} along {axis}" for axis, s in bad)
        raise IntegrityError(
            f"{path}: {source} is not a voxel size ({where} mm): fix the file's header (pixdim); "
            "build-lits also takes --spacing-override CSV")
    odd = [(axis, s) for axis, s in zip("xyz", spacing_xyz) if not MIN_SPACING_MM <= s <= MAX_SPACING_MM]
    if odd:
        where = ", ".join(f"{s:g} along {axis}" for axis, s in odd)
        raise IntegrityError(
            f"{path}: {source} ({where} mm) is outside {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm, no scan's voxel "
            "size: a damaged header; fix the file's header (pixdim)")


def check_resampled_voxels(path: str, size_zyx: Sequence[int], spacing_zyx: Sequence[float],
                           target_zyx: Sequence[float], n_channels: int, max_voxels: int | None) -> int:
    """Refuse a case whose volume on the target grid (voxels × channels after resampling from ``spacing_zyx``
    to ``target_zyx`` mm) exceeds ``max_voxels``, before that grid is allocated. Returns the voxel count."""
    n = math.prod(max(1, round(k * s / t)) for k, s, t in zip(size_zyx, spacing_zyx, target_zyx)) * n_channels
    if max_voxels is not None and n > max_voxels:
        raise IntegrityError(
            f"{path}: resampled from {tuple(round(v, 6) for v in spacing_zyx)} to the target spacing "
            f"{tuple(round(v, 6) for v in target_zyx)} mm (z, y, x), the volume would hold {n:,} voxels, more than "
            f"--max-voxels {max_voxels:,}: a damaged header, or raise --max-voxels if the volume is real")
    return n


def check_direction(path: str, direction: Sequence[float], tol: float = 1e-3) -> None:
    """Refuse a direction matrix (3×3 row-major) that is not orthonormal (sheared or scaled axes)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=tol):
        raise IntegrityError(f"{path}: direction cosines are not orthonormal ({np.round(d, 4).tolist()}): "
                             "a sheared or damaged orientation; fix the header")


def count_nonfinite(arr: np.ndarray) -> tuple[int, int]:
    """(NaN count, ±Inf count) of a float array; (0, 0) for integers. One float sum settles the usual case."""
    if arr.dtype.kind not in "fc":
        return 0, 0
    flat = np.ravel(arr, order="K")  # a view of a C- or Fortran-ordered volume, never a transposing copy
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(flat, dtype=np.float64 if arr.dtype.itemsize > 4 else np.float32)):
            return 0, 0
    nan = inf = 0
    for i in range(0, flat.size, _BLOCK):
        part = flat[i:i + _BLOCK]
        nan += int(np.count_nonzero(np.isnan(part)))
        inf += int(np.count_nonzero(np.isinf(part)))
    return nan, inf


def check_finite(path: str, arr: np.ndarray) -> None:
    """Refuse a volume holding NaN or infinite voxels, with their counts."""
    nan, inf = count_nonfinite(arr)
    if nan or inf:
        parts = [f"{n:,} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n]
        raise IntegrityError(f"{path}: {' and '.join(parts)} voxel(s) of {arr.size:,} (SimpleITK would read them "
                             "as 0): fix or re-export the file")


def check_contrast(path: str, arr: np.ndarray, p_lo: float, p_hi: float, std: float) -> None:
    """Refuse a channel that would be stored as all zeros: constant (every voxel equal), or no spread left
    after clipping to its percentiles / window (``std`` of the clipped volume 0)."""
    if std > 0:
        return
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise IntegrityError(f"{path}: constant image (all {arr.size:,} voxels are {lo:g}): nothing to learn "
                             "from; re-export the file")
    raise IntegrityError(f"{path}: no contrast after clipping to [{p_lo:g}, {p_hi:g}] (values {lo:g}..{hi:g}, "
                         "std 0): check the file")
