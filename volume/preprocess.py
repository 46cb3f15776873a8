"""A new raw scan -> the arrays a trained network expects: the same steps, in the same code, as the build
(reorientation to LPS, CT air clamp, percentile clip or CT window, resampling to the domain's target spacing,
z-score, the store's dtype), driven by a *recipe* recorded from the store a network was trained on.

>>> recipe = recipe_from_store("data/lits_store", "lits/volume-3")
>>> image, attrs = preprocess_scan("new_ct.nii.gz", recipe)
>>> label_stored = segment(image)                           # (Z, Y, X) on the stored grid
>>> sitk.WriteImage(to_original_grid(label_stored, attrs), "new_ct_mask.nii.gz")   # the input's own geometry
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from catalog.card import case_recipe

from . import geometry, integrity, intensity
from .diagnose import CaseError, unreadable_file

__all__ = ["Normalization", "check_headers", "check_scan_header", "has_usable_spacing", "identity_unit_spacing", "normalize_channels",
           "preprocess_scan", "recipe_from_store"]


class NormalizationParams(Protocol):
    """What :func:`normalize_channels` reads of a configuration (:class:`Normalization`, or the build's
    ``pipeline.config.PrepConfig``, which has the same fields)."""

    dtype: str
    clip_percentiles: tuple[float, float]
    air_hu: float
    ct_window: tuple[float, float] | None
    image_interpolation: str
    max_voxels: int | None


@dataclass(frozen=True)
class Normalization:
    """A store's intensity and grid rules for one scan: image ``dtype``, clip percentiles, CT air clamp (HU),
    CT window (HU, or None: percentiles), resampling interpolation, and the largest resampled grid allowed."""

    dtype: str = "float16"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    air_hu: float = -1024.0
    ct_window: tuple[float, float] | None = None
    image_interpolation: str = "linear"
    max_voxels: int | None = integrity.DEFAULT_MAX_VOXELS

    def __post_init__(self) -> None:  # a recipe comes from a store's attrs, which a downloaded store could set
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"the recipe's image dtype must be float16 or float32, got {self.dtype!r}")
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"the recipe's percentiles must satisfy 0 <= lo < hi <= 100, got {self.clip_percentiles}")
        if self.image_interpolation not in ("linear", "bspline"):
            raise ValueError(f"the recipe's interpolation must be linear or bspline, got {self.image_interpolation!r}")


def identity_unit_spacing(hdr: geometry.Header) -> bool:
    """Exactly 1 × 1 × 1 mm with an axis-aligned, unpermuted direction: what an identity NIfTI affine (no spacing
    written at all) reads as."""
    d = np.asarray(hdr.direction, dtype=float).reshape(3, 3)
    axis_aligned = np.allclose(np.abs(d), np.eye(3), atol=1e-6)
    return bool(np.allclose(np.asarray(hdr.spacing, dtype=float), 1.0, atol=1e-6) and axis_aligned)


def has_usable_spacing(hdr: geometry.Header) -> bool:
    """False for a header whose spacing cannot be trusted: zero, negative or NaN spacing, or exactly 1 × 1 × 1 mm
    with an axis-aligned, unpermuted direction (diagonal ±1: an identity NIfTI affine reads as diag(-1, -1, 1)
    in ITK's LPS frame). The second is what LiTS 28–47 look like; a real CT at exactly 1 mm isotropic with such
    a header would be caught too, which is why the result is flagged and can be overridden."""
    sp = np.asarray(hdr.spacing, dtype=float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        return False
    return not identity_unit_spacing(hdr)


def _usable_spacing(header: geometry.Header, modality: str) -> bool:
    """The build's rule (:func:`has_usable_spacing`, which LiTS applies), except that an MR at exactly 1 mm
    isotropic is plausible; only a CT with the identity affine is taken for a header without spacing."""
    return has_usable_spacing(header) or (modality != "CT" and identity_unit_spacing(header))


def check_headers(paths: Sequence[str], max_voxels: int | None = integrity.DEFAULT_MAX_VOXELS,
                  spacing_override: Sequence[float] | None = None) -> None:
    """Header-only checks of every file of a case, before any voxel is read (the build's planning and
    conversion, and ``predict``).

    Raises CaseError naming the file: missing or empty, not NIfTI, truncated (file size or gzip trailer against
    the header's data length), 2D or 5D, more than ``max_voxels`` voxels × channels, spacing zero, negative or
    NaN (unless ``spacing_override`` replaces it), direction cosines that are not orthonormal.
    """
    for path in paths:
        try:
            integrity.check_file(path, max_voxels=max_voxels, check_header_spacing=spacing_override is None)
            hdr = geometry.read_header(path)
            integrity.check_voxel_count(path, hdr.n_voxels * hdr.n_channels, max_voxels,
                                        f" ({hdr.n_channels} channel(s) of {' × '.join(map(str, hdr.size))})")
            integrity.check_extent(path, hdr.size)
            if "complex" in hdr.pixel_type:
                integrity.check_pixel_type(path, np.complex64)
            integrity.check_spacing(path, hdr.spacing if spacing_override is None else tuple(spacing_override),
                                    "header spacing" if spacing_override is None else "spacing override")
            integrity.check_direction(path, hdr.direction)
        except (ValueError, OSError) as exc:  # OSError: a file that cannot be opened (permissions, I/O error)
            raise CaseError(str(exc)) from None
        except (ArithmeticError, RuntimeError, TypeError) as exc:  # a header field no check foresaw
            raise CaseError(unreadable_file(path, exc)) from None


def normalize_channels(channels: list[sitk.Image], spacing_xyz, cfg: NormalizationParams, is_ct: bool,
                       files: Sequence[str]) -> tuple[np.ndarray, list[intensity.ChannelStats], sitk.Image]:
    """Reorient, take statistics on the source voxels, resample, clip + z-score each channel (``files``: the
    case's image files, channel c read from ``files[min(c, len(files) - 1)]``, for the messages).

    Returns the (C, Z, Y, X) array in ``cfg.dtype``, per-channel statistics (source units) and the reoriented
    channel 0, whose origin and direction the resampled grid keeps (for the attrs). Raises CaseError naming the
    file.
    """
    stats: list[intensity.ChannelStats] = []
    out, grid = None, None
    for c, ch in enumerate(channels):
        ch = geometry.reorient(ch)
        air_frac = 0.0
        if is_ct:
            view = sitk.GetArrayViewFromImage(ch)
            if view.min() < cfg.air_hu:
                air_frac = float(np.count_nonzero(view < cfg.air_hu)) / view.size
                ch = sitk.Clamp(ch, ch.GetPixelID(), lowerBound=cfg.air_hu)
        try:
            st = intensity.channel_stats(sitk.GetArrayViewFromImage(ch), cfg.clip_percentiles,
                                         cfg.ct_window if is_ct else None, air_frac)
        except ValueError as exc:
            raise CaseError(f"{files[min(c, len(files) - 1)]}: channel {c}: {exc}") from None
        try:
            integrity.check_contrast(files[min(c, len(files) - 1)], sitk.GetArrayViewFromImage(ch),
                                     st.p_lo, st.p_hi, st.std)
        except ValueError as exc:
            raise CaseError(f"{exc}" if len(channels) == 1 else f"{exc} (channel {c})") from None
        stats.append(st)
        if out is None:
            nx, ny, nz = geometry.target_size(ch.GetSize(), ch.GetSpacing(), spacing_xyz)
            try:  # before allocating the grid: a header's spacing decides its size
                integrity.check_resampled_voxels(files[0], ch.GetSize()[::-1], ch.GetSpacing()[::-1],
                                                 spacing_xyz[::-1], len(channels), cfg.max_voxels)
            except ValueError as exc:
                raise CaseError(str(exc)) from None
            out = np.empty((len(channels), nz, ny, nx), dtype=cfg.dtype)
            grid = ch  # the resampled grid keeps the reoriented image's origin and direction
        for z0, z1, slab in geometry.resample_slabs(ch, spacing_xyz, cfg.image_interpolation):
            intensity.normalize_into(sitk.GetArrayViewFromImage(slab), out[c, z0:z1], st)
    return out, stats, grid


def recipe_from_store(store: str | os.PathLike[str], store_path: str) -> dict[str, Any]:
    """The preprocessing of ``store``'s domain as JSON-able dict, read from one built case (``store_path``,
    "<domain>/<case_id>") and its domain's frozen plan: target spacing (z, y, x) mm, modality, percentiles or CT
    window, air clamp, image dtype (:func:`catalog.card.case_recipe`, which weight cards record too)."""
    return case_recipe(store, store_path)


def check_scan_header(path: str | os.PathLike[str], recipe: dict[str, Any], *, modality: str | None = None,
                      spacing_xyz: tuple[float, float, float] | None = None) -> tuple[geometry.Header, str]:
    """What :func:`preprocess_scan` requires of a scan's header alone, before any voxel is read: a modality
    (``modality`` or the recipe's; a mixed CT/MR recipe needs it said) and a spacing that can be trusted (or
    ``spacing_xyz`` given). Returns (header, modality); raises ``ValueError`` naming the file and the fix."""
    path = os.fspath(path)
    mod = modality or recipe["modality"]
    if mod not in ("CT", "MR"):
        raise ValueError(f"{path}: the network was trained on a {recipe['modality']} domain; say which modality "
                         "this scan is (--modality CT or MR)")
    if spacing_xyz is not None and not (len(spacing_xyz) == 3 and all(math.isfinite(v) and v > 0 for v in spacing_xyz)):
        raise ValueError(f"{path}: the given spacing {tuple(spacing_xyz)} is not three positive voxel sizes (mm)")
    header = geometry.read_header(path)
    if spacing_xyz is None and not _usable_spacing(header, mod):
        raise ValueError(f"{path}: the header's spacing {tuple(header.spacing)} mm cannot be trusted (zero, NaN, or "
                         "the 1 x 1 x 1 mm identity affine that LiTS 28-47 carry); give the scan's spacing with "
                         "--spacing X,Y,Z (mm)")
    return header, mod


def preprocess_scan(path: str | os.PathLike[str], recipe: dict[str, Any], *, modality: str | None = None,
                    spacing_xyz: tuple[float, float, float] | None = None, in_chans: int = 1,
                    channel_files: Sequence[str | os.PathLike[str]] = ()) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a one-channel scan (``in_chans`` channels: the channels of ``path`` and then of ``channel_files``,
    e.g. an nnU-Net case's ``_0001``, ``_0002``... files) and preprocess it as ``recipe`` says.

    Returns the image (Z, Y, X) float32 on the stored grid ((C, Z, Y, X) when ``in_chans`` > 1; values rounded
    through the store's dtype, as training saw them) and attrs like a stored case's (``spacing``, ``origin``, ``direction``, ``original``) for
    :func:`volume.original_grid.to_original_grid`. ``modality`` ("CT" or "MR") is needed when the recipe's domain
    mixes modalities (VISCERAL: "CT/MR"): it decides the CT air clamp. ``spacing_xyz`` (mm, file axis order)
    replaces the header's spacing; a header without usable spacing (zero, NaN, or a CT with the 1 × 1 × 1 mm
    identity affine of LiTS 28-47) is refused unless it is given, since the scan would be resampled at the wrong
    size. Raises ``ValueError`` naming the file.
    """
    path = os.fspath(path)
    header, mod = check_scan_header(path, recipe, modality=modality, spacing_xyz=spacing_xyz)
    channels = geometry.read_channels(path, spacing_xyz)
    files = [path]
    for extra in channel_files:
        more = geometry.read_channels(os.fspath(extra), spacing_xyz)
        _check_same_grid(channels[0], more, path, os.fspath(extra))
        files += [os.fspath(extra)] * len(more)
        channels += more
    if len(channels) != in_chans:
        given = path if not channel_files else f"{path} and {len(channel_files)} more channel file(s)"
        raise ValueError(f"{given}: {len(channels)} channel(s); the network takes {in_chans}"
                         + ("" if in_chans == 1 else " (nnU-Net: CASE_0000, CASE_0001, ... files of one case)"))
    ref = channels[0]
    original = {"size_xyz": list(ref.GetSize()), "spacing_xyz": list(ref.GetSpacing()),
                "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection())}
    if spacing_xyz is not None:  # the mask goes back with the file's own header spacing
        original["header_spacing_xyz"] = list(header.spacing)
    cfg = Normalization(dtype=recipe["dtype"], clip_percentiles=tuple(recipe["percentiles"]),
                        air_hu=float(recipe["air_hu"]),
                        ct_window=tuple(recipe["ct_window"]) if recipe.get("ct_window") else None,
                        image_interpolation=recipe.get("image_interpolation", "linear"))
    image, _, grid = normalize_channels(channels, geometry.zyx_to_xyz(recipe["target_spacing"]), cfg,
                                        mod == "CT", tuple(files))
    attrs = {"spacing": list(recipe["target_spacing"]), "origin": list(grid.GetOrigin()),
             "direction": list(grid.GetDirection()), "original": original}
    return (image[0] if in_chans == 1 else image).astype(np.float32), attrs


def _check_same_grid(ref: sitk.Image, others: list[sitk.Image], ref_path: str, path: str) -> None:
    """Channel files of one case must share the first file's grid (size, spacing, origin, direction)."""
    for img in others:
        same = (img.GetSize() == ref.GetSize()
                and np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-4, atol=1e-5)
                and np.allclose(img.GetOrigin(), ref.GetOrigin(), rtol=1e-4, atol=1e-3)
                and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-4))
        if not same:
            raise ValueError(f"{path}: its grid (size {img.GetSize()}, spacing {img.GetSpacing()}, origin "
                             f"{img.GetOrigin()}) differs from {ref_path}'s ({ref.GetSize()}, {ref.GetSpacing()}, "
                             f"{ref.GetOrigin()}); the channels of a case must share one grid")
