"""LIDC-IDRI nodules: readers' marks -> grouped nodules, table rows and consensus masks (crops: lidc_crop).

Geometry: contour points are (x, y) = (column, row) pixel indices of the slice they were drawn on; a roi is put on
a slice by SOPInstanceUID first, then by nearest z within half a slice gap (``SliceIndex.slice_of``). Rois on
slices missing from the folder still count for centroids and sizes (their slice position is extrapolated from
z) but cannot be rasterised; they are counted in ``n_rois_outside_series``.

Rasterisation: an edge map is the ring of boundary pixels drawn just outside the nodule, so the contour pixels
count as inside (even-odd fill plus the contour line). ``inclusion=FALSE`` contours are holes: their filled
polygon, contour included, is subtracted from the union of the inclusion contours of the same slice.

Grouping rule (the same nodule gets a different id from each reader): two marks by different readers may
belong to one nodule when their centroid distance is <= max(``link_mm``, radius_a, radius_b), radius = half the
mark's longest in-plane chord. Clusters are merged greedily in order of increasing distance, with complete
linkage (every pair in a cluster satisfies the rule) and at most one mark per reader per cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .lidc_series import SliceIndex
from .lidc_xml import LidcRead, ReaderNodule, Roi

__all__ = [
    "AIR_HU", "MIN_HU", "BoxMask", "ReaderMark", "Nodule", "TABLE_COLUMNS", "polygon_fill", "reader_marks",
    "group_marks", "malignancy_label", "nodules_table", "reader_mask", "consensus_mask",
]

AIR_HU = -1000.0  # fill value for crop voxels outside the scanned volume
MIN_HU = -1024.0  # values below (FOV padding -2048/-3024) are clamped to this before use


@dataclass(frozen=True, eq=False)
class BoxMask:
    """A boolean mask on a box of the image grid: ``array`` (z, y, x) whose first voxel is ``offset`` (z, y, x)."""

    offset: tuple[int, int, int]
    array: np.ndarray

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.array))

    def to_full(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The mask as a full (z, y, x) bool array of ``shape``."""
        full = np.zeros(shape, dtype=bool)
        z, y, x = self.offset
        dz, dy, dx = self.array.shape
        full[z : z + dz, y : y + dy, x : x + dx] = self.array
        return full

    def to_image(self, reference: sitk.Image) -> sitk.Image:
        """The box as a uint8 SimpleITK image placed in ``reference``'s physical space."""
        out = sitk.GetImageFromArray(self.array.astype(np.uint8))
        out.SetSpacing(reference.GetSpacing())
        out.SetDirection(reference.GetDirection())
        z, y, x = self.offset
        out.SetOrigin(reference.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
        return out


@dataclass(frozen=True, eq=False)
class _SliceRaster:
    z_mm: float
    slice_index: int | None  # None: the slice is not in the folder
    mask: np.ndarray  # (y, x) bool, inclusion minus holes
    offset: tuple[int, int]  # (y0, x0) pixel of mask[0, 0]


@dataclass(frozen=True, eq=False)
class ReaderMark:
    """One reader's mark of one nodule, measured: centroid (x, y, z LPS mm), longest chord (mm), volume (mm³)."""

    reader_id: str
    nodule: ReaderNodule
    centroid_mm: np.ndarray
    diameter_mm: float
    volume_mm3: float
    n_rois_outside_series: int
    rasters: tuple[_SliceRaster, ...]

    @property
    def is_small(self) -> bool:
        return self.nodule.is_small

    @property
    def malignancy(self) -> int | None:
        return self.nodule.malignancy


@dataclass(frozen=True, eq=False)
class Nodule:
    """Readers' marks grouped into one nodule (at most one mark per reader)."""

    index: int
    marks: tuple[ReaderMark, ...]

    @property
    def reader_ids(self) -> list[str]:
        return [m.reader_id for m in self.marks]

    @property
    def is_small(self) -> bool:
        """True when every reader marked it as < 3 mm (a point, no contour)."""
        return all(m.is_small for m in self.marks)

    @property
    def centroid_mm(self) -> np.ndarray:
        """Mean of the contoured marks' centroids (of all marks when all are points), LPS mm (x, y, z)."""
        marks = [m for m in self.marks if not m.is_small] or list(self.marks)
        return np.mean([m.centroid_mm for m in marks], axis=0)

    @property
    def diameter_mm(self) -> float:
        """Max over readers of the longest in-plane chord (mm); NaN when all marks are points."""
        sizes = [m.diameter_mm for m in self.marks if not m.is_small]
        return max(sizes) if sizes else math.nan

    @property
    def ratings(self) -> list[int]:
        """Malignancy ratings (1-5) of the readers who rated it, sorted ascending."""
        return sorted(m.malignancy for m in self.marks if m.malignancy is not None)


def polygon_fill(points: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Fill a closed contour of (x, y) pixel points: returns a (h, w) bool mask and its (y0, x0) offset.

    Pixels whose centre lies inside by the even-odd rule are set, and so are the pixels on the contour itself.
    """
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
    if len(pts) >= 3:
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(float)
        xa, ya = pts[:, 0].astype(float), pts[:, 1].astype(float)
        xb, yb = np.roll(xa, -1), np.roll(ya, -1)
        for xi, yi, xj, yj in zip(xa, ya, xb, yb):
            if yi == yj:
                continue  # horizontal edges never cross a scanline under the half-open rule
            crosses = (yi > ys) != (yj > ys)
            mask ^= crosses & (xs < xi + (ys - yi) * (xj - xi) / (yj - yi))
    for (xi, yi), (xj, yj) in zip(pts, np.roll(pts, -1, axis=0)):
        n = int(max(abs(xj - xi), abs(yj - yi))) + 1
        line_x = np.rint(np.linspace(xi, xj, n)).astype(np.int64) - x0
        line_y = np.rint(np.linspace(yi, yj, n)).astype(np.int64) - y0
        mask[line_y, line_x] = True
    return mask, (int(y0), int(x0))


def _slice_raster(rois: list[Roi], slice_index: int | None) -> _SliceRaster:
    """Union of the inclusion contours of one slice minus its holes, on the contours' common bounding box."""
    fills = [(r.inclusion, *polygon_fill(r.points)) for r in rois]
    y0 = min(off[0] for _, _, off in fills)
    x0 = min(off[1] for _, _, off in fills)
    y1 = max(off[0] + m.shape[0] for _, m, off in fills)
    x1 = max(off[1] + m.shape[1] for _, m, off in fills)
    keep, holes = np.zeros((y1 - y0, x1 - x0), bool), np.zeros((y1 - y0, x1 - x0), bool)
    for inclusion, m, (oy, ox) in fills:
        target = keep if inclusion else holes
        target[oy - y0 : oy - y0 + m.shape[0], ox - x0 : ox - x0 + m.shape[1]] |= m
    return _SliceRaster(rois[0].z_mm, slice_index, keep & ~holes, (y0, x0))


def _longest_chord_mm(rois: list[Roi], spacing_xy: tuple[float, float]) -> float:
    best = 0.0
    for roi in rois:
        if roi.inclusion and len(roi.points) > 1:
            p = roi.points.astype(float) * np.asarray(spacing_xy)
            best = max(best, float(np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)).max()))
    return best


