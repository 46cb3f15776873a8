"""No CSV cell a spreadsheet would run (issue 23, item 4): class names, case ids and scan file names that begin with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return are written with a ``'`` in front in ``cases.csv`` and
``predictions.csv`` (evaluate and predict), and in every other table written for people; numbers stay numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from runlog.tables import spreadsheet_safe, spreadsheet_text

LINK = '=HYPERLINK("x","y")'
IDS = [LINK, "+cmd", "-2+3", "@SUM(1)", "plain_4", "plain_5"]
CLASSES = [LINK, "@SUM(1)"]
TRAIN = {"steps": 1, "batch": 1, "workers": 0, "device": "cpu", "ckpt_every": 0, "val_every": 0, "progress": False,
         "log": lambda s: None}


# ------------------------------------------------------------------------------------------- the function
@pytest.mark.parametrize("cell, written", [
    ("=1+1", "'=1+1"), ("+cmd", "'+cmd"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("-1", "-1"), ("+2.5e-3", "+2.5e-3"), ("-.5", "-.5"), ("a=b", "a=b"), ("", ""), ("'=x", "'=x"), (" =x", " =x"),
    (-3, -3), (None, None),
])
def test_a_formula_leading_text_cell_gets_a_quote(cell, written):
    assert spreadsheet_text(cell) == written


def test_numbers_stay_numbers_and_the_frame_is_not_changed():
    df = pd.DataFrame({"case_id": ["=x", "-1", None], "score": [-0.5, 1.0, np.nan], "n": [-1, 2, 3],
                       "=col": ["@a", "b", "c"]})
    safe = spreadsheet_safe(df)
    assert safe["case_id"].tolist()[:2] == ["'=x", "-1"] and pd.isna(safe["case_id"].iloc[2])
    assert list(safe.columns) == ["case_id", "score", "n", "'=col"] and safe["'=col"].tolist() == ["'@a", "b", "c"]
    assert safe["score"].dtype == df["score"].dtype and safe["n"].tolist() == [-1, 2, 3]
    assert df["case_id"].iloc[0] == "=x" and list(df.columns)[-1] == "=col"  # a copy
    text = safe.to_csv(index=False)
    assert ",-0.5,-1," in text and "\n'=x," in text


# ------------------------------------------------------------------------------- evaluate and predict
@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict:
    """A store whose case ids begin with formula characters, a one-step seg run and a one-step classify run whose
    classes are formulas, on it."""
    from model.api import finetune
    from pipeline.config import Case, DomainSpec, PrepConfig
    from pipeline.job import build
    from tests_model_helpers import DOMAINS, _write_case

    root = tmp_path_factory.mktemp("spreadsheet")
    (root / "raw").mkdir()
    spec = DomainSpec(name="alpha", source_dataset="synthetic_alpha", modality="MR", channel_names=("MR",),
                      labels=DOMAINS["alpha"])
    cases = []
    for i, case_id in enumerate(IDS):
        img, seg = _write_case(root / "raw", f"c{i}", "alpha", np.random.default_rng([3, i]))
        cases.append(Case(domain="alpha", case_id=case_id, scan_id=f"alpha:{i}", patient_id=f"p{i}", images=(img,),
                          label=seg))
    store = str(root / "store")
    assert build([(spec, cases)], store, PrepConfig(chunks=(16, 16, 16), val_fraction=0.3), workers=0,
                 progress=False, log=lambda s: None).ok
    finetune("seg", store, str(root / "seg"), domain="alpha", patch=(16, 16, 16), decoder_widths=(8, 8, 8), **TRAIN)
    labels = root / "labels.csv"
    pd.DataFrame({"case_id": IDS, "label": [CLASSES[i % 2] for i in range(len(IDS))]}).to_csv(labels, index=False)
    finetune("classify", store, str(root / "cls"), labels=str(labels), shape=(16, 16, 16), **TRAIN)
    return {"store": store, "root": root, "scan": root / "raw" / "c0_img.nii.gz"}


def _evaluate(run: Path, store: str, split: str) -> Path:
    from model.cli import main

    res = CliRunner().invoke(main, ["evaluate", str(run), store, "--split", split])
    assert res.exit_code == 0, res.output
    return run / "eval" / split


def test_case_ids_in_cases_csv_are_not_formulas(crafted):
    out = _evaluate(crafted["root"] / "seg", crafted["store"], "train")
    cases = pd.read_csv(out / "cases.csv", dtype={"case_id": str})
    formula = [c for c in IDS if c[0] in "=+-@"]
    written = set(cases["case_id"])
    assert written & {f"'{c}" for c in formula} and not written & set(formula), written
    dice = [c for c in cases.columns if c.startswith("dice_")]
    assert dice and all(pd.api.types.is_float_dtype(cases[c]) for c in dice)  # numbers stay numbers


def test_class_names_and_case_ids_in_predictions_csv_are_not_formulas(crafted):
    out = _evaluate(crafted["root"] / "cls", crafted["store"], "train")
    pred = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(pred["label"]) <= {f"'{c}" for c in CLASSES} and set(pred["pred"]) <= {f"'{c}" for c in CLASSES}
    assert not set(pred["case_id"]) & set(IDS[:4]) and set(pred["case_id"]) & {f"'{c}" for c in IDS[:4]}
    assert f"prob_{LINK}" in pred.columns  # a header beginning with prob_ is no formula
    assert "'=HYPERLINK(\"\"x\"\",\"\"y\"\")" in (out / "predictions.csv").read_text()


def test_scan_names_in_predict_csv_are_not_formulas(crafted, tmp_path, monkeypatch):
    from model.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(crafted["scan"], tmp_path / "=cmd.nii.gz")
    res = CliRunner().invoke(main, ["predict", str(crafted["root"] / "cls"), "=cmd.nii.gz", "--out", "out"])
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str, keep_default_na=False)
    assert pred["case_id"].tolist() == ["'=cmd"] and pred["scan"].tolist() == ["'=cmd.nii.gz"]
    assert pred["pred"].iloc[0] in {f"'{c}" for c in CLASSES}
    assert float(pred[f"prob_{LINK}"].iloc[0]) + float(pred["prob_@SUM(1)"].iloc[0]) == pytest.approx(1.0)
