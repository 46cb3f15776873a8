"""build-totalseg on the real CT and its masks arranged as TotalSegmentator subjects."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from catalog import load_catalog
from pipeline.cli import main
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sources.msd import read_task
from pipeline.sources.totalseg import read_meta, resolve_classes, scan_totalseg
from pipeline.sources.totalseg_classes import GROUPS

from helpers import assert_same_stores

CFG = PrepConfig(chunks=(16, 16, 16))
QUIET = {"workers": 0, "progress": False, "log": lambda s: None}
MASKS = ["liver", "spleen", "kidney_left", "lung_upper_lobe_left"]
CLASSES = ["spleen", "liver", "lung_upper_lobe_left", "kidney_left"]  # values 1..4 in this order
SPLITS = {"s0001": "train", "s0002": "test"}


def _arrange(real_dir: Path, root: Path, subjects=SPLITS) -> Path:
    """The real CT as TotalSegmentator subjects (s0002: a copy), with a v2 meta.csv (semicolons)."""
    ct = real_dir / "ct"
    for subject in subjects:
        (root / subject / "segmentations").mkdir(parents=True)
        shutil.copyfile(ct / "example_ct_sm.nii.gz", root / subject / "ct.nii.gz")
        for name in MASKS:
            shutil.copyfile(ct / f"example_ct_sm_{name}.nii.gz", root / subject / "segmentations" / f"{name}.nii.gz")
    lines = ["image_id;age;gender;institute;study_type;split;manufacturer"]
    lines += [f"{s};63;f;A;ct abdomen;{split};siemens" for s, split in subjects.items()]
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


def _composed_msd_task(real_dir: Path, task: Path, classes: list[str], subjects=SPLITS) -> Path:
    """The same CT with the masks composed by numpy (values 1..N in ``classes`` order, a later class wins where
    masks overlap; classes without a real mask are empty), as an MSD task folder: what build-3dseg8's source
    reads."""
    ct = real_dir / "ct"
    ref = sitk.ReadImage(str(ct / "example_ct_sm.nii.gz"))
    label = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
    for value, name in enumerate(classes, start=1):
        if name not in MASKS:  # an empty mask: paints nothing
            continue
        label[sitk.GetArrayFromImage(sitk.ReadImage(str(ct / f"example_ct_sm_{name}.nii.gz"))) > 0] = value
    img = sitk.GetImageFromArray(label)
    img.CopyInformation(ref)
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    for subject in subjects:
        shutil.copyfile(ct / "example_ct_sm.nii.gz", task / "imagesTr" / f"{subject}.nii.gz")
        sitk.WriteImage(img, str(task / "labelsTr" / f"{subject}.nii.gz"))
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", **{str(i): c for i, c in enumerate(classes, 1)}},
            "training": [{"image": f"./imagesTr/{s}.nii.gz", "label": f"./labelsTr/{s}.nii.gz"} for s in subjects]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


@pytest.fixture(scope="module")
def totalseg(real_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("totalseg")
    root = _arrange(real_dir, tmp / "Totalsegmentator_dataset_v201")
    store = str(tmp / "store")
    res = CliRunner().invoke(main, ["build-totalseg", str(root), store, "--classes", ",".join(CLASSES),
                                    "--workers", "0", "--no-progress", "--chunks", "16"])
    assert res.exit_code == 0, res.output
    return {"root": root, "store": store, "tmp": tmp, "output": res.output}


def test_composed_store_equals_the_msd_path_on_the_same_voxels(real_dir, totalseg):
    task = _composed_msd_task(real_dir, totalseg["tmp"] / "Task900_TotalSeg", CLASSES)
    spec, cases = read_task(task, domain="totalseg")
    ref = str(totalseg["tmp"] / "ref")
    assert build([(spec, cases)], ref, CFG, **QUIET).ok
    # Splits differ on purpose: TotalSegmentator's own split is kept (s0002 is a test subject).
    assert_same_stores(ref, "totalseg", totalseg["store"], "totalseg", splits=False)
    cat = load_catalog(totalseg["store"]).set_index("case_id")
    assert cat.loc["s0001", "label_values"] == [0, 1, 2, 3, 4]
    assert cat.loc["s0001", "scan_id"] == "totalseg:s0001" and cat.loc["s0001", "modality"] == "CT"
    assert "classes: 1 spleen, 2 liver, 3 lung_upper_lobe_left, 4 kidney_left" in totalseg["output"]


def test_dataset_split_is_kept(totalseg):
    cat = load_catalog(totalseg["store"]).set_index("case_id")
    assert cat["split"].to_dict() == SPLITS
    assert cat["has_label"].all()  # TotalSegmentator's test subjects are labelled, and stay out of training


def test_a_missing_mask_file_fails_its_subject_naming_it(totalseg, tmp_path):
    root = tmp_path / "ts"
    shutil.copytree(totalseg["root"], root)
    missing = root / "s0002" / "segmentations" / "spleen.nii.gz"
    missing.unlink()
    store = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["build-totalseg", str(root), store, "--classes", ",".join(CLASSES),
                                    "--workers", "0", "--no-progress", "--chunks", "16"])
    assert res.exit_code == 3, res.output
    assert "1 mask file(s) of the chosen classes are missing" in res.output
    cat = load_catalog(store).set_index("case_id")
    assert cat.loc["s0001", "status"] == "ok" and cat.loc["s0002", "status"] == "failed"
    assert cat.loc["s0002", "error"].startswith(str(missing)) and "file not found" in cat.loc["s0002", "error"]


def test_group_organs_with_empty_masks_of_absent_structures(real_dir, totalseg, tmp_path):
    """TotalSegmentator writes every class file; structures out of view are empty masks: background."""
    root = tmp_path / "ts"
    shutil.copytree(totalseg["root"], root)
    empty = sitk.Image(sitk.ReadImage(str(root / "s0001" / "ct.nii.gz")).GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(sitk.ReadImage(str(root / "s0001" / "ct.nii.gz")))
    for subject in SPLITS:
        for name in GROUPS["organs"]:
            path = root / subject / "segmentations" / f"{name}.nii.gz"
            if not path.exists():
                sitk.WriteImage(empty, str(path))
    spec, cases, notes = scan_totalseg(root, groups=["organs"])
    assert len(spec.labels) == 25 and spec.labels[1] == "spleen" and spec.labels[24] == "kidney_cyst_right"
    assert notes == []
    store = str(tmp_path / "store")
    assert build([(spec, cases)], store, CFG, **QUIET).ok
    values = {name: GROUPS["organs"].index(name) + 1 for name in MASKS}
    assert values == {"liver": 5, "spleen": 1, "kidney_left": 3, "lung_upper_lobe_left": 10}
    ref_task = _composed_msd_task(real_dir, tmp_path / "Task901_Organs", list(GROUPS["organs"]))
    ref = str(tmp_path / "ref")
    assert build([read_task(ref_task, domain="totalseg")], ref, CFG, **QUIET).ok
    assert_same_stores(ref, "totalseg", store, "totalseg", splits=False)
    assert load_catalog(store).set_index("case_id").loc["s0001", "label_values"] == [0, 1, 3, 5, 10]


def test_class_choice_is_checked(totalseg):
    with pytest.raises(ValueError, match="not both and not neither"):
        resolve_classes(["liver"], ["organs"])
    with pytest.raises(ValueError, match="not both and not neither"):
        resolve_classes(None, None)
    with pytest.raises(ValueError, match="listed twice: liver"):
        resolve_classes(["liver", "spleen", "liver"])
    with pytest.raises(ValueError, match="unknown TotalSegmentator group"):
        resolve_classes(groups=["bones"])
    assert resolve_classes(groups=["organs", "ribs"])[24] == "rib_left_1"
    assert len(GROUPS["all"]) == 117 and GROUPS["all"][50] == "heart"  # TotalSegmentator v2 value 51
    with pytest.raises(ValueError, match=r"no subject has a mask of livr \(did you mean liver\?\)"):
        scan_totalseg(totalseg["root"], ["livr"])


def test_meta_csv_comma_separated_and_bad_split(tmp_path):
    (tmp_path / "meta.csv").write_text("image_id,split\ns0001,val\n")
    assert read_meta(tmp_path) == ({"s0001": "val"}, [])
    (tmp_path / "meta.csv").write_text("image_id;split\ns0001;holdout\n")
    with pytest.raises(ValueError, match="line 2: split 'holdout'"):
        read_meta(tmp_path)


def test_rebuilding_with_another_class_order_is_refused(totalseg, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(totalseg["store"], store)
    res = CliRunner().invoke(main, ["build-totalseg", str(totalseg["root"]), str(store), "--classes",
                                    ",".join(reversed(CLASSES)), "--workers", "0", "--no-progress"])
    assert res.exit_code == 2 and "was built with labels" in res.output
    res = CliRunner().invoke(main, ["build-totalseg", str(totalseg["root"]), str(store), "--classes",
                                    ",".join(CLASSES), "--workers", "0", "--no-progress", "--chunks", "16"])
    assert res.exit_code == 0 and "0 converted, 2 skipped" in res.output, res.output
