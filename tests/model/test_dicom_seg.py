"""``med3d-train predict --format dicom-seg`` on the real LIDC CT series: the SEG read back with highdicom has
one BINARY segment per class named as the run's classes, one frame per source slice and segment, frames equal
to the NIfTI mask predict writes for the same series, and references to exactly the source SOP instances.

The run: a one-step ``seg`` fine-tuning on a CT store built from the real TotalSegmentator CT and its liver,
spleen and left-kidney masks (an MSD task folder; about 5 s), so that predict takes a CT series (an MR run is
refused on one, see the last tests). The source slices are ordered here by pydicom's ``ImagePositionPatient``,
independently of :mod:`volume.dicom_series`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from model.api import predict
from model.evaluation.predict import ScansSkippedError

CLASSES = ["liver", "spleen", "kidney_left"]


@pytest.fixture(scope="module")
def series(real_dir) -> Path:
    [folder] = {p.parent for p in (real_dir / "lidc").rglob("*.dcm")}
    return folder


@pytest.fixture(scope="module")
def source(series) -> list:
    """The source slices' headers (pydicom), in order along z (axial slices: the normal is +z)."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.glob("*.dcm")]
    return sorted(heads, key=lambda d: float(d.ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def ct_run(real_dir, tmp_path_factory) -> Path:
    """A one-step seg run on a CT store of three copies of the real CT labelled 1 liver, 2 spleen, 3 kidney_left,
    declared at about 6 mm (the store's target spacing, so that the LIDC series is 60 × 60 × 7 voxels to
    segment: a few seconds on a CPU)."""
    from model.api import finetune
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import read_task

    root = tmp_path_factory.mktemp("dicom_seg")
    task = root / "Task99_CTOrgans"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    ct = sitk.ReadImage(str(real_dir / "ct" / "example_ct_sm.nii.gz"))
    label = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(ct)
    for value, name in enumerate(CLASSES, start=1):
        organ = sitk.ReadImage(str(real_dir / "ct" / f"example_ct_sm_{name}.nii.gz"))
        organ.CopyInformation(ct)
        label = sitk.Mask(label, sitk.Cast(organ, sitk.sitkUInt8) == 0, outsideValue=value)
    training = []
    for n, spacing in enumerate([(6.0, 6.0, 6.0), (5.0, 5.0, 7.0), (7.0, 7.0, 5.0)]):  # a 6 mm grid: quick
        for img, folder in ((ct, "imagesTr"), (label, "labelsTr")):
            img = sitk.Image(img)
            img.SetSpacing(spacing)
            sitk.WriteImage(img, str(task / folder / f"organs_{n:03d}.nii.gz"))
        training.append({"image": f"./imagesTr/organs_{n:03d}.nii.gz", "label": f"./labelsTr/organs_{n:03d}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({
        "name": "CTOrgans", "modality": {"0": "CT"}, "labels": {"0": "background", **{
            str(i): n for i, n in enumerate(CLASSES, start=1)}}, "training": training, "test": []}))
    store = str(root / "store")
    assert build([read_task(task, "ct_organs")], store, PrepConfig(chunks=(16, 16, 16)), workers=0,
                 progress=False, log=lambda s: None).failed == []
    finetune("seg", store, str(root / "run"), steps=1, batch=1, patch=(16, 16, 16), workers=0, device="cpu",
             ckpt_every=0, val_every=0, decoder_widths=(8, 8, 8), progress=False, log=lambda s: None)
    return root / "run"


def _oracle(image: np.ndarray) -> np.ndarray:
    """A deterministic segmenter: 1 (liver) where the preprocessed CT is bright, 2 (spleen) where it is dark
    in the middle of the volume, 3 (kidney_left) nowhere."""
    out = np.zeros(image.shape, np.uint8)
    out[image > 0.5] = 1
    mid = np.zeros(image.shape, bool)
    mid[:, image.shape[1] // 4: image.shape[1] // 2, :] = True
    out[mid & (image < -0.5)] = 2
    return out


def test_the_seg_frames_equal_the_nifti_mask_and_reference_the_source_slices(ct_run, series, source, tmp_path):
    lines: list[str] = []
    [nifti] = predict(ct_run, [series], tmp_path / "nifti", segmenter=_oracle, log=lines.append)
    [dcm] = predict(ct_run, [series], tmp_path / "seg", segmenter=_oracle, output_format="dicom-seg",
                    log=lines.append)
    assert nifti.name == f"{series.name}_mask.nii.gz" and dcm.name == f"{series.name}_seg.dcm"
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [dcm.name]  # the SEG alone, no NIfTI
    mask = sitk.ReadImage(str(nifti))
    labels = sitk.GetArrayFromImage(mask)
    # the NIfTI mask is on the series' own grid, as an independent reader (GDCM's own sort) places it
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    ct = reader.Execute()
    assert mask.GetSize() == ct.GetSize() == (512, 512, 16)
    np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    assert set(np.unique(labels)) == {0, 1, 2}  # liver and spleen found, kidney_left not

    seg = hd.seg.segread(str(dcm))
    uids = [d.SOPInstanceUID for d in source]
    assert seg.SegmentationType == "BINARY" and seg.NumberOfFrames == 16 * 3  # one frame per slice and segment
    assert [s.SegmentLabel for s in seg.SegmentSequence] == CLASSES
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    assert frames.shape == labels.shape and np.array_equal(frames, labels)
    for number in (1, 2, 3):  # each segment on its own too
        one = seg.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0]
        assert np.array_equal(one, labels == number)
    [ref] = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence) == sorted(uids)
    per_frame = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                 for f in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(set(per_frame)) == sorted(uids) and len(per_frame) == 48
    for key in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert getattr(seg, key) == getattr(source[0], key)
    positions = {tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                 for f in seg.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(round(float(v), 3) for v in d.ImagePositionPatient) for d in source}
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "Med3D" and f"run={ct_run.name}" in algo.AlgorithmParameters
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert any("no voxel of kidney_left" in line for line in lines)


