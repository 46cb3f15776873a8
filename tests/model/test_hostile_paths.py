"""Names that become paths, and outputs that would land on inputs (issue 23, items 1 and 2).

``evaluate`` writes into ``RUN/eval/<split>/``, the split read from the run's ``finetune.json`` (a file anyone can
hand over with a run): a crafted ``eval_split`` (``../../somewhere``, an absolute path, a name that is no split)
is refused with one line naming the file and the field, before anything is written. Every name joined into a
written path passes :func:`catalog.names.path_component`.

``predict`` never replaces an input (``--out`` the scans' own folder, where ``CASE_0000.nii.gz`` gives
``CASE.nii.gz`` and ``a.nii.gz`` gives ``a_mask.nii.gz``, both possibly scans there; a hard link), whatever
``--overwrite`` says, and replaces an existing file only with ``--overwrite``; segmentation masks and the classify
``predictions.csv`` alike. Each refusal is one line naming the paths, exit status 1, nothing written, no input
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from catalog.names import MAX_NAME_BYTES, UnsafeNameError, path_component

HIPPO = "msd/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz"
TRAIN = {"steps": 1, "batch": 1, "workers": 0, "device": "cpu", "ckpt_every": 0, "val_every": 0, "progress": False,
         "log": lambda s: None}


@pytest.fixture(scope="module")
def runs(real_dir, tmp_path_factory) -> dict:
    """The four real hippocampus cases built into a store, a one-step seg run and a one-step whole-volume classify
    run on it (a few seconds in all): what evaluate and predict load."""
    from model.api import finetune
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("hostile_paths")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    assert build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    finetune("seg", store, str(root / "seg"), patch=(16, 16, 16), decoder_widths=(8, 8, 8), **TRAIN)
    labels = root / "labels.csv"
    pd.DataFrame({"case_id": ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"],
                  "label": ["a", "b", "b", "a"]}).to_csv(labels, index=False)
    finetune("classify", store, str(root / "cls"), labels=str(labels), shape=(16, 16, 16), **TRAIN)
    return {"store": store, "seg": root / "seg", "cls": root / "cls", "scan": real_dir / HIPPO}


def _files(folder: Path) -> dict[str, str]:
    """{path below ``folder``: sha256} of every file: what a refused command must leave as it was."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _cli(*args: str):
    from model.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _refused(res, *names: object) -> str:
    """The one line of a refusal (exit status 1, nothing else printed) that names each of ``names``."""
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------- path components
@pytest.mark.parametrize("value, says", [
    ("../../somewhere", "path separator"), ("/tmp/abs", "path separator"), ("a\\b", "path separator"),
    ("..", "escape its folder"), (".", "escape its folder"), ("", "is empty"), ("   ", "is empty"),
    ("a\x00b", "control characters"), ("a\nb", "control characters"), ("x" * (MAX_NAME_BYTES + 1), "255 bytes"),
    ("é" * 128, "255 bytes"), (None, "not a string"), (["val"], "not a string"),
])
def test_path_component_refuses_what_is_not_one_plain_name(value, says):
    with pytest.raises(UnsafeNameError, match=says) as err:
        path_component(value, "eval_split", "runs/x/finetune.json")
    message = str(err.value)
    assert message.startswith(f"runs/x/finetune.json: eval_split {value!r} ") and "\n" not in message


@pytest.mark.parametrize("value", ["val", "hippocampus_001", "test-volume-3.nii", "é" * 127, "x" * MAX_NAME_BYTES,
                                   "..x", "a b"])
def test_path_component_returns_a_plain_name(value):
    assert path_component(value, "case_id", "catalog") == value


@pytest.mark.parametrize("name, says", [("a\\b.nii.gz", "path separator"), ("x\x01.nii.gz", "control characters"),
                                        ("..", "outside"), ("a/../../b.nii.gz", "outside")])
def test_inside_refuses_names_that_are_not_one_plain_file_name(tmp_path, name, says):
    from model.run_folder import inside

    with pytest.raises(ValueError, match=says) as err:
        inside(tmp_path, name, what="case_id", source="the catalog of S")
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_inside_refuses_an_existing_link_that_points_elsewhere(tmp_path):
    from model.run_folder import inside

    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "x.nii.gz").symlink_to(tmp_path / "elsewhere.nii.gz")
    with pytest.raises(ValueError, match="is a link to"):
        inside(tmp_path / "pred", "x.nii.gz")


# ----------------------------------------------------------------------------------------------- evaluate
def _crafted(runs: dict, tmp_path: Path, split: str) -> tuple[Path, str]:
    """A copy of the seg run whose finetune.json says ``eval_split: split``, and a copy of the store whose
    catalog puts its val case in that split (both files one can hand over): without the check, evaluate found
    cases there and wrote RUN/eval/<split>/ wherever that led."""
    import catalog

    run = tmp_path / "deep" / "er" / "run"
    shutil.copytree(runs["seg"], run)
    spec = json.loads((run / "finetune.json").read_text())
    spec["eval_split"] = split
    (run / "finetune.json").write_text(json.dumps(spec))
    store = tmp_path / "store"
    shutil.copytree(runs["store"], store)
    cat = catalog.load_catalog(str(store))
    cat.loc[cat["split"] == "val", "split"] = split
    catalog.save_catalog(str(store), cat)
    return run, str(store)