def _measure(reader_id: str, nodule: ReaderNodule, image: sitk.Image, index: SliceIndex) -> ReaderMark:
    by_z: dict[float, list[Roi]] = {}
    for roi in nodule.rois:
        if len(roi.points):
            by_z.setdefault(round(roi.z_mm, 2), []).append(roi)
    rasters = []
    for rois in by_z.values():
        slices = {index.slice_of(r.sop_uid, r.z_mm) for r in rois}
        rasters.append(_slice_raster(rois, slices.pop() if len(slices) == 1 else None))
    sx, sy = image.GetSpacing()[:2]
    weights, points = [], []
    for r in rasters:
        k = r.slice_index if r.slice_index is not None else index.continuous_index(r.z_mm)
        ys, xs = np.nonzero(r.mask)
        if len(ys):
            weights.append(len(ys))
            points.append((xs.mean() + r.offset[1], ys.mean() + r.offset[0], k))
    if not points:  # only holes: fall back to the raw contour points
        roi = nodule.rois[0]
        points, weights = [(*roi.points.mean(axis=0), index.continuous_index(roi.z_mm))], [1]
    mean_index = np.average(np.asarray(points, float), axis=0, weights=weights)
    centroid = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in mean_index)))
    n_pixels = sum(int(r.mask.sum()) for r in rasters)
    outside = sum(1 for roi in nodule.rois if index.slice_of(roi.sop_uid, roi.z_mm) is None)
    return ReaderMark(
        reader_id=reader_id,
        nodule=nodule,
        centroid_mm=centroid,
        diameter_mm=_longest_chord_mm(nodule.rois, (sx, sy)),
        volume_mm3=0.0 if nodule.is_small else n_pixels * sx * sy * index.gap_mm,
        n_rois_outside_series=outside,
        rasters=tuple(rasters),
    )


