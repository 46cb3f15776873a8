"""Values that used to pass unchecked (issue 23, items 9-11), each refused with one line naming the file or option
and the field, before anything is written:

- a label table naming one case twice through an alias (``hippocampus_001`` and ``hippocampus/hippocampus_001``),
  two class columns differing only in case, class names with control characters; Unicode variants of one class
  name are one class (NFC);
- ``predict`` of a ``--channels all`` run fed a case with a gap in its channel files (``_0000, _0001, _0002,
  _0004``), or with more or fewer channels than the network reads;
- ``finetune`` sizes beyond the data or the machine: ``--shape 600,600,600`` on volumes of ~40 voxels, ``--lr inf``,
  an input cache larger than the free disk space, a batch of inputs beyond half the memory.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from model.data.classify_table import LabelTableError, match_table, read_table

IDS = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]  # 004: the catalog's val case
TINY = {"steps": 2, "batch": 2, "shape": (16, 16, 16), "workers": 0, "device": "cpu", "ckpt_every": 0,
        "val_every": 0, "log_every": 1, "lr": 1e-4}


@pytest.fixture(scope="module")
def hippo(real_dir, tmp_path_factory) -> dict:
    """The four real hippocampus cases (about 36 × 50 × 35 voxels) built once, and a good label table."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("unchecked")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    assert build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    table = root / "labels.csv"
    table.write_text("case_id,label\n" + "".join(f"{c},{'AD' if i % 2 else 'CN'}\n" for i, c in enumerate(IDS)))
    return {"store": store, "root": root, "table": table}


# ------------------------------------------------------------------------------------------ 9. label tables
def test_one_case_named_twice_through_its_store_path_is_refused(hippo, tmp_path):
    """``hippocampus_003`` and ``hippocampus/hippocampus_003`` are one catalog row: it was trained twice and the
    last label won."""
    path = tmp_path / "labels.csv"
    path.write_text("case_id,label\nhippocampus_001,CN\nhippocampus_003,AD\nhippocampus/hippocampus_003,CN\n"
                    "hippocampus_006,AD\n")
    with pytest.raises(LabelTableError, match=r"line\(s\) 3, 4 name the same case hippocampus/hippocampus_003 "
                                              r"\(as 'hippocampus_003', 'hippocampus/hippocampus_003'\)") as err:
        match_table(path, hippo["store"])
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("header, names", [
    ("case_id,label,Label", "'label' and 'Label'"),
    ("case_id,label,label", "'label' and 'label'"),
    ("case_id,label,LABEL ", "'label' and 'LABEL '"),
    ("case_id,Case_ID,label", "'case_id' and 'Case_ID'"),
])
def test_two_columns_whose_names_differ_only_in_case_or_spaces_are_refused(tmp_path, header, names):
    """A second, case-variant ``Label`` column silently replaced ``label``."""
    path = tmp_path / "labels.csv"
    path.write_text(f"{header}\nhippocampus_001,CN,AD\nhippocampus_003,AD,CN\n")
    with pytest.raises(LabelTableError, match=f"columns {names} differ only in letter case or spaces") as err:
        read_table(path)
    assert str(err.value).startswith(f"{path}: ")


def test_unicode_variants_of_one_class_name_are_one_class(tmp_path):
    nfc, nfd = "Alzheimer-Demenz (fr\u00fch)", "Alzheimer-Demenz (fru\u0308h)"
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    path = tmp_path / "labels.csv"
    path.write_text(f"case_id,label\nhippocampus_001,{nfc}\nhippocampus_003,{nfd}\nhippocampus_006,CN\n",
                    encoding="utf-8")
    table, _ = read_table(path)
    assert list(table["value"]) == [nfc, nfc, "CN"]


