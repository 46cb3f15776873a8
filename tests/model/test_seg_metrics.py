"""LiTS segmentation measures: hand-computed answers, an independent brute-force reference, agreement with MedPy
(``medpy.metric.binary``), empty masks, cropping, and the real CT liver mask."""

from __future__ import annotations

import math
import time
import tracemalloc
import warnings

import numpy as np
import pytest

from model.evaluation.seg_metrics import (
    dice_from_counts,
    global_dice,
    lits_metrics,
    mask_dice,
    overlap_counts,
    surface_distances,
)
from model.evaluation.seg_metrics import _union_bbox  # the crop itself, to check it is a real crop

import medpy.metric.binary as mb  # the reference implementation, in the test extra

OVERLAP_TOL = 1e-6
DIST_TOL_MM = 1e-3
KEYS = {"dice", "voe", "rvd", "assd_mm", "msd_mm"}


def medpy_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """The LiTS measures as MedPy computes them (both masks non-empty)."""
    return {"dice": mb.dc(pred, gt), "voe": 1.0 - mb.jc(pred, gt), "rvd": mb.ravd(pred, gt),
            "assd_mm": mb.assd(pred, gt, voxelspacing=spacing), "msd_mm": mb.hd(pred, gt, voxelspacing=spacing)}


def brute_force_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Independent of scipy: surfaces from explicit face-neighbour checks, distances from all pairs."""
    def surface_points(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m.astype(bool), 1)  # outside the array is background
        core = (slice(1, -1),) * 3
        interior = padded[core].copy()
        for axis in range(3):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis=axis)[core]
        return np.argwhere(m.astype(bool) & ~interior) * np.asarray(spacing)

    sp_, sg = surface_points(pred), surface_points(gt)
    d = np.sqrt(((sp_[:, None, :] - sg[None, :, :]) ** 2).sum(axis=2))
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    p, g = pred.astype(bool), gt.astype(bool)
    inter, n_p, n_g = (p & g).sum(), p.sum(), g.sum()
    return {"dice": 2 * inter / (n_p + n_g), "voe": 1 - inter / (p | g).sum(), "rvd": (n_p - n_g) / n_g,
            "assd_mm": np.concatenate([d_pg, d_gp]).mean(), "msd_mm": max(d_pg.max(), d_gp.max())}


def assert_matches(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert set(ours) == KEYS
    for key in ("dice", "voe", "rvd"):
        assert ours[key] == pytest.approx(ref[key], abs=OVERLAP_TOL), key
    for key in ("assd_mm", "msd_mm"):
        assert ours[key] == pytest.approx(ref[key], abs=DIST_TOL_MM), key


def blob(shape: tuple[int, int, int], rng: np.random.Generator, n: int = 4) -> np.ndarray:
    """Union of ``n`` random ellipsoids (possibly several components, possibly cut by the array border)."""
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    out = np.zeros(shape, bool)
    for _ in range(n):
        c, r = rng.uniform(0, np.array(shape)), rng.uniform(1.5, np.array(shape) / 3)
        out |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    return out


def shifted(mask: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """``mask`` moved by ``shift`` voxels, zeros coming in (no wrap-around, unlike np.roll)."""
    out = np.zeros_like(mask)
    src = tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, mask.shape))
    dst = tuple(slice(max(s, 0), n - max(-s, 0)) for s, n in zip(shift, mask.shape))
    out[dst] = mask[src]
    return out


# ---------------------------------------------------------------- known answers


def test_three_cubes_one_slice_apart_by_hand() -> None:
    # gt: the 3×3×3 cube at z 0..2; pred: the same cube at z 1..3; spacing (z, y, x) = (2.5, 0.8, 0.6) mm.
    # Each surface is 26 voxels (all but the centre). Pred -> gt: its bottom level (z = 1) lies on gt's z = 1
    # ring (8 × 0 mm) except the centre (1,1,1), gt's interior voxel, whose nearest gt surface voxel is its
    # x-neighbour (0.6 mm); its middle ring (z = 2) lies on gt's top cap (8 × 0); its top cap (z = 3) is one
    # slice above gt's top cap (9 × 2.5 mm). Sum 23.1 mm; gt -> pred is the mirror image, also 23.1 mm.
    gt = np.zeros((6, 5, 5), np.uint8)
    gt[0:3, 1:4, 1:4] = 1
    pred = shifted(gt, (1, 0, 0))
    spacing = (2.5, 0.8, 0.6)
    ours = lits_metrics(pred, gt, spacing)
    assert ours["dice"] == pytest.approx(2 * 18 / 54, abs=1e-12)
    assert ours["voe"] == pytest.approx(1 - 18 / 36, abs=1e-12)
    assert ours["rvd"] == 0.0
    assert ours["assd_mm"] == pytest.approx(2 * 23.1 / 52, abs=1e-9)
    assert ours["msd_mm"] == pytest.approx(2.5, abs=1e-9)
    assert_matches(ours, medpy_metrics(pred, gt, spacing))


@pytest.mark.parametrize(("axis", "k"), [(0, 1), (0, 3), (1, 2), (2, 4)])
def test_cubes_offset_by_k_voxels(axis: int, k: int) -> None:
    # Two s-cubes offset by k < s voxels along one axis: overlap (s − k)·s², union (s + k)·s²; the farthest
    # surface voxels are the leading cap's, k voxels beyond the other cube's cap: MSD = k · spacing[axis].
    s, spacing = 6, (2.5, 0.8, 0.6)
    gt = np.zeros((16, 16, 16), bool)
    gt[4:10, 4:10, 4:10] = True
    shift = tuple(k if a == axis else 0 for a in range(3))
    pred = shifted(gt, shift)
    ours = lits_metrics(pred, gt, spacing)
    assert ours["dice"] == pytest.approx((s - k) / s, abs=1e-12)
    assert ours["voe"] == pytest.approx(1 - (s - k) / (s + k), abs=1e-12)
    assert ours["rvd"] == 0.0
    assert ours["msd_mm"] == pytest.approx(k * spacing[axis], abs=1e-9)
    assert_matches(ours, brute_force_metrics(pred, gt, spacing))
    assert_matches(ours, medpy_metrics(pred, gt, spacing))


def test_single_voxels() -> None:
    spacing = (3.0, 0.7, 0.9)
    gt = np.zeros((8, 9, 10), np.int16)
    gt[2, 3, 4] = 1
    assert lits_metrics(gt, gt, spacing) == {"dice": 1.0, "voe": 0.0, "rvd": 0.0, "assd_mm": 0.0, "msd_mm": 0.0}
    pred = np.zeros_like(gt)
    pred[5, 1, 9] = 7  # any nonzero value is foreground
    ours = lits_metrics(pred, gt, spacing)
    dist = math.sqrt((3 * 3.0) ** 2 + (2 * 0.7) ** 2 + (5 * 0.9) ** 2)
    assert ours["dice"] == 0.0 and ours["voe"] == 1.0 and ours["rvd"] == 0.0
    assert ours["assd_mm"] == pytest.approx(dist, abs=1e-9)
    assert ours["msd_mm"] == pytest.approx(dist, abs=1e-9)
    assert_matches(ours, medpy_metrics(pred, gt, spacing))


# ---------------------------------------------------------------- agreement with MedPy


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_anisotropic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(16, 33, size=3))
    spacing = tuple(float(v) for v in rng.uniform(0.4, 5.0, size=3))
    gt = blob(shape, rng)
    pred = blob(shape, rng) if seed % 2 else shifted(gt, tuple(int(v) for v in rng.integers(-3, 4, size=3)))
    if not gt.any() or not pred.any():
        pytest.skip("degenerate draw")
    ours = lits_metrics(pred, gt, spacing)
    assert_matches(ours, medpy_metrics(pred, gt, spacing))
    assert_matches(ours, brute_force_metrics(pred, gt, spacing))


def test_masks_touching_the_array_border() -> None:
    # The border counts as background: a mask filling the whole array has its outer shell as surface.
    spacing = (2.0, 0.75, 0.75)
    full = np.ones((10, 12, 14), bool)
    inner = np.zeros_like(full)
    inner[3:7, 4:8, 5:9] = True
    edge = np.zeros_like(full)
    edge[0:4, 0:12, 9:14] = True  # touches five faces of the array
    rng = np.random.default_rng(7)
    cut = blob(full.shape, rng, n=6) | edge
    for pred, gt in [(full, inner), (inner, full), (edge, inner), (cut, edge), (full, edge)]:
        ours = lits_metrics(pred, gt, spacing)
        assert_matches(ours, medpy_metrics(pred, gt, spacing))
        assert_matches(ours, brute_force_metrics(pred, gt, spacing))


def test_real_liver_shifted(real_dir) -> None:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(real_dir / "ct" / "example_ct_sm_liver.nii.gz"))
    gt = sitk.GetArrayFromImage(image)  # (z, y, x); the liver spans every slice, so it touches the z border
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # SimpleITK gives (x, y, z)
    for shift in [(1, 2, -3), (0, -4, 0), (-2, 0, 5)]:
        pred = shifted(gt, shift)
        ours = lits_metrics(pred, gt, spacing)
        assert_matches(ours, medpy_metrics(pred, gt, spacing))
        assert 0.5 < ours["dice"] < 1.0 and ours["msd_mm"] > 0.0


# ---------------------------------------------------------------- empty masks


def test_both_empty() -> None:
    empty = np.zeros((5, 6, 7), np.uint8)
    ours = lits_metrics(empty, empty, (1.0, 1.0, 1.0))
    # Nothing to score: every measure nan, so means over cases leave the case out (the project's one rule).
    assert all(math.isnan(ours[k]) for k in ("dice", "voe", "rvd", "assd_mm", "msd_mm"))
    assert math.isnan(mask_dice(empty, empty)) and math.isnan(dice_from_counts(0, 0, 0))
    assert mask_dice(empty, empty + 1) == 0.0 and dice_from_counts(0, 0, 3) == 0.0
    # MedPy differs here: jc assigns 1.0 to 0/0, dc's code 1.0 too, but only via a ZeroDivisionError that
    # numpy >= 2 integer scalars no longer raise: there it returns nan with a warning.
    assert mb.jc(empty, empty) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medpy_dc = mb.dc(empty, empty)
    assert medpy_dc == 1.0 or math.isnan(medpy_dc)
    for fn in (lambda: mb.ravd(empty, empty), lambda: mb.assd(empty, empty), lambda: mb.hd(empty, empty)):
        with pytest.raises(RuntimeError):
            fn()


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty(empty_side: str) -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 3:6, 1:7] = True
    empty = np.zeros_like(mask)
    pred, gt = (empty, mask) if empty_side == "pred" else (mask, empty)
    ours = lits_metrics(pred, gt, (2.0, 1.0, 1.0))
    # Overlap measures equal MedPy's.
    assert ours["dice"] == mb.dc(pred, gt) == 0.0
    assert ours["voe"] == 1.0 - mb.jc(pred, gt) == 1.0
    if empty_side == "pred":
        assert ours["rvd"] == mb.ravd(pred, gt) == -1.0
    else:  # relative to an empty ground truth: undefined; MedPy raises
        assert math.isnan(ours["rvd"])
        with pytest.raises(RuntimeError):
            mb.ravd(pred, gt)
    # No surface to measure to: nan here, MedPy raises.
    assert math.isnan(ours["assd_mm"]) and math.isnan(ours["msd_mm"])
    for fn in (mb.assd, mb.hd):
        with pytest.raises(RuntimeError):
            fn(pred, gt, voxelspacing=(2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(pred, gt, (2.0, 1.0, 1.0))


# ---------------------------------------------------------------- cropping and cost


@pytest.mark.parametrize("seed", range(4))
def test_crop_equals_uncropped(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = (40, 48, 44)
    spacing = tuple(float(v) for v in rng.uniform(0.5, 4.0, size=3))
    # Even seeds: two small objects apart from each other, away from the border, so the crop is strictly
    # smaller than the array and the nearest surface lies across empty space inside it. Odd seeds add
    # ragged, speckled objects that touch the border.
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    gt[tuple(slice(int(a), int(a) + 4) for a in rng.integers(3, 10, size=3))] = True
    pred[tuple(slice(int(a), int(a) + 5) for a in rng.integers(18, 26, size=3))] = True
    if seed % 2:
        pred |= blob(shape, rng, n=2) & (rng.random(shape) < 0.9)
    else:
        box = _union_bbox(pred, gt)
        assert all(s.stop - s.start < n for s, n in zip(box, shape))
    cropped = surface_distances(pred, gt, spacing)
    full = surface_distances(pred, gt, spacing, crop=False)
    for a, b in zip(cropped, full):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert_matches(lits_metrics(pred, gt, spacing), medpy_metrics(pred, gt, spacing))


def test_small_objects_in_a_ct_sized_volume_are_cheap() -> None:
    # 512×512×200 uint8 masks (50 MB each) holding two small cubes: only the crop is converted and
    # distance-transformed, so extra memory stays a few MB (a full-volume EDT would need > 1 GB).
    shape = (200, 512, 512)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    gt[90:110, 200:240, 300:330] = 1
    pred[92:112, 203:243, 298:328] = 1
    tracemalloc.start()
    t0 = time.perf_counter()
    ours = lits_metrics(pred, gt, (1.5, 0.7, 0.7))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert elapsed < 5.0
    small = (slice(85, 117), slice(195, 248), slice(290, 335))
    assert ours == pytest.approx(lits_metrics(pred[small], gt[small], (1.5, 0.7, 0.7)), abs=1e-12)


# ---------------------------------------------------------------- helpers and validation


def test_overlap_counts_and_global_dice() -> None:
    rng = np.random.default_rng(3)
    cases = [(blob((12, 14, 16), rng), blob((12, 14, 16), rng)) for _ in range(4)]
    cases.append((np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)))
    counts = [overlap_counts(p, g) for p, g in cases]
    for (p, g), (inter, n_p, n_g) in zip(cases, counts):
        assert (inter, n_p, n_g) == (int((p & g).sum()), int(p.sum()), int(g.sum()))
        assert all(type(v) is int for v in (inter, n_p, n_g))
        if n_p or n_g:
            assert mask_dice(p, g) == pytest.approx(mb.dc(p, g), abs=OVERLAP_TOL)
    # Pooled Dice = the Dice of all cases laid side by side in one volume.
    pooled_p = np.concatenate([p.ravel() for p, _ in cases])
    pooled_g = np.concatenate([g.ravel() for _, g in cases])
    assert global_dice(counts) == pytest.approx(mb.dc(pooled_p, pooled_g), abs=1e-12)
    assert global_dice(iter(counts)) == global_dice(counts)
    assert math.isnan(global_dice([(0, 0, 0), (0, 0, 0)]))
    assert global_dice([(0, 5, 0)]) == 0.0
    assert math.isnan(global_dice([]))
    with pytest.raises(ValueError, match="overlap_counts"):
        global_dice([(6, 5, 9)])


def test_input_validation() -> None:
    a = np.zeros((4, 5, 6), bool)
    with pytest.raises(ValueError, match="differ in shape"):
        lits_metrics(a, np.zeros((4, 5, 7), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="reverse it"):
        lits_metrics(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        lits_metrics(a, a, (1.0, 0.0, 1.0))
