"""A run folder written before tasks owned their options (issue 20) still loads and evaluates the same.

``tests/data/old_run.tar.xz`` is a ``finetune seg`` run (ResNet-10, U-Net decoder, domain ``alpha`` of the tests'
tiny store) written by the release before the change, with what its ``evaluate`` measured on the val split
(``expected_summary.json``); how it was made: ``tests/data/make_old_run.py``. Its checkpoint has a flat config
holding every task's fields and no network record: the network is rebuilt from what it does hold.
"""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

from click.testing import CliRunner

from model.cli import main

ARCHIVE = Path(__file__).resolve().parents[1] / "data" / "old_run.tar.xz"


def _unpack(tmp_path: Path) -> Path:
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "old_run"


def test_a_run_folder_of_the_earlier_release_evaluates_the_same(tiny_store, tmp_path):
    run = _unpack(tmp_path)
    expected = json.loads((run / "expected_summary.json").read_text())
    res = CliRunner().invoke(main, ["evaluate", str(run), tiny_store, "--no-progress"])
    assert res.exit_code == 0, res.output
    got = json.loads((run / "eval" / "val" / "summary.json").read_text())
    assert got["split"] == "val" and got["cases"] == expected["cases"] == 2 and got["classes"] == ["blob"]
    for key in ("metric", "dice_blob_mean", "hd95_mm_blob_mean", "assd_mm_blob_mean"):
        assert math.isclose(got[key], expected[key], rel_tol=1e-6, abs_tol=1e-9), key
    assert got["checkpoint_steps"] == {"main": [2, 2]}
