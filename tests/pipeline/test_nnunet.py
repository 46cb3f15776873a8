"""build-nnunet: nnU-Net v2 raw datasets give the stores the MSD path gives from the same voxels."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import load_catalog
from pipeline.cli import main
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sample import write_msd_sample
from pipeline.sample.nnunet import msd_to_nnunet
from pipeline.sources.msd import read_task, scan_msd
from pipeline.sources.nnunet import nnunet_domain_name, nnunet_scan_id, parse_labels, scan_nnunet

from helpers import assert_same_stores

CFG = PrepConfig(chunks=(16, 16, 16))
QUIET = {"workers": 0, "progress": False, "log": lambda s: None}


def _build(found, store) -> str:
    res = build(found, str(store), CFG, **QUIET)
    assert res.ok, res.summary()
    return str(store)


@pytest.fixture(scope="module")
def hippo(real_dir, tmp_path_factory) -> dict:
    """The real Task04_Hippocampus cases in nnU-Net v2 layout, and build-3dseg8's store of them."""
    tmp = tmp_path_factory.mktemp("hippo_nnunet")
    dataset = msd_to_nnunet(real_dir / "msd" / "Task04_Hippocampus", tmp / "nnUNet_raw")
    found, _ = scan_msd(real_dir / "msd", ["Task04_Hippocampus"])
    return {"dataset": dataset, "msd_store": _build(found, tmp / "msd_store"), "tmp": tmp}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msd_samples")
    write_msd_sample(root, seed=0, tasks=["Task05_Prostate", "Task09_Spleen"])
    return root


def test_real_hippocampus_in_v2_layout_builds_the_store_of_build_3dseg8(hippo):
    dataset = hippo["dataset"]
    assert dataset.name == "Dataset004_Hippocampus"
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2} and meta["numTraining"] == 4
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir())[0] == "hippocampus_001_0000.nii.gz"

    spec, cases, notes = scan_nnunet(dataset)
    assert (spec.name, spec.modality, spec.channel_names) == ("hippocampus", "MR", ("MRI",))
    assert spec.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert notes == []
    store = _build([(spec, cases)], hippo["tmp"] / "nnunet_store")
    assert_same_stores(hippo["msd_store"], "hippocampus", store, "hippocampus")
    # Converted from MSD: the same scan ids, so pretraining over both stores trains each scan once.
    ids = lambda s: sorted(load_catalog(s)["scan_id"])  # noqa: E731
    assert ids(store) == ids(hippo["msd_store"]) == [f"msd:Task04_Hippocampus:hippocampus_{n}"
                                                      for n in ("001", "003", "004", "006")]


def test_two_channel_dataset_equals_the_4d_msd_task(samples, tmp_path):
    """Task05_Prostate stores T2 and ADC in one 4D NIfTI; nnU-Net splits them into _0000 and _0001 files."""
    dataset = msd_to_nnunet(samples / "Task05_Prostate", tmp_path / "raw")
    assert (dataset / "imagesTr" / "prostate_00_0001.nii.gz").is_file()
    spec, cases, _ = scan_nnunet(dataset)
    assert spec.channel_names == ("T2", "ADC") and all(len(c.images) == 2 for c in cases)
    assert [c.split_hint for c in cases].count("test") == 1  # imagesTs
    store = _build([(spec, cases)], tmp_path / "nnunet")
    msd = _build([read_task(samples / "Task05_Prostate")], tmp_path / "msd")
    assert_same_stores(msd, "prostate", store, "prostate")
    assert load_catalog(store)["n_channels"].tolist() == [2] * 5


def test_nrrd_dataset_equals_the_msd_task(samples, tmp_path):
    dataset = msd_to_nnunet(samples / "Task09_Spleen", tmp_path / "raw", dataset_id=509, file_ending=".nrrd")
    assert dataset.name == "Dataset509_Spleen"
    assert sorted(p.suffix for p in (dataset / "labelsTr").iterdir()) == [".nrrd"] * 4
    spec, cases, _ = scan_nnunet(dataset)
    assert spec.modality == "CT" and spec.name == "spleen"
    store = _build([(spec, cases)], tmp_path / "nnunet")
    msd = _build([read_task(samples / "Task09_Spleen")], tmp_path / "msd")
    assert_same_stores(msd, "spleen", store, "spleen")
    assert set(load_catalog(store)["scan_id"]) == set(load_catalog(msd)["scan_id"])