def test_cli_dicom_seg_of_the_trained_network_equals_its_nifti_mask(ct_run, series, source, tmp_path):
    from model.cli import main

    for fmt in ("nifti", "dicom-seg"):
        res = CliRunner().invoke(main, ["predict", str(ct_run), str(series), "--out", str(tmp_path / fmt),
                                        "--format", fmt])
        assert res.exit_code == 0, res.output
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / f"{series.name}_mask.nii.gz")))
    seg = hd.seg.segread(str(tmp_path / "dicom-seg" / f"{series.name}_seg.dcm"))
    frames = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in source], combine_segments=True)
    assert np.array_equal(frames, labels)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == CLASSES
    # a second call is refused unless --overwrite, as for NIfTI masks
    res = CliRunner().invoke(main, ["predict", str(ct_run), str(series), "-o", str(tmp_path / "dicom-seg"),
                                    "--format", "dicom-seg"])
    assert res.exit_code != 0 and "--overwrite" in res.output


def test_dicom_seg_of_a_nifti_input_is_refused_before_anything_is_read(ct_run, real_dir, tmp_path):
    scan = real_dir / "ct" / "example_ct_sm.nii.gz"
    with pytest.raises(ValueError, match=r"example_ct_sm\.nii\.gz: --format dicom-seg needs a DICOM series input"):
        predict(ct_run, [scan], tmp_path / "out", segmenter=_oracle, output_format="dicom-seg", log=print)
    assert not (tmp_path / "out").exists()


