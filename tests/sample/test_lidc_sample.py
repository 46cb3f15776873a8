"""The miniature LIDC-IDRI round-trips through the LIDC readers with the ratings it wrote."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.sample.lidc import write_lidc_sample
from pipeline.sources.lidc_nodules import consensus_mask, group_marks, nodules_table, reader_mask, reader_marks
from pipeline.sources.lidc_series import find_lidc_series, read_ct_series
from pipeline.sources.lidc_xml import parse_lidc_xml


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lidc")
    dirs = write_lidc_sample(root, seed=0)
    assert [d.parents[1].name for d in dirs] == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def analyse(ref):
    image, index = read_ct_series(ref.dicom_dir)
    nodules = group_marks(reader_marks(parse_lidc_xml(ref.xml_path), image, index))
    return image, index, nodules, nodules_table(ref.patient_id, ref.series_uid, nodules)


def test_layout_and_missing_xml(sample):
    refs = find_lidc_series(sample)
    assert [r.patient_id for r in refs] == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    assert [r.xml_path is None for r in refs] == [False, False, True]
    for ref in refs:
        assert ref.dicom_dir.parent.name == ref.study_uid and ref.dicom_dir.name == ref.series_uid
        read = parse_lidc_xml(ref.xml_path) if ref.xml_path else None
        assert read is None or (read.series_uid, read.study_uid) == (ref.series_uid, ref.study_uid)


def test_slices_read_in_z_order_despite_shuffled_names(sample):
    ref = find_lidc_series(sample)[0]
    image, index = read_ct_series(ref.dicom_dir)
    names = [Path(f).name for f in index.files]
    assert names != sorted(names) and names != sorted(names, reverse=True)
    assert image.GetSize() == (64, 64, 24) and np.allclose(image.GetSpacing(), (0.75, 0.75, 2.5))
    assert np.allclose(np.diff(index.z_mm), 2.5) and len(set(index.sop_uids)) == 24
    hu = sitk.GetArrayFromImage(image)
    assert hu[:, 0, 0].tolist() == [-2048] * 24  # padding outside the circular FOV
    raw = np.frombuffer(Path(index.files[7]).read_bytes()[-64 * 64 * 2 :], "<i2").reshape(64, 64)
    assert np.array_equal(raw.astype(np.int32) - 1024, hu[7])  # stored values shifted by the intercept
    reader = sitk.ImageFileReader()
    reader.SetFileName(index.files[7])
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|0060") == "CT" and reader.GetMetaData("0028|1052").strip() == "-1024"
    assert reader.GetMetaData("0008|0018") == index.sop_uids[7]


def test_nodules_round_trip(sample):
    ref = find_lidc_series(sample)[0]
    image, _, nodules, table = analyse(ref)
    assert len(table) == 3
    by_label = {row.label: row for row in table.itertuples()}
    malignant, benign = by_label["malignant"], by_label["benign"]
    assert malignant.malignancy == [4, 4, 5, 5] and malignant.n_readers == 4 and malignant.selected
    assert benign.malignancy == [1, 2, 2] and benign.n_readers == 3 and benign.selected
    assert 12 < malignant.diameter_mm < 16 and 7 < benign.diameter_mm < 11
    small = table[table.is_small].iloc[0]
    assert small.n_readers == 2 and small.malignancy == [] and small.label is None and not small.selected
    for row in table.itertuples():
        assert len(set(row.reader_nodule_ids)) == row.n_readers  # a different id from each reader
    read = parse_lidc_xml(ref.xml_path)
    assert [len(s.non_nodules) for s in read.sessions] == [0, 0, 1, 0]
    shape = image.GetSize()[::-1]
    hu = sitk.GetArrayFromImage(image)
    for nodule in nodules:
        if not nodule.is_small:
            assert hu[consensus_mask(nodule, shape).to_full(shape)].mean() > -300  # it covers the sphere


def test_hole_is_subtracted(sample):
    ref = find_lidc_series(sample)[0]
    image, _, nodules, table = analyse(ref)
    shape = image.GetSize()[::-1]
    nodule = nodules[int(table[table.label == "malignant"].nodule_index.iloc[0])]
    mark = next(m for m in nodule.marks if any(not r.inclusion for r in m.nodule.rois))
    hole = next(r for r in mark.nodule.rois if not r.inclusion)
    k = next(r.slice_index for r in mark.rasters if r.z_mm == hole.z_mm)
    cx, cy = np.rint(hole.points.mean(axis=0)).astype(int)
    mask = reader_mask(mark, shape).to_full(shape)
    assert not mask[k, cy, cx] and mask[k, cy, cx + 5]
    assert sitk.GetArrayFromImage(image)[k, cy, cx] < -800  # the cavity is air in the image too


def test_nodule_past_the_last_slice(sample):
    [row] = analyse(find_lidc_series(sample)[1])[3].itertuples()
    assert row.n_rois_outside_series > 0 and row.n_readers == 2 and not row.selected
    assert row.malignancy == [3, 4] and row.label == "malignant"


def test_deterministic(tmp_path, sample):
    again = tmp_path / "again"
    write_lidc_sample(again, seed=0)
    assert tree_digest(again) == tree_digest(sample)
    other = tmp_path / "other"
    write_lidc_sample(other, seed=1)
    assert tree_digest(other).keys() != tree_digest(sample).keys()
    with pytest.raises(ValueError, match="unknown sample size"):
        write_lidc_sample(tmp_path / "x", size="huge")
