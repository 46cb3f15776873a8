"""Reading volumes, canonical orientation, target spacing and resampling (SimpleITK).

Array axes are (z, y, x) everywhere in the store; SimpleITK sizes and spacings are (x, y, z). Functions here take
and return SimpleITK images unless they say otherwise, and know nothing of dask or zarr.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from . import integrity
from .diagnose import not_a_file, one_line
from .nifti_header import header_reader

if TYPE_CHECKING:
    from catalog.store_format import CaseAttrs

CANONICAL = "LPS"


@dataclass(frozen=True)
class Header:
    """What a file's header says, without reading its voxels. Sizes and spacings in file axis order (x, y, z)."""

    path: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    """3×3 row-major direction cosines (the spatial part of a 4D header)."""
    n_channels: int
    pixel_type: str
    component_bytes: int

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.size))

    def canonical_spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing (z, y, x) mm of the array after reorientation to LPS: axis permutation only."""
        return self._canonical_zyx(self.spacing)

    def canonical_size_zyx(self) -> tuple[int, int, int]:
        """Size (z, y, x) in voxels of the array after reorientation to LPS."""
        return self._canonical_zyx(self.size)

    def _canonical_zyx(self, per_file_axis: tuple) -> tuple:
        """``per_file_axis`` (x, y, z of the file) permuted to the physical axes, in (z, y, x) order."""
        lps = [per_file_axis[0]] * 3
        for file_axis, phys_axis in enumerate(canonical_permutation(self.direction)):
            lps[phys_axis] = per_file_axis[file_axis]
        return (lps[2], lps[1], lps[0])


_BYTES = {
    "8-bit unsigned integer": 1, "8-bit signed integer": 1, "16-bit unsigned integer": 2,
    "16-bit signed integer": 2, "32-bit unsigned integer": 4, "32-bit signed integer": 4,
    "64-bit unsigned integer": 8, "64-bit signed integer": 8, "32-bit float": 4, "64-bit float": 8,
}


def read_header(path: str) -> Header:
    """Read the geometry of a NIfTI (or any ITK-readable) file from its header only.

    A 4D scalar file (MSD BrainTumour, Prostate: dim[4] = channels) reports its channels in ``n_channels``
    and the spatial 3×3 part of its direction.
    """
    _require_file(path)
    reader = header_reader(str(path))
    dim = reader.GetDimension()
    size = reader.GetSize()
    spacing = reader.GetSpacing()
    origin = reader.GetOrigin()
    direction = np.asarray(reader.GetDirection()).reshape(dim, dim)
    if dim == 4:
        n_channels = int(size[3])
    elif dim == 3:
        n_channels = int(reader.GetNumberOfComponents())
    else:
        raise ValueError(f"{path}: expected a 3D or 4D image, got {dim}D")
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    ctype = sitk.GetPixelIDValueAsString(reader.GetPixelID()).replace("vector of ", "")
    spacing = [float(s) for s in spacing[:3]]
    if integrity.is_nifti(path):
        # ITK reads a pixdim of 0, NaN or < 0 as a plausible 1 mm (or flips the axis): report what the header
        # says, so that callers see an unusable spacing (LiTS: has_usable_spacing; others: a failed case).
        pixdim = integrity.read_nifti_info(path).pixdim
        spacing = [p if not (np.isfinite(p) and p > 0) else s for s, p in zip(spacing, pixdim)]
    return Header(
        path=str(path),
        size=tuple(int(s) for s in size[:3]),
        spacing=tuple(spacing),
        origin=tuple(float(o) for o in origin[:3]),
        direction=tuple(float(d) for d in direction[:3, :3].ravel()),
        n_channels=n_channels,
        pixel_type=pixel,
        component_bytes=_BYTES.get(ctype, 4),
    )


def canonical_permutation(direction: tuple[float, ...] | np.ndarray) -> tuple[int, int, int]:
    """For each file axis, the physical axis (0=x L, 1=y P, 2=z S) it runs closest to.

    Ties (a 45° oblique volume) are broken the way a greedy assignment on the largest cosine does, so the result
    is always a permutation.
    """
    d = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    perm = [-1, -1, -1]
    free_phys, free_file = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        best = max(((d[p, f], p, f) for p in free_phys for f in free_file))
        _, p, f = best
        perm[f] = p
        free_phys.discard(p)
        free_file.discard(f)
    return tuple(perm)


def read_channels(path: str, spacing_override: tuple[float, float, float] | None = None) -> list[sitk.Image]:
    """Read a volume as a list of 3D scalar images, one per channel.

    4D scalar NIfTI (SimpleITK reads them with a 4-entry spacing and a 4×4 direction, which 3D filters reject)
    and vector images are split first.
    """
    _require_file(path)
    channels = _read_nifti_channels(str(path)) if integrity.is_nifti(path) else None
    if channels is not None:
        return _override_spacing(channels, spacing_override)
    return _override_spacing(read_channels_itk(path), spacing_override)


def read_channels_itk(path: str) -> list[sitk.Image]:
    """:func:`read_channels` through ITK's own readers (every format ITK reads; for NIfTI the reference our
    header-exact reader is tested against)."""
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot read the image ({one_line(exc)})") from None
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        integrity.check_finite(str(path), sitk.GetArrayViewFromImage(img))  # MetaImage, NRRD keep NaN
    if img.GetDimension() == 4:
        sx, sy, sz, nc = img.GetSize()
        channels = []
        for c in range(nc):
            extractor = sitk.ExtractImageFilter()
            extractor.SetSize([sx, sy, sz, 0])
            extractor.SetIndex([0, 0, 0, c])
            extractor.SetDirectionCollapseToStrategy(extractor.DIRECTIONCOLLAPSETOSUBMATRIX)
            channels.append(extractor.Execute(img))
        return channels
    if img.GetNumberOfComponentsPerPixel() > 1:
        return [sitk.VectorIndexSelectionCast(img, c) for c in range(img.GetNumberOfComponentsPerPixel())]
    if img.GetDimension() == 3:
        return [img]
    raise ValueError(f"{path}: expected a 3D or 4D image, got {img.GetDimension()}D")


def _override_spacing(channels: list[sitk.Image], spacing_override) -> list[sitk.Image]:
    if spacing_override is not None:
        for ch in channels:
            ch.SetSpacing(tuple(float(s) for s in spacing_override))
    return channels


_SITK_TYPES = {
    np.dtype(np.uint8): sitk.sitkUInt8, np.dtype(np.int8): sitk.sitkInt8, np.dtype(np.uint16): sitk.sitkUInt16,
    np.dtype(np.int16): sitk.sitkInt16, np.dtype(np.uint32): sitk.sitkUInt32, np.dtype(np.int32): sitk.sitkInt32,
    np.dtype(np.uint64): sitk.sitkUInt64, np.dtype(np.int64): sitk.sitkInt64,
    np.dtype(np.float32): sitk.sitkFloat32, np.dtype(np.float64): sitk.sitkFloat64,
}


def _read_nifti_channels(path: str) -> list[sitk.Image] | None:
    """A NIfTI file's channels from one verified decompression (:func:`integrity.read_nifti_voxels`: CRC-32 and
    length checked, NaN/Inf counted), with ITK's geometry from its header: the voxels ITK would read, without
    ITK decompressing the file a second time.

    Returns None where only ITK's own read gives ITK's values (scaled data, vector or RGB pixels, a pixel type
    or size ITK reports differently); the file is then fully verified by a separate pass first.
    """
    info = integrity.read_nifti_info(path)
    reader = header_reader(path)
    dim, size = reader.GetDimension(), reader.GetSize()
    plain = (
        not info.scaled and dim in (3, 4) and reader.GetNumberOfComponents() == 1
        and _SITK_TYPES.get(info.dtype.newbyteorder("=")) == reader.GetPixelID()
        and int(np.prod(size)) == info.n_voxels
    )
    if not plain:
        if info.version == 2:
            raise ValueError(f"{path}: a NIfTI-2 file with scaled, vector or unusual voxels (ITK reads NIfTI-1 "
                             "only, and we read plain NIfTI-2 voxels only): convert it to NIfTI-1")
        integrity.verify_nifti_file(info)
        return None
    data = integrity.read_nifti_voxels(info).reshape(size, order="F")
    integrity.check_finite(path, data)
    spacing, origin = reader.GetSpacing()[:3], reader.GetOrigin()[:3]
    direction = np.asarray(reader.GetDirection()).reshape(dim, dim)[:3, :3].ravel()
    volumes = [data] if dim == 3 else [data[..., c] for c in range(size[3])]
    channels = []
    for vol in volumes:
        img = sitk.GetImageFromArray(vol.T)  # (x, y, z) Fortran order is (z, y, x) C order: no copy before ITK's
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(tuple(float(d) for d in direction))
        channels.append(img)
    return channels


def read_single(path: str, spacing_override: tuple[float, float, float] | None = None, what: str = "label"
                ) -> sitk.Image:
    """Read a volume that must have exactly one channel (a label or mask file)."""
    channels = read_channels(path, spacing_override)
    if len(channels) != 1:
        raise ValueError(f"{path}: a {what} must have one channel, this file has {len(channels)}")
    return channels[0]


def reorient(img: sitk.Image) -> sitk.Image:
    """Nearest canonical (LPS) orientation: axis permutation and flips only, no interpolation. An oblique
    volume keeps its residual rotation in the direction. An image already in LPS order is returned as is
    (DICOMOrient would copy it)."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    if canonical_permutation(d) == (0, 1, 2) and np.all(np.diag(d) > 0):
        return img
    return sitk.DICOMOrient(img, CANONICAL)