def test_without_highdicom_the_format_names_the_extra_before_any_read(ct_run, series, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom raises ImportError
    monkeypatch.setattr("volume.dicom_series.read_series", lambda s: pytest.fail("a pixel was read"))
    with pytest.raises(ValueError, match=r"needs the highdicom package: pip install 'med3d\[dicom\]'"):
        predict(ct_run, [series], tmp_path / "out", segmenter=_oracle, output_format="dicom-seg", log=print)
    assert not (tmp_path / "out").exists()


def test_dicom_seg_of_a_classify_run_is_a_usage_error(ct_run, series, tmp_path):
    from model.cli import main

    run = tmp_path / "classify_run"
    shutil.copytree(ct_run, run)
    spec = json.loads((run / "finetune.json").read_text())
    (run / "finetune.json").write_text(json.dumps({**spec, "task": "classify"}))
    res = CliRunner().invoke(main, ["predict", str(run), str(series), "-o", str(tmp_path / "out"),
                                    "--format", "dicom-seg"])
    assert res.exit_code == 2 and "is a classify run" in res.output and "predictions.csv" in res.output
    assert not (tmp_path / "out").exists()


def test_an_mr_run_skips_a_ct_series_naming_both(ct_run, series, tmp_path):
    run = tmp_path / "mr_run"
    shutil.copytree(ct_run, run)
    spec = json.loads((run / "finetune.json").read_text())
    spec["preprocessing"]["modality"] = "MR"
    (run / "finetune.json").write_text(json.dumps(spec))
    lines: list[str] = []
    with pytest.raises(ScansSkippedError) as err:
        predict(run, [series], tmp_path / "out", segmenter=_oracle, output_format="dicom-seg", log=lines.append)
    [(skipped, why)] = err.value.skipped
    assert skipped == series and "a CT series, and the run was trained on MR scans" in why
    with pytest.raises(ScansSkippedError, match="--modality MR, but the series says CT"):
        predict(ct_run, [series], tmp_path / "out", segmenter=_oracle, modality="MR", log=lines.append)


def _reoriented_copy(series: Path, dest: Path, row: tuple, col: tuple) -> Path:
    """The LIDC slices with other direction cosines: same pixels, slice k at first position + k × 2.5 mm along
    the new normal, file names shuffled against that order."""
    dest.mkdir()
    row, col = np.array(row, float), np.array(col, float)
    normal = np.cross(row, col)
    heads = sorted((pydicom.dcmread(f) for f in series.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    for k, ds in enumerate(heads):
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([10.0, -20.0, 30.0]) + 2.5 * k * normal]
        ds.save_as(dest / f"slice_{(5 * k) % len(heads):02d}.dcm")
    return dest


@pytest.mark.parametrize("row, col", [((-1, 0, 0), (0, -1, 0)), ((0, 1, 0), (0, 0, -1))], ids=["flipped", "sagittal"])
def test_the_seg_keeps_the_source_orientation(ct_run, tmp_path, series, row, col):
    folder = _reoriented_copy(series, tmp_path / "series", row, col)
    [nifti] = predict(ct_run, [folder], tmp_path / "nifti", segmenter=_oracle, log=lambda s: None)
    [dcm] = predict(ct_run, [folder], tmp_path / "seg", segmenter=_oracle, output_format="dicom-seg",
                    log=lambda s: None)
    mask = sitk.ReadImage(str(nifti))
    normal = np.cross(row, col)
    np.testing.assert_allclose(np.reshape(mask.GetDirection(), (3, 3)), np.stack([row, col, normal], 1), atol=1e-6)
    heads = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")),
                   key=lambda d: np.dot(np.array(d.ImagePositionPatient, float), normal))
    labels = sitk.GetArrayFromImage(mask)
    assert labels.shape == (16, 512, 512) and set(np.unique(labels)) == {0, 1, 2}
    seg = hd.seg.segread(str(dcm))
    frames = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in heads], combine_segments=True)
    assert np.array_equal(frames, labels)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], [*row, *col], atol=1e-6)


def test_a_truncated_slice_skips_its_series_with_one_line(ct_run, series, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(series, folder)
    victim = folder / "-115.000000.dcm"
    victim.write_bytes(victim.read_bytes()[:200_000])  # the header whole, the pixel data cut
    lines: list[str] = []
    with pytest.raises(ScansSkippedError) as err:
        predict(ct_run, [folder], tmp_path / "out", segmenter=_oracle, output_format="dicom-seg", log=lines.append)
    [(skipped, why)] = err.value.skipped
    assert skipped == folder and str(folder) in why and "\n" not in why
    assert "-115.000000.dcm: cannot read the DICOM header" in why
    assert err.value.written == [] and not list((tmp_path / "out").glob("*.dcm"))
