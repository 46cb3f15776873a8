"""build-visceral on a VISCERAL layout made from the real abdominal CT, the test split rule, the split hooks, and
the VISCERAL sample.

Every volume holds the real CT's voxels (3 mm) under a VISCERAL name; the left lung (RadLex 1326) is the real
left upper lobe mask, the right lung (1302) is the liver mask standing in (the real files have no right lung):
what matters here is which file lands on which value. Two volumes per modality are annotated; one more CT
has a right-lung mask of a second annotator (the kidney, so a wrong choice shows), 10000005 has no lung mask,
10000007 only the left lung, and 10000006's right-lung mask lies on another grid.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import zarr
from click.testing import CliRunner

from catalog import assign_splits, load_catalog
from pipeline.cli import main
from pipeline.sample import write_visceral_sample
from pipeline.sources.visceral import MODALITIES, choose_test_patients, n_test_volumes, scan_visceral

from helpers import source_label_stats, stored_label_stats

REGION = {"CT": "wb", "CTce": "ThAb", "MRT1": "wb", "MRT1cefs": "ab"}


def _name(patient: int, modality: str) -> str:
    return f"{10000000 + patient}_1_{modality}_{REGION[modality]}"


@pytest.fixture(scope="module")
def visceral_root(real_dir, tmp_path_factory) -> Path:
    ct_dir = real_dir / "ct"
    ct = sitk.ReadImage(str(ct_dir / "example_ct_sm.nii.gz"))
    mask = {k: sitk.ReadImage(str(ct_dir / f"example_ct_sm_{k}.nii.gz"))
            for k in ("liver", "lung_upper_lobe_left", "kidney_left", "spleen")}
    root = tmp_path_factory.mktemp("visceral")
    (root / "Volumes").mkdir()
    (root / "Segmentations").mkdir()

    def volume(name: str, masks: dict[str, sitk.Image]) -> None:
        # One corner voxel differs per volume: identical image bytes would be one scan under several names, which
        # the splits keep together (issue 15), and this layout stands for different patients.
        img = sitk.Image(ct)
        img[0, 0, 0] = int(img[0, 0, 0]) + len(list((root / "Volumes").iterdir())) + 1
        sitk.WriteImage(img, str(root / "Volumes" / f"{name}.nii.gz"))
        for suffix, img in masks.items():
            sitk.WriteImage(img, str(root / "Segmentations" / f"{name}_{suffix}.nii.gz"))

    lungs = {"1302_3": mask["liver"], "1326_3": mask["lung_upper_lobe_left"]}
    for i, modality in enumerate(MODALITIES):
        volume(_name(10 + i, modality), lungs)
        volume(_name(20 + i, modality), {**lungs, "86_3": mask["spleen"]})  # spleen (RadLex 86): ignored
    volume(_name(1, "CT"), {**lungs, "1302_5": mask["kidney_left"]})
    (root / "Segmentations" / f"{_name(1, 'CT')}_landmarks_3.fcsv").write_text("# Markups fiducial file\n")
    (root / "Segmentations" / f"{_name(1, 'CT')}_lesions_3.fcsv").write_text("# Markups fiducial file\n")
    volume(_name(5, "CTce"), {"58_3": mask["liver"]})
    volume(_name(7, "CT"), {"1326_2": mask["lung_upper_lobe_left"]})
    shifted = sitk.Image(mask["liver"])
    shifted.SetSpacing((3.0, 3.0, 4.0))
    volume(_name(6, "CT"), {"1302_2": shifted, "1326_2": mask["lung_upper_lobe_left"]})
    return root


def _build(root: Path, store: str, *extra: str) -> tuple[str, pd.DataFrame]:
    res = CliRunner().invoke(main, ["build-visceral", str(root), store, "--workers", "0", "--no-progress", *extra])
    assert res.exit_code == 3, res.output  # the mask on another grid
    return res.output, load_catalog(store).set_index("case_id")


@pytest.fixture(scope="module")
def merged(visceral_root, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("merged") / "store")
    output, cat = _build(visceral_root, store)
    return store, output, cat


def test_mask_on_another_grid_is_a_failed_row_naming_it(merged):
    _, output, cat = merged
    bad = _name(6, "CT")
    assert cat.loc[bad, "status"] == "failed"
    err = cat.loc[bad, "error"]
    assert f"{bad}_1302_2.nii.gz" in err and "mask grid differs" in err and "spacing" in err
    assert f"FAILED visceral/{bad}" in output and "1 case(s) failed" in output
    assert (cat.drop(index=bad)["status"] == "ok").all()


def test_unannotated_volumes_are_stored_but_never_trained(merged):
    store, _, cat = merged
    for patient, modality, how in ((5, "CTce", "none"), (7, "CT", "only 1326")):
        row = cat.loc[_name(patient, modality)]
        assert row["status"] == "ok" and not row["has_label"] and row["split"] == "unannotated"
        grp = zarr.open_group(store, path=f"visceral/{_name(patient, modality)}", mode="r")
        assert "label" not in grp and grp.attrs["extra"]["lung_annotation"] == how
    ok = cat[cat["status"] == "ok"]
    assert set(ok.loc[ok["split"].isin(["train", "val", "test"]), "has_label"]) == {True}


def test_every_modality_in_the_fixed_test_split(merged):
    _, _, cat = merged
    ok = cat[cat["status"] == "ok"]
    assert set(ok.loc[ok["split"] == "test", "source_modality"]) == set(MODALITIES)
    # 10 annotated volumes, 9 drawable (10000006's mask header shows another grid): min(8, max(4, 20 % of 9))
    # = 4 test volumes, one per modality
    assert (ok["split"] == "test").sum() == 4
    assert "not drawn for test (header unreadable or a lung mask on another grid): 10000006_1_CT_wb" in merged[1]
    assert set(ok.loc[ok["split"].isin(["train", "val"]), "source_modality"]) == set(MODALITIES)
    assert set(ok["split"]) == {"train", "val", "test", "unannotated"}


def test_lowest_annotator_wins_and_other_files_are_ignored(merged, visceral_root):
    store, _, cat = merged
    name = _name(1, "CT")
    grp = zarr.open_group(store, path=f"visceral/{name}", mode="r")
    assert grp.attrs["extra"]["annotator_1302"] == 3 and grp.attrs["extra"]["other_annotators_1302"] == [5]
    src = cat.loc[name, "source_label"].split(";")
    assert [Path(p).name for p in src] == [f"{name}_1302_3.nii.gz", f"{name}_1326_3.nii.gz"]
    assert not any("_86_" in s for s in cat["source_label"])
    # merged: the stored lung is liver (annotator 3) + left upper lobe, not the kidney of annotator 5
    seg = visceral_root / "Segmentations"
    want = source_label_stats(seg / f"{name}_1302_3.nii.gz", 1)[0] + source_label_stats(seg / f"{name}_1326_3.nii.gz", 1)[0]
    got, _ = stored_label_stats(store, f"visceral/{name}", 1)
    assert abs(got - want) / want < 0.02
    assert cat.loc[name, "label_values"] == [0, 1]


def test_modality_decides_the_air_clamp(merged, visceral_root):
    _, _, cat = merged
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(visceral_root / "Volumes" / f"{_name(10, 'CT')}.nii.gz")))
    ct, mr = cat.loc[_name(10, "CT")], cat.loc[_name(12, "MRT1")]
    assert ct["modality"] == "CT" and mr["modality"] == "MR" and mr["source_modality"] == "MRT1"
    assert ct["air_clamped_fraction"][0] == pytest.approx(np.mean(hu < -1024)) and np.any(hu < -1024)
    assert ct["p005"][0] == pytest.approx(np.percentile(np.maximum(hu, -1024), 0.5))
    assert mr["air_clamped_fraction"] == [0.0]
    assert mr["p005"][0] == pytest.approx(np.percentile(hu, 0.5))  # same voxels, no clamp


def test_separate_lungs_and_lung_volumes(visceral_root, tmp_path, merged):
    store, _, cat = merged
    assert all(v == [0, 1] for v in cat.loc[cat["has_label"], "label_values"])
    sep_store = str(tmp_path / "sep")
    _, sep = _build(visceral_root, sep_store, "--lung-labels", "separate")
    assert all(v == [0, 1, 2] for v in sep.loc[sep["has_label"], "label_values"])
    name = _name(11, "CTce")
    seg = visceral_root / "Segmentations"
    for value, radlex in ((1, 1302), (2, 1326)):
        src_mm3, src_c = source_label_stats(seg / f"{name}_{radlex}_3.nii.gz", 1)
        dst_mm3, dst_c = stored_label_stats(sep_store, f"visceral/{name}", value)
        assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.02 and np.linalg.norm(dst_c - src_c) < 2
    assert 5_000 < source_label_stats(seg / f"{name}_1326_3.nii.gz", 1)[0] < 10_000  # 265 voxels of 27 mm³
    # the same test volumes whatever the labels
    assert sorted(sep.index[sep["split"] == "test"]) == sorted(cat.index[cat["split"] == "test"])


def test_second_build_skips_all(visceral_root, merged):
    store, _, cat = merged
    output, again = _build(visceral_root, store)
    n_ok = int((cat["status"] == "ok").sum())
    assert f"{len(cat)} cases: {n_ok} unchanged (skipped), 1 to convert" in output
    assert again["split"].equals(cat["split"])


def test_a_changed_mask_rebuilds_its_case(visceral_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(visceral_root, root)
    store = str(tmp_path / "store")
    _build(root, store)
    mask_path = root / "Segmentations" / f"{_name(12, 'MRT1')}_1326_3.nii.gz"
    mask = sitk.ReadImage(str(mask_path))
    arr = sitk.GetArrayFromImage(mask)
    arr[0] = 1  # one more slice of "lung"
    changed = sitk.GetImageFromArray(arr)
    changed.CopyInformation(mask)
    sitk.WriteImage(changed, str(mask_path))
    output, cat = _build(root, store)
    assert f"{len(cat) - 2} unchanged (skipped), 2 to convert" in output
    assert cat.loc[_name(12, "MRT1"), "foreground_voxels"] > 265 + 39350


def test_test_split_rule_on_the_paper_scale():
    vols = [(f"v{m}{i}", f"p{m}{i}", m) for m in MODALITIES for i in range(20)]
    assert n_test_volumes(80, 4) == 8 and n_test_volumes(13, 4) == 4 and n_test_volumes(3, 3) == 3
    chosen = choose_test_patients(vols, 8, seed=0)
    assert len(chosen) == 8
    modality_of = {p: m for _, p, m in vols}
    assert sorted(modality_of[p] for p in chosen) == sorted(MODALITIES * 2)
    assert choose_test_patients(vols, 8, seed=0) == chosen != choose_test_patients(vols, 8, seed=1)
    # patient-level: a patient drawn for one modality brings its other volumes
    two = [("a_MRT1", "a", "MRT1"), ("a_MRT1cefs", "a", "MRT1cefs"), ("b_MRT1", "b", "MRT1"),
           ("c_MRT1cefs", "c", "MRT1cefs")]
    for seed in range(5):
        chosen = choose_test_patients(two, 2, seed)
        mods = {m for _, p, m in two if p in chosen}
        assert mods == {"MRT1", "MRT1cefs"}


def test_assign_splits_keeps_source_splits():
    df = pd.DataFrame({
        "domain": ["d"] * 6, "patient_id": ["a", "b", "c", "d", "e", "f"],
        "split": ["test", "unannotated", "", "", "", ""],
        "has_label": [True, False, True, True, True, False],
    })
    split = assign_splits(df, val_fraction=0.1, seed=0)
    assert split[:2].tolist() == ["test", "unannotated"]
    assert split[5] == "test"  # unlabelled without a hint: test, as before
    assert sorted(split[2:5]) == ["train", "train", "val"]  # three hashed patients: one val at least


def test_label_parts_overlap_rule(tmp_path):
    """Masks paint in order: a later mask wins where two overlap, and the overlap is recorded."""
    from pipeline.config import Case, DomainSpec, PrepConfig
    from pipeline.job import build

    from helpers import write_nifti

    img = np.random.default_rng(0).normal(0, 1, (8, 10, 12)).astype(np.float32)
    a = np.zeros(img.shape, np.uint8)
    b = np.zeros(img.shape, np.uint8)
    a[2:6, 2:6, 2:6] = 1
    b[4:8, 4:8, 4:8] = 255  # any value > 0 counts
    paths = [write_nifti(tmp_path / f"{n}.nii.gz", arr) for n, arr in (("img", img), ("a", a), ("b", b))]
    spec = DomainSpec(name="d", source_dataset="t", modality="MR", channel_names=("MR",), labels={1: "a", 2: "b"})
    case = Case(domain="d", case_id="c", scan_id="t:c", patient_id="c", images=(paths[0],),
                label_parts=((paths[1], 1), (paths[2], 2)))
    store = str(tmp_path / "store")
    res = build([(spec, [case])], store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert res.failed == []
    grp = zarr.open_group(store, path="d/c", mode="r")
    lab = grp["label"][...]
    assert (lab == 2).sum() == 64 and (lab == 1).sum() == 64 - 8 and grp.attrs["label_overlap_voxels"] == 8


def test_visceral_sample_has_every_modality_in_test(tmp_path):
    root = tmp_path / "visceral"
    write_visceral_sample(root, seed=0)
    manifest = json.loads((root / "SAMPLE.json").read_text())["visceral"]
    store = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["build-visceral", str(root), store, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    cat = load_catalog(store).set_index("case_id")
    assert len(cat) == len(manifest["volumes"]) and (cat["status"] == "ok").all()
    assert set(cat.loc[cat["split"] == "test", "source_modality"]) == set(MODALITIES)
    assert sorted(cat.index[cat["split"] == "unannotated"]) == sorted(manifest["unannotated_lungs"])
    by_patient = cat.groupby("patient_id")["split"].agg(lambda s: set(s) - {"unannotated"})
    assert (by_patient.map(len) <= 1).all()  # patient-level splits
    spec, cases, _ = scan_visceral(root)
    extra = {c.case_id: c.extra for c in cases}
    two = [e["volume"] for e in manifest["volumes"] if any("two_annotators" in q for q in e["quirks"])]
    assert two and all(extra[v]["annotator_1302"] == 1 and extra[v]["other_annotators_1302"] == [5] for v in two)