def target_size(size_xyz, spacing_xyz, new_spacing_xyz) -> tuple[int, int, int]:
    """new size = round(old size × old spacing / new spacing), at least 1 voxel per axis."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(size_xyz, spacing_xyz, new_spacing_xyz)
    )


_INTERP = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample(
    img: sitk.Image,
    spacing_xyz: tuple[float, float, float],
    interpolation: str,
    *,
    pixel_type: int | None = None,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample onto a grid with the same origin and direction and the given spacing (mm, x y z).

    The grid keeps the first voxel centre; size = round(size × spacing / new spacing). Its last voxel centres
    can then lie beyond the source's last half voxel (when the new spacing is below half the old one, e.g. 5 mm
    slices to 1 mm): those take the nearest source voxel, not ``default_value`` (a slab of 0 HU, water, at the
    edge of every up-sampled CT). ``default_value`` is only used by transforms that leave the source.
    """
    old_spacing = img.GetSpacing()
    if np.allclose(old_spacing, spacing_xyz, rtol=0, atol=1e-6):
        return img if pixel_type is None else sitk.Cast(img, pixel_type)
    size = target_size(img.GetSize(), old_spacing, spacing_xyz)
    return sitk.Resample(
        img,
        size,
        sitk.Transform(),
        _INTERP[interpolation],
        img.GetOrigin(),
        tuple(float(s) for s in spacing_xyz),
        img.GetDirection(),
        float(default_value),
        img.GetPixelID() if pixel_type is None else pixel_type,
        True,  # useNearestNeighborExtrapolator
    )