def reader_marks(read: LidcRead, image: sitk.Image, index: SliceIndex,
                 notes: list[str] | None = None) -> list[ReaderMark]:
    """Measure every reader's nodule marks in ``image``'s geometry (marks without any point are skipped).

    A mark with a contour point outside the image's columns × rows is refused, with a line in ``notes``: the
    fill of its contour would allocate its bounding box (a point at 40000,40000 asks for ~25 GB) and measure
    a nodule metres wide. The other marks go on.
    """
    width, height = image.GetSize()[:2]
    marks = []
    for session in read.sessions:
        for nodule in session.nodules:
            points = [r.points for r in nodule.rois if len(r.points)]
            if not points:
                continue
            pts = np.concatenate(points)
            outside = (pts[:, 0] < 0) | (pts[:, 0] >= width) | (pts[:, 1] < 0) | (pts[:, 1] >= height)
            if outside.any():
                x, y = (int(v) for v in pts[np.argmax(outside)])
                if notes is not None:
                    notes.append(f"reader {session.reader_id} nodule {nodule.nodule_id!r}: contour point "
                                 f"({x}, {y}) lies outside the {width} × {height} image: that mark is left out")
                continue
            marks.append(_measure(session.reader_id, nodule, image, index))
    return marks


def group_marks(marks: list[ReaderMark], *, link_mm: float = 5.0) -> list[Nodule]:
    """Group marks of different readers into nodules (rule in the module docstring), sorted by z, y, x.

    ``link_mm`` is the smallest linking distance (mm), needed for point marks that have no radius.
    """
    n = len(marks)
    centroids = np.array([m.centroid_mm for m in marks]).reshape(n, 3)
    dist = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
    radius = np.array([m.diameter_mm / 2 for m in marks])
    linked = dist <= np.maximum(link_mm, np.maximum.outer(radius, radius))
    clusters = {i: [i] for i in range(n)}
    owner = list(range(n))
    pairs = sorted((dist[i, j], i, j) for i in range(n) for j in range(i + 1, n) if linked[i, j])
    for _, i, j in pairs:
        a, b = owner[i], owner[j]
        if a == b:
            continue
        readers_a = {marks[k].reader_id for k in clusters[a]}
        if any(marks[k].reader_id in readers_a for k in clusters[b]):
            continue
        if not linked[np.ix_(clusters[a], clusters[b])].all():
            continue
        clusters[a] += clusters.pop(b)
        for k in clusters[a]:
            owner[k] = a
    groups = [tuple(marks[k] for k in sorted(members)) for members in clusters.values()]
    groups.sort(key=lambda g: tuple(np.mean([m.centroid_mm for m in g], axis=0)[::-1]))
    return [Nodule(index=i, marks=g) for i, g in enumerate(groups)]


def malignancy_label(ratings: list[int]) -> str | None:
    """Aggregate label: "malignant" when the median rating is > 3 (ratings 1-3 benign, 4-5 malignant),
    "benign" otherwise, None without ratings."""
    if not ratings:
        return None
    return "malignant" if median(ratings) > 3 else "benign"


TABLE_COLUMNS = [
    "patient_id", "series_uid", "nodule_index", "centroid_mm", "diameter_mm", "volume_mm3", "n_readers",
    "n_readers_contoured", "reader_ids", "reader_nodule_ids", "malignancy", "malignancy_median", "label",
    "is_small", "n_rois_outside_series", "selected",
]


