"""The LiTS segmentation measures of one binary mask pair: Dice, VOE, RVD, ASSD and MSD, on numpy and scipy.

Definitions follow the LiTS evaluation (Bilic et al. 2019) as computed by ``medpy.metric.binary``; the tests
check every value against MedPy. P is the prediction, G the ground truth, both binary (any nonzero voxel is
foreground):

- Dice = 2·|P ∩ G| / (|P| + |G|)
- VOE  = 1 − |P ∩ G| / |P ∪ G|                      (MedPy: ``1 - jc(P, G)``)
- RVD  = (|P| − |G|) / |G|, signed: > 0 over-segments (MedPy: ``ravd(P, G)``)
- ASSD = mean of all surface-to-surface distances, both directions pooled, in mm (MedPy: ``assd``)
- MSD  = max of those distances: the symmetric Hausdorff distance of the surfaces, in mm (MedPy: ``hd``)

The surface of a mask is its voxels that a binary erosion with the connectivity-1 structuring element removes
(face neighbours; outside the array counts as background, so a mask touching the border has surface there).
The distance from a voxel of one surface to the other surface is the exact Euclidean distance, in mm, to the
nearest voxel centre of the other surface.

Empty masks (MedPy raises or returns 0/0 there; we return a value and document it):

- both empty: every measure nan, Dice and VOE included: the structure is absent from both masks, so there is
  nothing to score, and means over cases leave the case out (the project's rule for every Dice, per-class or
  binary, docs/DECISIONS.md; 1.0 would inflate the mean with cases that say nothing). MedPy's ``jc`` assigns
  1.0 to 0/0 and its ``dc`` meant to, but returns nan under numpy ≥ 2.
- exactly one empty: Dice 0.0 and VOE 1.0 (as MedPy); RVD −1.0 if P is empty (as MedPy), nan if G is empty
  (MedPy raises); ASSD and MSD nan (MedPy raises: there is no surface to measure to).

Two differences from the LiTS scoring script itself: it called ``ravd(label, pred)``, i.e. (|G| − |P|) / |P|,
where we take the (|P| − |G|) / |G| above, and it measured ASSD/MSD with its own ``Surface`` class (scoring 0
when a mask was empty), where we use MedPy's ``assd``/``hd`` surfaces and nan.

Distances are computed on a crop, not on the whole volume; see ``_union_bbox`` for why the result is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

__all__ = ["dice_from_counts", "global_dice", "lits_metrics", "mask_dice", "overlap_counts", "surface_distances",
           "surface_metrics"]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape; resample the "
                         "prediction onto the ground truth's grid first")
    return pred, gt


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing {tuple(spacing)} must hold {ndim} positive finite values in mm, in array "
                         "axis order (z, y, x); SimpleITK's GetSpacing() is (x, y, z): reverse it")
    return sp


def _union_bbox(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of P ∪ G grown by ``margin`` voxels (clipped to the array); None if both are
    empty.

    Why cropping to this box changes no surface distance:

    1. Surfaces are unchanged. Whether a foreground voxel survives the erosion depends only on its face
       neighbours. A neighbour outside the box is background in the full array (the box bounds all foreground)
       and background in the crop (``binary_erosion`` treats outside-the-array as background,
       ``border_value=0``), so every voxel erodes the same way. This holds for any margin >= 0; the one-voxel
       margin only gives every surface voxel its whole neighbourhood inside the crop, at the cost of a shell.
    2. Distances are unchanged. The exact EDT of ``~S`` at a voxel p is min over the zeros q of ``~S`` (the
       voxels of surface S) of the spacing-weighted |p - q|. The box holds every voxel of both surfaces, so the
       set of zeros is the same in the crop as in the full array, and every p where the EDT is read (a voxel of
       the other surface) is in the crop; cropping only drops voxels that are neither zeros nor read. A crop
       holding one object only would be wrong: the other surface's voxels outside it would be lost.
       ``test_crop_equals_uncropped`` checks the result against the full-array computation.
    """
    box: list[slice] = []
    # Narrow axis by axis, each profile computed only inside the slab found so far, so the full array is read
    # about once instead of once per axis; np.any reduces nonzero voxels without a boolean copy of the input.
    for axis in range(pred.ndim):
        view = tuple(box) + (slice(None),) * (pred.ndim - len(box))
        others = tuple(a for a in range(pred.ndim) if a != axis)
        profile = np.any(pred[view], axis=others) | np.any(gt[view], axis=others)
        idx = np.flatnonzero(profile)
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, pred.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of a boolean ``mask`` that an erosion with the connectivity-1 structure removes."""
    structure = generate_binary_structure(mask.ndim, 1)
    return mask & ~binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float],
                      *, crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm, float64) from every surface voxel of P to the surface of G, and from G's to P's.

    Args:
        pred, gt: masks of equal shape, e.g. (Z, Y, X); nonzero is foreground. Neither may be empty.
        spacing_zyx: voxel size in mm per array axis, e.g. (z, y, x).
        crop: compute on the union bounding box plus one voxel (default); ``False`` uses the whole array
            (slow, for checking).

    Returns:
        ``(d_pred_to_gt, d_gt_to_pred)``: 1-D arrays, one value per surface voxel of P and of G, in C order.
    """
    pred, gt = _check_pair(pred, gt)
    sp = _check_spacing(spacing_zyx, pred.ndim)
    box = _union_bbox(pred, gt) if crop else tuple(slice(None) for _ in pred.shape)
    p = pred[box].astype(bool, copy=False) if box is not None else np.zeros(0, bool)
    g = gt[box].astype(bool, copy=False) if box is not None else np.zeros(0, bool)
    if not p.any() or not g.any():
        raise ValueError("surface distances need a non-empty prediction and ground truth "
                         f"(foreground voxels: prediction {int(p.sum())}, ground truth {int(g.sum())})")
    p_surf, g_surf = _surface(p), _surface(g)
    del p, g
    # One int32 feature-transform buffer (3 × 4 bytes per voxel) serves both directions.
    features = np.empty((p_surf.ndim,) + p_surf.shape, dtype=np.int32)
    d_pg = _distances_to(g_surf, p_surf, sp, features)
    d_gp = _distances_to(p_surf, g_surf, sp, features)
    return d_pg, d_gp