def test_missing_channel_or_label_file_is_a_failed_row_naming_it(samples, tmp_path):
    dataset = msd_to_nnunet(samples / "Task05_Prostate", tmp_path / "raw")
    (dataset / "imagesTr" / "prostate_01_0001.nii.gz").unlink()
    (dataset / "labelsTr" / "prostate_02.nii.gz").unlink()
    (dataset / "imagesTr" / "._prostate_00_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    spec, cases, notes = scan_nnunet(dataset)
    assert any("1 file(s) in imagesTr/labelsTr ignored" in n for n in notes)
    res = build([(spec, cases)], str(tmp_path / "store"), CFG, **QUIET)
    failed = {r["case_id"]: r["error"] for r in res.failed}
    assert sorted(failed) == ["prostate_01", "prostate_02"]
    assert failed["prostate_01"].startswith(str(dataset / "imagesTr" / "prostate_01_0001.nii.gz"))
    assert "file not found" in failed["prostate_01"]
    assert failed["prostate_02"].startswith(str(dataset / "labelsTr" / "prostate_02.nii.gz"))
    ok = load_catalog(str(tmp_path / "store")).query("status == 'ok'")
    assert sorted(ok["case_id"]) == ["prostate_00", "prostate_03", "prostate_04"]  # 03: imagesTs


def test_labels_plain_single_value_lists_accepted_regions_and_ignore_refused(tmp_path):
    meta = tmp_path / "dataset.json"
    assert parse_labels({"background": 0, "kidney": [1], "tumor": (2,)}, meta) == \
        {0: "background", 1: "kidney", 2: "tumor"}
    kits = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    with pytest.raises(ValueError, match=r"region-based labels are not supported \('kidney': \[1, 2, 3\]; "
                                         r"'masses': \[2, 3\]\)"):
        parse_labels(kits, meta)
    with pytest.raises(ValueError, match="'ignore' label"):
        parse_labels({"background": 0, "liver": 1, "ignore": 2}, meta)
    with pytest.raises(ValueError, match="no label with value 0"):
        parse_labels({"liver": 1}, meta)
    with pytest.raises(ValueError, match="both have value 1"):
        parse_labels({"background": 0, "a": 1, "b": 1}, meta)


def test_dataset_json_problems_are_refused_naming_it(hippo, tmp_path):
    dataset = tmp_path / "Dataset220_KiTS2023"
    shutil.copytree(hippo["dataset"], dataset)
    meta_path = dataset / "dataset.json"
    meta = json.loads(meta_path.read_text())
    for change, message in (
        ({"file_ending": ".png"}, "file_ending '.png' is not a 3D format"),
        ({"channel_names": {"1": "CT"}}, "'channel_names' must map 0..N-1"),
        ({"labels": {"background": 0, "kidney": [1, 2, 3], "tumor": 2}}, "region-based"),
    ):
        meta_path.write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=message) as err:
            scan_nnunet(dataset)
        assert str(meta_path) in str(err.value)
    msd_style = {k: v for k, v in meta.items() if k != "channel_names"} | {"modality": {"0": "MRI"}}
    meta_path.write_text(json.dumps(msd_style))
    with pytest.raises(ValueError, match="MSD or nnU-Net v1 dataset.json"):
        scan_nnunet(dataset)
    res = CliRunner().invoke(main, ["build-nnunet", str(dataset), str(tmp_path / "s"), "--workers", "0"])
    assert res.exit_code == 2 and "build-msd" in res.output


