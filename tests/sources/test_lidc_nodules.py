"""Readers' marks -> nodules, masks and crops: synthetic geometry checks and the real LIDC-IDRI-0001 nodule."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.sources.lidc_crop import nodule_crop
from pipeline.sources.lidc_nodules import (
    TABLE_COLUMNS, ReaderMark, consensus_mask, group_marks, malignancy_label, nodules_table,
    polygon_fill, reader_mask, reader_marks,
)
from pipeline.sources.lidc_series import SliceIndex, read_ct_series
from pipeline.sources.lidc_xml import LidcRead, ReaderNodule, ReadingSession, Roi, parse_lidc_xml

LIDC = Path(__file__).resolve().parents[1] / "data" / "real" / "lidc"
SERIES_DIR = (LIDC / "LIDC-IDRI-0001" / "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
              / "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192")


def ring(cx: int, cy: int, r: int) -> np.ndarray:
    """Square ring of boundary pixels, drawn as a closed contour."""
    side = [(x, cy - r) for x in range(cx - r, cx + r)] + [(cx + r, y) for y in range(cy - r, cy + r)]
    side += [(x, cy + r) for x in range(cx + r, cx - r, -1)] + [(cx - r, y) for y in range(cy + r, cy - r, -1)]
    return np.array(side + [side[0]])


def test_polygon_fill_counts_contour_as_inside():
    mask, offset = polygon_fill(ring(10, 10, 2))
    assert offset == (8, 8) and mask.shape == (5, 5) and mask.all()
    point, offset = polygon_fill(np.array([[3, 7]]))
    assert offset == (7, 3) and point.tolist() == [[True]]
    # an L-shaped (concave) polygon: 4x4 square minus its upper-right 2x2 quadrant
    ell, _ = polygon_fill(np.array([[0, 0], [1, 0], [1, 2], [3, 2], [3, 3], [0, 3], [0, 0]]))
    assert ell.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def synthetic(n_slices: int = 3) -> tuple[sitk.Image, SliceIndex]:
    image = sitk.Image(32, 32, n_slices, sitk.sitkInt16)
    image.SetSpacing((0.5, 0.5, 2.0))
    image.SetOrigin((10.0, 20.0, -50.0))
    z = -50.0 + 2.0 * np.arange(n_slices)
    return image, SliceIndex(tuple(f"1.2.{k}" for k in range(n_slices)), z, tuple(f"{k}.dcm" for k in range(n_slices)))


def read_of(*sessions: list[ReaderNodule]) -> LidcRead:
    return LidcRead("x.xml", "1.2", "1.3", [ReadingSession(f"r{i}", list(s), []) for i, s in enumerate(sessions)])


def test_holes_z_fallback_and_rois_outside_series():
    image, index = synthetic()
    rois = [Roi(-48.0, "1.2.1", True, ring(16, 16, 6)), Roi(-48.0, "1.2.1", False, ring(16, 16, 2)),
            Roi(-46.2, "stale-uid", True, ring(16, 16, 3)),  # matched by z (within half a gap)
            Roi(-40.0, "gone", True, ring(16, 16, 3))]  # slice not in the folder
    [mark] = reader_marks(read_of([ReaderNodule("n", 4, {"malignancy": 4}, rois)]), image, index)
    assert mark.n_rois_outside_series == 1
    box = reader_mask(mark, (3, 32, 32))
    full = box.to_full((3, 32, 32))
    assert box.offset == (1, 10, 10)
    assert full[1].sum() == 13 * 13 - 5 * 5 and not full[1, 16, 16] and full[1, 16, 12]
    assert full[2].sum() == 7 * 7 and full[0].sum() == 0
    assert mark.diameter_mm == pytest.approx(np.hypot(12, 12) * 0.5)
    # the centroid includes the off-series roi at z=-40 (weight 49 of 193 pixels)
    expected_z = (-48.0 * 144 + -46.0 * 49 + -40.0 * 49) / 242
    assert np.allclose(mark.centroid_mm, (10 + 16 * 0.5, 20 + 16 * 0.5, expected_z))


def fake_mark(reader: str, xyz: tuple[float, float, float], diameter: float, rating: int | None) -> ReaderMark:
    pts = np.array([[0, 0]]) if diameter == 0 else np.array([[0, 0], [1, 0], [1, 1]])
    nodule = ReaderNodule(f"{reader}-{xyz}", rating, {}, [Roi(xyz[2], "", True, pts)])
    return ReaderMark(reader, nodule, np.array(xyz, float), diameter, 0.0, 0, ())


def test_grouping_one_mark_per_reader_and_radius_rule():
    marks = [
        fake_mark("a", (0, 0, 0), 20.0, 5), fake_mark("b", (6, 0, 0), 18.0, 4), fake_mark("c", (1, 0, 0), 22.0, 5),
        fake_mark("a", (14, 0, 0), 4.0, 2),  # reader a again, linked to b (8 mm <= b's radius 9 mm): stays apart
        fake_mark("b", (40, 0, 0), 0.0, None), fake_mark("c", (43, 0, 0), 0.0, None),  # two points 3 mm apart
        fake_mark("a", (52, 0, 0), 0.0, None),  # 9 mm from the points: beyond link_mm=5
    ]
    groups = group_marks(marks)
    assert [sorted(m.reader_id for m in g.marks) for g in groups] == [["a", "b", "c"], ["a"], ["b", "c"], ["a"]]
    assert groups[0].ratings == [4, 5, 5] and groups[1].ratings == [2]
    assert groups[2].is_small and np.isnan(groups[2].diameter_mm)
    assert [g.index for g in groups] == [0, 1, 2, 3]


def test_malignancy_label():
    assert malignancy_label([4, 5, 5, 5]) == "malignant"
    assert malignancy_label([3, 4]) == "malignant"  # median 3.5
    assert malignancy_label([1, 3, 5]) == "benign"
    assert malignancy_label([]) is None


def test_crop_clamps_padding_and_keeps_lps_orientation():
    arr = np.full((10, 20, 20), 40, np.int16)
    arr[:, :, :3] = -2048
    arr[5, 4, 15] = 1000
    image = sitk.GetImageFromArray(arr)
    image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))  # x flipped: array x runs towards R
    image.SetSpacing((1.0, 1.0, 1.0))
    bright = np.array(image.TransformIndexToPhysicalPoint((15, 4, 5)))
    crop, mask, info = nodule_crop(image, None, bright, size_mm=5.0, spacing_mm=1.0)
    assert crop.shape == (5, 5, 5) and crop.dtype == np.float32 and mask.sum() == 0
    assert crop[2, 2, 2] == 1000 and not info["padded"]
    edge = np.array(image.TransformIndexToPhysicalPoint((1, 10, 5)))
    crop, _, info = nodule_crop(image, None, edge, size_mm=9.0)
    assert crop.min() == -1024 and info["n_clamped"] > 0 and info["padded"]
    # crop x runs from physical x=-5 (index 5) to x=3 (index -3): body, then padding, then outside
    assert np.all(crop[:, :, :3] == 40) and np.all(crop[:, :, 3:6] == -1024) and np.all(crop[:, :, 6:] == -1000)
    assert info["fraction_outside"] == pytest.approx(3 / 9)
    far, _, info = nodule_crop(image, None, bright + 500, size_mm=4.0)
    assert np.all(far == -1000) and info["fraction_outside"] == 1.0


@pytest.fixture(scope="module")
def real():
    if not SERIES_DIR.is_dir():
        pytest.skip(f"real LIDC data not found at {LIDC}")
    image, index = read_ct_series(SERIES_DIR)
    nodules = group_marks(reader_marks(parse_lidc_xml(SERIES_DIR / "69.xml"), image, index))
    return image, index, nodules


def test_real_grouping_and_table(real):
    _, _, nodules = real
    table = nodules_table("LIDC-IDRI-0001", "1.2", nodules)
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 4
    big = table[~table.is_small]
    assert len(big) == 1
    row = big.iloc[0]
    assert row.malignancy == [4, 5, 5, 5] and row.label == "malignant" and row.selected
    assert row.n_readers == 4 and len(set(row.reader_nodule_ids)) == 4 and row.n_rois_outside_series == 0
    assert np.allclose(row.centroid_mm, (56.4, 86.4, -115.8), atol=0.3)
    assert 30 < row.diameter_mm < 35 and 6000 < row.volume_mm3 < 9000
    small = table[table.is_small]
    assert small.n_readers.tolist() == [3, 3, 3] and small.n_rois_outside_series.tolist() == [3, 3, 3]
    assert small.label.isna().all() and not small.selected.any()
    assert sorted(round(c[2], 1) for c in small.centroid_mm) == [-175.0, -175.0, -150.0]


def test_real_consensus_mask(real):
    image, _, nodules = real
    shape = image.GetSize()[::-1]
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    nodule = next(n for n in nodules if not n.is_small)
    readers = [reader_mask(m, shape) for m in nodule.marks]
    union = np.zeros(shape, bool)
    for r in readers:
        union |= r.to_full(shape)
    consensus = consensus_mask(nodule, shape)
    volumes = [r.voxels * voxel_mm3 for r in readers]
    assert consensus.voxels > 0
    assert min(volumes) <= consensus.voxels * voxel_mm3 <= max(volumes)
    assert consensus.voxels < union.sum()
    assert not np.any(consensus.to_full(shape) & ~union)
    for small in (n for n in nodules if n.is_small):  # all their points lie on slices outside the folder
        assert consensus_mask(small, shape) is None


def test_real_crop_is_padded(real):
    image, _, nodules = real
    nodule = next(n for n in nodules if not n.is_small)
    consensus = consensus_mask(nodule, image.GetSize()[::-1])
    crop, mask, info = nodule_crop(image, consensus, nodule.centroid_mm)
    assert crop.shape == mask.shape == (48, 48, 48) and crop.dtype == np.float32 and mask.dtype == np.uint8
    assert info["padded"] and info["fraction_outside"] == pytest.approx(8 / 48, abs=1 / 48)
    assert np.all(crop[0] == -1000)  # below z=-133.75 mm: outside the 16 slices
    assert crop.min() >= -1024
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    assert mask.sum() == pytest.approx(consensus.voxels * voxel_mm3, rel=0.1)
    assert crop[mask > 0].mean() > -300 and crop[24, 24, 24] > -300  # soft tissue at the centre