@pytest.mark.parametrize("cell, shown", [
    ('"A\nD"', r"'A\\nD'"),
    ("AD\u202e", r"'AD\\u202e'"),
    ("\u2066AD", r"'\\u2066AD'"),
    ("A\x00D", r"'A\\x00D'"),
    ("A\tD", r"'A\\tD'"),
])
def test_class_names_with_control_characters_are_refused_naming_the_line(tmp_path, cell, shown):
    path = tmp_path / "labels.csv"
    path.write_bytes(f"case_id,label\nhippocampus_001,CN\nhippocampus_003,{cell}\n".encode())
    with pytest.raises(LabelTableError, match=f"line 3: the class {shown} holds a control character") as err:
        read_table(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ 10. predict's channels
RECIPE = {"domain": "d", "target_spacing": [1.0, 1.0, 1.0], "modality": "MR", "percentiles": [0.5, 99.5],
          "ct_window": None, "air_hu": -1024.0, "dtype": "float32", "image_interpolation": "linear"}


class Oracle:
    """A segmenter reading ``in_chans`` channels; it records the images it was given."""

    def __init__(self, in_chans: int) -> None:
        self.in_chans, self.seen = in_chans, []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.seen.append(image)
        return np.zeros(image.shape[-3:], np.uint8)


def _voxels(channel: int) -> np.ndarray:
    """The voxels of channel file ``_NNNN``: a random field of its own (seeded by the channel number)."""
    return np.random.default_rng(channel).normal(size=(12, 12, 12)).astype(np.float32)


def _case(folder: Path, channels: list[int], name: str = "case") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for c in channels:
        sitk.WriteImage(sitk.GetImageFromArray(_voxels(c)), str(folder / f"{name}_{c:04d}.nii.gz"))
    return folder


@pytest.fixture
def seg_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "finetune.json").write_text(json.dumps({"task": "seg", "stages": ["main"], "preprocessing": RECIPE,
                                                   "classes": ["background", "x"]}))
    return run


def test_a_gap_in_the_channel_files_is_refused_naming_the_missing_file(seg_run, tmp_path):
    """``_0000, _0001, _0002, _0004``: ``_0004`` was fed as channel 3."""
    from model.api import predict
    from model.evaluation.predict import ScansSkippedError

    scans = _case(tmp_path / "scans", [0, 1, 2, 4])
    oracle, lines = Oracle(4), []
    with pytest.raises(ScansSkippedError) as err:
        predict(seg_run, [scans], tmp_path / "out", segmenter=oracle, log=lines.append)
    assert oracle.seen == [] and not (tmp_path / "out" / "case.nii.gz").exists()
    [line] = [s for s in lines if s.startswith("skipped:")]
    assert f"{scans / 'case'}: channel file {scans / 'case_0003.nii.gz'} is missing" in line
    assert "_0000, _0001, _0002, _0004" in line and "\n" not in line
    assert "case_0003.nii.gz is missing" in str(err.value)


@pytest.mark.parametrize("files, in_chans, why", [
    ([0, 1, 2, 3], 3, r"4 channel\(s\); the network takes 3"),
    ([0, 1], 3, r"2 channel\(s\); the network takes 3"),
])
def test_more_or_fewer_channel_files_than_the_network_reads_are_refused(seg_run, tmp_path, files, in_chans, why):
    from model.api import predict
    from model.evaluation.predict import ScansSkippedError

    scans = _case(tmp_path / "scans", files)
    oracle = Oracle(in_chans)
    with pytest.raises(ScansSkippedError, match=why):
        predict(seg_run, [scans], tmp_path / "out", segmenter=oracle, log=lambda s: None)
    assert oracle.seen == []


def test_contiguous_channel_files_are_fed_in_order(seg_run, tmp_path):
    from model.api import predict

    scans = _case(tmp_path / "scans", [0, 1, 2])
    oracle = Oracle(3)
    [mask] = predict(seg_run, [scans], tmp_path / "out", segmenter=oracle, log=lambda s: None)
    assert mask.is_file() and oracle.seen[0].shape == (3, 12, 12, 12)
    for c, image in enumerate(oracle.seen[0]):  # z-scored and clipped, channel c is still file _000c's field
        assert np.corrcoef(image.ravel(), _voxels(c).ravel())[0, 1] > 0.95
    one = Oracle(1)  # a first-channel run reads _0000 alone, whatever else the case holds
    predict(seg_run, [_case(tmp_path / "gap", [0, 2])], tmp_path / "out1", segmenter=one, log=lambda s: None)
    assert one.seen[0].shape == (12, 12, 12)


