"""build-msd: any MSD task folder, through build-3dseg8's per-task source and the same job."""
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
from pipeline.sources.msd import scan_msd
from pipeline.sources.msd_tasks import msd_domain_name, scan_msd_tasks

from helpers import assert_same_stores

CFG = PrepConfig(chunks=(16, 16, 16))
QUIET = {"workers": 0, "progress": False, "log": lambda s: None}


def _as_task(src: Path, dst: Path, old: str, new: str) -> Path:
    """Copy MSD task folder ``src`` to ``dst`` renaming its cases ``old*`` -> ``new*`` (files and dataset.json)."""
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src).parent / path.name.replace(old, new)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    meta = json.loads((dst / "dataset.json").read_text().replace(old, new))
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory) -> Path:
    """Sample Task04_Hippocampus and Task09_Spleen, plus Task06_Lung: the spleen cases renamed lung_N (the
    same voxels under a task that is not in 3DSeg-8)."""
    root = tmp_path_factory.mktemp("msd")
    write_msd_sample(root, seed=0, tasks=["Task04_Hippocampus", "Task09_Spleen"])
    _as_task(root / "Task09_Spleen", root / "Task06_Lung", "spleen_", "lung_")
    return root


@pytest.fixture(scope="module")
def reference(msd_root, tmp_path_factory) -> str:
    """build-3dseg8's store of the two 3DSeg-8 tasks."""
    store = str(tmp_path_factory.mktemp("ref") / "store")
    found, _ = scan_msd(msd_root, ["Task04_Hippocampus", "Task09_Spleen"])
    assert build(found, store, CFG, **QUIET).ok
    return store


def test_domain_names():
    assert msd_domain_name("Task08_HepaticVessel") == "hepatic_vessel"  # the 3DSeg-8 name
    assert msd_domain_name("Task06_Lung") == "lung" and msd_domain_name("Task10_Colon") == "colon"
    assert msd_domain_name("Task500_MyOrgan") == "my_organ"


def test_build_msd_equals_build_3dseg8_and_takes_other_tasks(msd_root, reference, tmp_path):
    store = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["build-msd", str(msd_root), store, "--workers", "0", "--no-progress",
                                    "--chunks", "16"])
    assert res.exit_code == 0, res.output
    assert "Task06_Lung as lung (5 cases)" in res.output
    cat = load_catalog(store)
    assert sorted(set(cat["domain"])) == ["hippocampus", "lung", "spleen"]
    assert set(cat["status"]) == {"ok"}
    for domain in ("hippocampus", "spleen"):
        assert_same_stores(reference, domain, store, domain)
        ref = load_catalog(reference).query("domain == @domain").sort_values("case_id")
        assert list(cat.query("domain == @domain").sort_values("case_id")["scan_id"]) == list(ref["scan_id"])
    # Task06_Lung holds the spleen voxels under other case names: equal arrays and statistics.
    lung = cat.query("domain == 'lung'").sort_values("case_id")
    spleen = load_catalog(reference).query("domain == 'spleen'").sort_values("case_id")
    assert list(lung["scan_id"]) == [f"msd:Task06_Lung:{c}" for c in lung["case_id"]]
    assert list(lung["p995"]) == list(spleen["p995"]) and list(lung["shape"]) == list(spleen["shape"])
    assert list(lung["split"].isin(["test"])) == list(spleen["split"].isin(["test"]))  # imagesTs kept as test

    # Resume: a second run converts nothing.
    again = CliRunner().invoke(main, ["build-msd", str(msd_root), store, "--workers", "0", "--no-progress",
                                      "--chunks", "16"])
    assert again.exit_code == 0 and "0 converted, 17 skipped" in again.output, again.output


def test_tasks_by_folder_or_domain_name_and_missing_ones(msd_root):
    found, missing = scan_msd_tasks(msd_root, ["lung", "Task04_Hippocampus", "Task10_Colon"])
    assert [spec.name for spec, _ in found] == ["lung", "hippocampus"]
    assert missing == ["Task10_Colon"]
    (spec, cases), = scan_msd_tasks(msd_root / "Task06_Lung")[0]  # ROOT may be the task folder itself
    assert spec.name == "lung" and spec.modality == "CT" and len(cases) == 5


def test_two_folders_with_one_domain_are_refused(msd_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(msd_root / "Task09_Spleen", root / "Task09_Spleen")
    shutil.copytree(msd_root / "Task09_Spleen", root / "Task509_Spleen")
    with pytest.raises(ValueError, match="Task09_Spleen and Task509_Spleen would both become domain 'spleen'"):
        scan_msd_tasks(root)
    res = CliRunner().invoke(main, ["build-msd", str(root), str(tmp_path / "s"), "--workers", "0"])
    assert res.exit_code == 2 and "both become domain" in res.output


def test_a_domain_of_the_store_from_another_dataset_is_refused(msd_root, reference, tmp_path):
    """Task509_Spleen would become domain 'spleen', which the store already holds from Task09_Spleen."""
    root = tmp_path / "root"
    shutil.copytree(msd_root / "Task09_Spleen", root / "Task509_Spleen")
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    res = CliRunner().invoke(main, ["build-msd", str(root), str(store), "--workers", "0"])
    assert res.exit_code == 2
    assert "already holds domain 'spleen' built from Task09_Spleen" in res.output