def test_domain_and_scan_ids(hippo, tmp_path):
    assert nnunet_domain_name("Dataset220_KiTS2023") == "kits2023"
    assert nnunet_domain_name("Dataset003_Liver") == "liver"
    assert nnunet_scan_id("KiTS2023", "case_00000") == "nnunet:KiTS2023:case_00000"
    assert nnunet_scan_id("Liver", "liver_7") == "lits:7"  # MSD Task03_Liver is LiTS
    assert nnunet_scan_id("Liver", "case_7") == "nnunet:Liver:case_7"
    dataset = tmp_path / "Dataset220_KiTS2023"
    shutil.copytree(hippo["dataset"], dataset)
    meta = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    spec, cases, notes = scan_nnunet(dataset)
    assert spec.name == "kits2023" and spec.source_dataset == "Dataset220_KiTS2023"
    assert cases[0].scan_id == "nnunet:KiTS2023:hippocampus_001"
    assert any("numTraining says 5, found 4" in n for n in notes)
    assert scan_nnunet(dataset, domain="hippo_nn")[0].name == "hippo_nn"
    with pytest.raises(ValueError, match="is not lower-case"):
        scan_nnunet(dataset, domain="Hippo/../x")


def test_dataset_key_lists_cases(hippo, tmp_path):
    """nnU-Net v2 lets dataset.json list the cases ("dataset": {case: {images, label}}) instead of the folders."""
    dataset = tmp_path / "Dataset005_Listed"
    dataset.mkdir()
    meta = json.loads((hippo["dataset"] / "dataset.json").read_text())
    (dataset / "scans").mkdir()
    for name in ("imagesTr/hippocampus_001_0000.nii.gz", "labelsTr/hippocampus_001.nii.gz"):
        shutil.copy(hippo["dataset"] / name, dataset / "scans")
    meta["dataset"] = {"h1": {"images": ["./scans/hippocampus_001_0000.nii.gz"],
                              "label": "scans/hippocampus_001.nii.gz"}}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    spec, cases, _ = scan_nnunet(dataset)
    assert [c.case_id for c in cases] == ["h1"] and cases[0].label.endswith("hippocampus_001.nii.gz")


def test_cli_builds_and_refuses_a_domain_built_from_another_dataset(hippo, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(hippo["msd_store"], store)
    args = ["build-nnunet", str(hippo["dataset"]), str(store), "--workers", "0", "--no-progress", "--chunks", "16"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "already holds domain 'hippocampus' built from Task04_Hippocampus" in res.output
    res = CliRunner().invoke(main, [*args, "--domain", "hippocampus_nn"])
    assert res.exit_code == 0, res.output
    assert "4 converted" in res.output
    assert_same_stores(str(store), "hippocampus", str(store), "hippocampus_nn", splits=False)


def test_every_build_refuses_a_domain_of_the_store_from_another_dataset(hippo, real_dir, tmp_path):
    """The clash check lives in job.build, so build-3dseg8 and direct API callers refuse too (not only
    build-msd/-nnunet/-totalseg), before anything is written: the store's catalog is left as it was."""
    import pandas as pd

    from pipeline.sources.naming import StoreDomainError

    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["build-nnunet", str(hippo["dataset"]), str(store), "--workers", "0",
                                    "--no-progress", "--chunks", "16"])
    assert res.exit_code == 0, res.output
    before = load_catalog(str(store))
    assert set(before["domain"]) == {"hippocampus"}
    res = CliRunner().invoke(main, ["build-3dseg8", str(real_dir / "msd"), str(store), "--tasks",
                                    "Task04_Hippocampus", "--workers", "0", "--no-progress"])
    assert res.exit_code == 2
    assert "already holds domain 'hippocampus' built from Dataset004_Hippocampus" in res.output
    found, _ = scan_msd(real_dir / "msd", ["Task04_Hippocampus"])
    with pytest.raises(StoreDomainError, match="Task04_Hippocampus would replace it"):
        build(found, str(store), PrepConfig(), workers=0, progress=False, log=lambda s: None)
    pd.testing.assert_frame_equal(load_catalog(str(store)), before)