def resample_slabs(
    img: sitk.Image,
    spacing_xyz: tuple[float, float, float],
    interpolation: str,
    *,
    pixel_type: int = sitk.sitkFloat32,
    slab_bytes: int = 8 << 20,
):
    """:func:`resample`, produced as consecutive z-slabs: yields (z0, z1, slab image of z1 - z0 slices).

    Yields images, not array views: a SimpleITK array view does not keep its image alive, so the caller takes
    ``sitk.GetArrayViewFromImage(slab)`` while it holds the slab.

    Each slab is resampled on its own output grid (the full grid's origin moved z0 slices along the direction),
    so the whole float32 output never exists at once: a 512×512×120 CT needs an 8 MiB buffer instead of 128 MiB,
    which the allocator reuses instead of mapping fresh pages for every case. Values equal :func:`resample`'s.
    """
    old_spacing = img.GetSpacing()
    if np.allclose(old_spacing, spacing_xyz, rtol=0, atol=1e-6):
        full = img if img.GetPixelID() == pixel_type else sitk.Cast(img, pixel_type)
        yield 0, full.GetSize()[2], full
        return
    nx, ny, nz = target_size(img.GetSize(), old_spacing, spacing_xyz)
    step = max(1, slab_bytes // (nx * ny * 4))
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), float)
    spacing = tuple(float(s) for s in spacing_xyz)
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        slab_origin = origin + d @ np.array([0.0, 0.0, z0 * spacing[2]])
        yield z0, z1, sitk.Resample(img, (nx, ny, z1 - z0), sitk.Transform(), _INTERP[interpolation],
                                    tuple(slab_origin), spacing, img.GetDirection(), 0.0, pixel_type, True)