def _distances_to(target: np.ndarray, query: np.ndarray, spacing: tuple[float, ...],
                  features: np.ndarray) -> np.ndarray:
    """Exact distance (mm) from every True voxel of ``query`` to the nearest True voxel of ``target``.

    ``distance_transform_edt`` (zeros = ``target``) gives, per voxel, the index of its nearest target voxel
    (the feature transform). Its own distance output would be computed densely in numpy, as float64 on
    (ndim, *shape): a fifth of the time and most of the memory on a liver crop. We need it only at the query
    voxels (a few percent of the crop), so we gather their features and do the same arithmetic there: (feature - index) · spacing, squared, summed
    over axes in order, square-rooted. The values are bit-identical to the dense ones.
    """
    distance_transform_edt(~target, sampling=spacing, return_distances=False, return_indices=True,
                           indices=features)
    where = np.nonzero(query)
    squared = np.zeros(where[0].size, dtype=np.float64)
    for axis, (coord, step) in enumerate(zip(where, spacing)):
        delta = (features[axis][where] - coord).astype(np.float64) * step
        squared += delta * delta
    return np.sqrt(squared)


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """``(|P ∩ G|, |P|, |G|)`` in voxels for masks of equal shape (nonzero is foreground)."""
    pred, gt = _check_pair(pred, gt)
    p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def dice_from_counts(inter: int, n_pred: int, n_gt: int) -> float:
    """Dice 2·inter / (n_pred + n_gt) from voxel counts (:func:`overlap_counts`); nan when both masks are empty
    (0/0: nothing to score, module docstring), 0.0 when exactly one is."""
    return float("nan") if n_pred + n_gt == 0 else 2.0 * inter / (n_pred + n_gt)