# ------------------------------------------------------------------------------------------- 11. sizes
def _finetune(hippo, out: Path, *args: str):
    from model.cli import main

    return CliRunner().invoke(main, ["finetune", "classify", hippo["store"], "--labels", str(hippo["table"]),
                                     "--out", str(out), "--steps", "2", "--workers", "0", "--device", "cpu",
                                     "--val-every", "0", "--ckpt-every", "0", "--no-progress", *args])


def test_a_shape_far_beyond_the_train_volumes_is_refused_before_any_work(hippo, tmp_path):
    """600³ inputs from ~40-voxel volumes wrote 3 GB of cache and then failed."""
    out = tmp_path / "run"
    res = _finetune(hippo, out, "--shape", "600,600,600")
    assert res.exit_code != 0
    assert "--shape 600,600,600 is more than 4× the largest train volume" in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("lr, why", [("inf", "lr must be a finite number or null, got inf"),
                                     ("nan", "lr must be a finite number or null, got nan"),
                                     ("100", "lr must be > 0 and <= 10, got 100"),
                                     ("-1", "lr must be > 0 and <= 10, got -1")])
def test_a_learning_rate_that_is_not_a_rate_is_refused(hippo, tmp_path, lr, why):
    out = tmp_path / "run"
    res = _finetune(hippo, out, "--shape", "16,16,16", "--lr", lr)
    assert res.exit_code == 2 and why in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_a_patch_beyond_the_train_volumes_is_refused_for_seg(hippo, tmp_path):
    from model.task_api import FinetuneError
    from model.api import finetune

    with pytest.raises(FinetuneError, match=r"--patch 16,16,400 is more than 4× the largest train volume .* along "
                                            r"x \(\d+ voxels\)"):
        finetune("seg", hippo["store"], str(tmp_path / "seg"), patch=(16, 16, 400), progress=False,
                 log=lambda s: None, **{k: v for k, v in TINY.items() if k != "shape"})
    assert not (tmp_path / "seg").exists()


def test_an_input_cache_larger_than_the_free_disk_is_refused_before_it_is_written(hippo, tmp_path, monkeypatch):
    from model.data import case_cache
    from model.task_api import FinetuneError
    from model.api import finetune

    monkeypatch.setattr(case_cache, "free_disk_bytes", lambda folder: 10_000)
    out = tmp_path / "run"
    # 3 train cases × (16³ float32 + the .npy header)
    with pytest.raises(FinetuneError, match=r"--shape 16,16,16: the input cache .*cache/train would need 48\.4 KiB "
                                            r"for 3 cases, more than the 9\.8 KiB free on its disk") as err:
        finetune("classify", hippo["store"], str(out), labels=str(hippo["table"]), progress=False,
                 log=lambda s: None, **TINY)
    assert "\n" not in str(err.value) and not out.exists()


def test_a_batch_of_inputs_beyond_half_the_memory_is_refused(hippo, tmp_path, monkeypatch):
    from model.task_api import FinetuneError
    from model.training import finetune_bounds
    from model.api import finetune

    monkeypatch.setattr(finetune_bounds, "memory_bytes", lambda: 48 * 1024)
    with pytest.raises(FinetuneError, match=r"--batch 2 × --shape 16,16,16: one batch of float32 inputs is 32\.0 "
                                            r"KiB, more than 50% of this machine's 48\.0 KiB of memory"):
        finetune("classify", hippo["store"], str(tmp_path / "run"), labels=str(hippo["table"]), progress=False,
                 log=lambda s: None, **TINY)
    assert not (tmp_path / "run").exists()
