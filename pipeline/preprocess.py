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
from typing import Any

import numpy as np

from catalog.card import case_recipe

from . import geometry
from .config import Case, PrepConfig
from .convert import normalize_channels
from .labels import CaseError

__all__ = ["preprocess_scan", "recipe_from_store"]


def _usable_spacing(header: geometry.Header, modality: str) -> bool:
    """The build's rule (:func:`pipeline.sources.lits.has_usable_spacing`), except that an MR at exactly 1 mm
    isotropic is plausible; only a CT with the identity affine is taken for a header without spacing."""
    from .sources.lits import has_usable_spacing, identity_unit_spacing

    return has_usable_spacing(header) or (modality != "CT" and identity_unit_spacing(header))


def recipe_from_store(store: str | os.PathLike[str], store_path: str) -> dict[str, Any]:
    """The preprocessing of ``store``'s domain as JSON-able dict, read from one built case (``store_path``,
    "<domain>/<case_id>") and its domain's frozen plan: target spacing (z, y, x) mm, modality, percentiles or CT
    window, air clamp, image dtype (:func:`catalog.card.case_recipe`, which weight cards record too)."""
    return case_recipe(store, store_path)


def preprocess_scan(path: str | os.PathLike[str], recipe: dict[str, Any], *, modality: str | None = None,
                    spacing_xyz: tuple[float, float, float] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a one-channel scan and preprocess it as ``recipe`` says.

    Returns the image (Z, Y, X) float32 on the stored grid (values rounded through the store's dtype, as
    training saw them) and attrs like a stored case's (``spacing``, ``origin``, ``direction``, ``original``) for
    :func:`pipeline.geometry.to_original_grid`. ``modality`` ("CT" or "MR") is needed when the recipe's domain
    mixes modalities (VISCERAL: "CT/MR"): it decides the CT air clamp. ``spacing_xyz`` (mm, file axis order)
    replaces the header's spacing; a header without usable spacing (zero, NaN, or a CT with the 1 × 1 × 1 mm
    identity affine of LiTS 28-47) is refused unless it is given, since the scan would be resampled at the wrong
    size. Raises ``ValueError`` naming the file.
    """
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
    channels = geometry.read_channels(path, spacing_xyz)
    if len(channels) != 1:
        raise ValueError(f"{path}: {len(channels)} channels; the network takes one-channel scans")
    ref = channels[0]
    original = {"size_xyz": list(ref.GetSize()), "spacing_xyz": list(ref.GetSpacing()),
                "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection())}
    if spacing_xyz is not None:  # the mask goes back with the file's own header spacing
        original["header_spacing_xyz"] = list(header.spacing)
    cfg = PrepConfig(dtype=recipe["dtype"], clip_percentiles=tuple(recipe["percentiles"]),
                     air_hu=float(recipe["air_hu"]),
                     ct_window=tuple(recipe["ct_window"]) if recipe.get("ct_window") else None,
                     image_interpolation=recipe.get("image_interpolation", "linear"))
    case = Case(domain=recipe["domain"], case_id="predict", scan_id="predict", patient_id="predict",
                images=(path,))
    try:
        image, _, grid = normalize_channels(channels, geometry.zyx_to_xyz(recipe["target_spacing"]), cfg,
                                            mod == "CT", case)
    except CaseError as exc:
        raise ValueError(str(exc)) from None
    attrs = {"spacing": list(recipe["target_spacing"]), "origin": list(grid.GetOrigin()),
             "direction": list(grid.GetDirection()), "original": original}
    return image[0].astype(np.float32), attrs