def mask_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2·|P ∩ G| / (|P| + |G|) of two masks of equal shape (nonzero is foreground); nan when both are
    empty (nothing to score: leave the case out of means), 0.0 when exactly one is."""
    return dice_from_counts(*overlap_counts(pred, gt))


def global_dice(counts: Iterable[tuple[int, int, int]]) -> float:
    """LiTS "Dice global": 2·Σ|P ∩ G| / (Σ|P| + Σ|G|) over cases, i.e. the Dice of all cases pooled.

    Args:
        counts: one ``overlap_counts(pred, gt)`` triple ``(inter, n_pred, n_gt)`` per case, so that volumes
            need not be held together.

    Returns:
        The pooled Dice; nan if every mask is empty or ``counts`` is empty (no cases): nothing to score.
    """
    arr = np.asarray(list(counts), dtype=np.int64).reshape(-1, 3)
    if arr.shape[0] == 0:
        return float("nan")
    if (arr < 0).any() or (arr[:, 0] > arr[:, 1:].min(axis=1)).any():
        raise ValueError("each count must be (inter, n_pred, n_gt) with 0 <= inter <= min(n_pred, n_gt); "
                         "build them with overlap_counts(pred, gt)")
    inter, n_pred, n_gt = (int(v) for v in arr.sum(axis=0))
    return dice_from_counts(inter, n_pred, n_gt)


def lits_metrics(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """The LiTS per-case measures of prediction ``pred`` against ground truth ``gt``.

    Args:
        pred, gt: binary masks (Z, Y, X) of equal shape, any dtype; nonzero is foreground.
        spacing_zyx: voxel size in mm as (z, y, x), the array axis order (SimpleITK spacing reversed).

    Returns:
        ``{"dice", "voe", "rvd", "assd_mm", "msd_mm"}`` as floats; see the module docstring for definitions
        and the values on empty masks (nan distances whenever either mask is empty).

    Only the union bounding box of both masks (plus one voxel) is converted and distance-transformed: cost
    grows with that box, not the volume (a liver pair on a 512×512×200 CT: about 4 s and 200 MiB beyond the
    inputs, ``benchmarks/metrics.py``).
    """
    pred, gt = _check_pair(pred, gt)
    sp = _check_spacing(spacing_zyx, pred.ndim)
    nan = float("nan")
    box = _union_bbox(pred, gt)
    if box is None:  # both empty: nothing to score
        return {"dice": nan, "voe": nan, "rvd": nan, "assd_mm": nan, "msd_mm": nan}
    p, g = pred[box].astype(bool), gt[box].astype(bool)
    # Every foreground voxel is inside the box, so counts on the crop are counts on the volume.
    inter, n_p, n_g = overlap_counts(p, g)
    union = n_p + n_g - inter
    out = {"dice": dice_from_counts(inter, n_p, n_g), "voe": 1.0 - inter / union,
           "rvd": (n_p - n_g) / n_g if n_g else nan, "assd_mm": nan, "msd_mm": nan}
    if n_p and n_g:
        d_pg, d_gp = surface_distances(p, g, sp, crop=False)  # already cropped
        out["assd_mm"] = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
        out["msd_mm"] = float(max(d_pg.max(), d_gp.max()))
    return out


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """HD95 and ASSD (mm) of two masks, both non-empty (MedPy's ``hd95`` and ``assd``): the 95th percentile and
    the mean of the surface distances of both directions pooled. ``{"hd95_mm": nan, "assd_mm": nan}`` when
    either mask is empty (there is no surface to measure to; MedPy raises)."""
    pred, gt = _check_pair(pred, gt)
    if not np.any(pred) or not np.any(gt):
        return {"hd95_mm": float("nan"), "assd_mm": float("nan")}
    d_pg, d_gp = surface_distances(pred, gt, spacing_zyx)
    both = np.concatenate([d_pg, d_gp])
    return {"hd95_mm": float(np.percentile(both, 95)), "assd_mm": float(both.mean())}