def nodules_table(
    patient_id: str, series_uid: str, nodules: list[Nodule], *, min_readers: int = 3
) -> pd.DataFrame:
    """One row per nodule (columns ``TABLE_COLUMNS``).

    ``centroid_mm`` is [x, y, z] LPS mm; ``diameter_mm`` the max over readers of the longest in-plane chord;
    ``volume_mm3`` the median over contouring readers of their contour volume (holes subtracted);
    ``malignancy`` the sorted ratings (unrated readers left out); ``label`` from ``malignancy_label``
    ("malignant"/"benign"/None); ``is_small`` when every reader marked it as a < 3 mm point;
    ``selected`` when at least ``min_readers`` readers contoured it (marked it as >= 3 mm), as in LUNA16.
    """
    rows = []
    for nod in nodules:
        contoured = [m for m in nod.marks if not m.is_small]
        ratings = nod.ratings
        rows.append({
            "patient_id": patient_id,
            "series_uid": series_uid,
            "nodule_index": nod.index,
            "centroid_mm": [float(v) for v in nod.centroid_mm],
            "diameter_mm": nod.diameter_mm,
            "volume_mm3": float(median(m.volume_mm3 for m in contoured)) if contoured else math.nan,
            "n_readers": len(nod.marks),
            "n_readers_contoured": len(contoured),
            "reader_ids": nod.reader_ids,
            "reader_nodule_ids": [m.nodule.nodule_id for m in nod.marks],
            "malignancy": ratings,
            "malignancy_median": float(median(ratings)) if ratings else math.nan,
            "label": malignancy_label(ratings),
            "is_small": nod.is_small,
            "n_rois_outside_series": sum(m.n_rois_outside_series for m in nod.marks),
            "selected": len(contoured) >= min_readers,
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    # object dtype keeps a missing label None (a string dtype would turn it into NaN)
    table["label"] = pd.Series([r["label"] for r in rows], index=table.index, dtype=object)
    return table


def reader_mask(mark: ReaderMark, shape: tuple[int, int, int]) -> BoxMask | None:
    """One reader's mask on the image grid of ``shape`` (z, y, x); None when no roi lies on a present slice."""
    placed = [r for r in mark.rasters if r.slice_index is not None and r.mask.any()]
    if not placed:
        return None
    z0 = min(r.slice_index for r in placed)
    y0 = max(0, min(r.offset[0] for r in placed))
    x0 = max(0, min(r.offset[1] for r in placed))
    z1 = max(r.slice_index for r in placed) + 1
    y1 = min(shape[1], max(r.offset[0] + r.mask.shape[0] for r in placed))
    x1 = min(shape[2], max(r.offset[1] + r.mask.shape[1] for r in placed))
    box = np.zeros((z1 - z0, max(0, y1 - y0), max(0, x1 - x0)), dtype=bool)
    for r in placed:
        ys, xs = np.nonzero(r.mask)
        ys, xs = ys + r.offset[0] - y0, xs + r.offset[1] - x0
        ok = (ys >= 0) & (ys < box.shape[1]) & (xs >= 0) & (xs < box.shape[2])
        box[r.slice_index - z0, ys[ok], xs[ok]] = True
    return BoxMask((z0, y0, x0), box) if box.any() else None


def consensus_mask(
    nodule: Nodule, shape: tuple[int, int, int], *, fraction: float = 0.5
) -> BoxMask | None:
    """Voxels marked by at least ``fraction`` (default half) of the readers who marked the nodule.

    Readers whose rois all lie off the series still count in the denominator. None when nothing is placed.
    """
    masks = [m for m in (reader_mask(mark, shape) for mark in nodule.marks) if m is not None]
    if not masks:
        return None
    lo = np.min([m.offset for m in masks], axis=0)
    hi = np.max([np.add(m.offset, m.array.shape) for m in masks], axis=0)
    count = np.zeros(tuple(hi - lo), dtype=np.int16)
    for m in masks:
        z, y, x = np.subtract(m.offset, lo)
        dz, dy, dx = m.array.shape
        count[z : z + dz, y : y + dy, x : x + dx] += m.array
    agreed = count >= fraction * len(nodule.marks) - 1e-9
    return BoxMask(tuple(int(v) for v in lo), agreed) if agreed.any() else None