def same_grid(a: sitk.Image, b: sitk.Image, tol_mm: float = 1e-3) -> bool:
    """Whether two images share size, spacing, origin and direction (within tolerance)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol_mm, rtol=1e-5)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=max(tol_mm, 1e-3 * max(a.GetSpacing())), rtol=0)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


def grid_mismatch(a: sitk.Image, b: sitk.Image) -> str:
    """A human description of how two grids differ."""
    parts = []
    for name, get in (("size", "GetSize"), ("spacing", "GetSpacing"), ("origin", "GetOrigin")):
        va, vb = getattr(a, get)(), getattr(b, get)()
        if not np.allclose(va, vb, atol=1e-3):
            parts.append(f"{name} {tuple(round(v, 4) for v in va)} vs {tuple(round(v, 4) for v in vb)}")
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4):
        parts.append("direction differs")
    return ", ".join(parts) or "grids match"


def median_spacing(spacings_zyx: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Per-axis median of canonical (z, y, x) spacings: the domain's target spacing (mm)."""
    if not spacings_zyx:
        raise ValueError("cannot take the median spacing of an empty domain")
    arr = np.asarray(spacings_zyx, dtype=float)
    return tuple(float(round(v, 6)) for v in np.median(arr, axis=0))


def zyx_to_xyz(t):
    return tuple(reversed(tuple(t)))


def _require_file(path) -> None:
    problem = not_a_file(path)
    if problem:
        raise ValueError(f"{path}: {problem}")


def index_to_physical(idx_zyx: np.ndarray, origin, direction, spacing_zyx) -> np.ndarray:
    """Physical points (x, y, z) mm in LPS of array indices (N, 3) given as (z, y, x): the store's attrs
    (``origin``, ``direction`` row-major 3×3, ``spacing`` (z, y, x)) are enough to place any voxel."""
    idx_xyz = np.asarray(idx_zyx, dtype=float)[:, ::-1]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return np.asarray(origin, dtype=float) + (idx_xyz * np.asarray(spacing_zyx, dtype=float)[::-1]) @ d.T


def to_original_grid(arr_zyx: np.ndarray, attrs: CaseAttrs | Mapping[str, Any]) -> sitk.Image:
    """Map a label array on a case's stored grid back onto the grid of the file it came from.

    ``arr_zyx`` is (Z, Y, X) on the stored grid (e.g. a predicted label); ``attrs`` are the case group's attrs
    (a :class:`catalog.store_format.CaseAttrs`, or their mapping: ``spacing`` (z, y, x) mm, ``origin``, ``direction`` of the stored LPS grid, and ``original``: the file's
    size, spacing, origin and direction in x, y, z order). Resampling is nearest neighbour with nearest
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