@pytest.mark.parametrize("kind", ["../../somewhere", "absolute", "unannotated", "val/../../x"])
def test_evaluate_refuses_a_crafted_eval_split_before_writing(runs, tmp_path, kind):
    split = str(tmp_path / "abs") if kind == "absolute" else kind
    run, store = _crafted(runs, tmp_path, split)
    before = _files(tmp_path)
    line = _refused(_cli("evaluate", run, store, "--no-progress"), run / "finetune.json", f"eval_split {split!r}")
    assert "not one of train, val, test" in line
    assert _files(tmp_path) == before and not (run / "eval").exists()
    assert not (tmp_path / "abs").exists() and not (tmp_path / "deep" / "somewhere").exists()


def test_evaluate_api_refuses_a_split_that_is_no_split(runs, tmp_path):
    from model.api import evaluate

    run = tmp_path / "run"
    shutil.copytree(runs["seg"], run)
    with pytest.raises(ValueError, match=r"^evaluate: split '\.\./x' is not one of train, val, test"):
        evaluate(run, runs["store"], split="../x", progress=False, log=lambda s: None)
    assert not (run / "eval").exists() and not (tmp_path / "x").exists()
    # a split that is one still evaluates: the refusal is about the crafted name only
    assert evaluate(run, runs["store"], split="val", progress=False, log=lambda s: None)["cases"] == 1
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["val"]


def test_a_crafted_stage_name_is_refused_naming_finetune_json(runs, tmp_path):
    from model.run_folder import stage_steps

    with pytest.raises(UnsafeNameError, match=r"finetune\.json: stages '\.\./\.\./elsewhere' contains a path"):
        stage_steps(runs["seg"], {"stages": ["../../elsewhere"]}, lambda s: None)


# ------------------------------------------------------------------------------------------------ predict
def _scan_folder(runs: dict, folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copyfile(runs["scan"], folder / name)
    return folder


@pytest.mark.parametrize("names, clash", [
    (["CASE_0000.nii.gz", "CASE.nii.gz"], "CASE.nii.gz"),  # CASE_0000's mask is CASE.nii.gz, a scan here
    (["a.nii.gz", "a_mask.nii.gz"], "a_mask.nii.gz"),  # a's mask is a_mask.nii.gz, a scan here
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_into_the_scans_folder_never_replaces_a_scan(runs, tmp_path, names, clash, overwrite):
    scans = _scan_folder(runs, tmp_path / "scans", names)
    before = _files(tmp_path)
    res = _cli("predict", runs["seg"], scans, "--out", scans, *(["--overwrite"] if overwrite else []))
    line = _refused(res, (scans / clash).resolve(), scans / clash)
    assert "is the input" in line and "another --out" in line
    assert _files(tmp_path) == before
    link = tmp_path / "link"  # the same folder under another name
    link.symlink_to(scans, target_is_directory=True)
    _refused(_cli("predict", runs["seg"], scans, "--out", link, "--overwrite"), scans / clash)
    assert _files(tmp_path) == before


def test_predict_never_replaces_an_input_through_a_hard_link(runs, tmp_path):
    scans = _scan_folder(runs, tmp_path / "scans", ["x.nii.gz"])
    out = tmp_path / "out"
    out.mkdir()
    os.link(scans / "x.nii.gz", out / "x_mask.nii.gz")
    before = _files(tmp_path)
    line = _refused(_cli("predict", runs["seg"], scans, "--out", out, "--overwrite"), out / "x_mask.nii.gz",
                    scans / "x.nii.gz")
    assert "is the input" in line and _files(tmp_path) == before


def test_predict_replaces_an_existing_file_only_with_overwrite(runs, tmp_path):
    scans = _scan_folder(runs, tmp_path / "scans", ["x.nii.gz"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_mask.nii.gz").write_bytes(b"someone else's mask")
    before = _files(tmp_path)
    line = _refused(_cli("predict", runs["seg"], scans, "--out", out), (out / "x_mask.nii.gz").resolve())
    assert "exists already" in line and "--overwrite" in line and _files(tmp_path) == before

    res = _cli("predict", runs["seg"], scans, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sitk.ReadImage(str(out / "x_mask.nii.gz")).GetSize() == sitk.ReadImage(str(runs["scan"])).GetSize()
    assert _files(scans) == {"x.nii.gz": before["scans/x.nii.gz"]}
    # the simplest honest rule: a second run into the same folder replaces nothing without --overwrite
    written = _files(out)
    _refused(_cli("predict", runs["seg"], scans, "--out", out), out / "x_mask.nii.gz", "exists already")
    assert _files(out) == written


def test_classify_predict_never_replaces_an_input_or_an_existing_table(runs, tmp_path):
    scans = _scan_folder(runs, tmp_path / "scans", ["x.nii.gz"])
    table = scans / "predictions.csv"  # given as an input, OUT its folder: the table would replace it
    table.write_text("case_id,label\n")
    before = _files(tmp_path)
    for extra in ([], ["--overwrite"]):
        line = _refused(_cli("predict", runs["cls"], scans / "x.nii.gz", table, "--out", scans, *extra),
                        table.resolve())
        assert "is the input" in line and _files(tmp_path) == before

    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("kept\n")
    line = _refused(_cli("predict", runs["cls"], scans / "x.nii.gz", "--out", out), out / "predictions.csv")
    assert "exists already" in line and (out / "predictions.csv").read_text() == "kept\n"
    res = _cli("predict", runs["cls"], scans / "x.nii.gz", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "predictions.csv")
    assert list(df["case_id"]) == ["x"] and list(df.columns[:3]) == ["case_id", "scan", "pred"]
