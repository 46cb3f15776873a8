"""Train on train, choose on val, report on test: a run measured on ``test`` validates on ``val`` while training
(classify with a table holding all three splits; seg with a ``--splits`` table), and ``evaluate`` alone reads the
test cases. The seg split table replaces the catalog's splits and is refused when it names unknown cases."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from model.evaluation.metrics import read_metrics
from model.task_api import FinetuneError
from model.api import finetune

TINY = {"steps": 2, "batch": 2, "workers": 0, "device": "cpu", "ckpt_every": 0, "val_every": 1, "log_every": 1}


def _alpha(store: str) -> list[str]:
    from catalog import load_catalog, select

    return sorted(select(load_catalog(store), domain="alpha", labelled=True)["case_id"])


def test_classify_validates_on_val_not_on_test(tiny_store, tmp_path):
    from catalog import load_catalog, select

    cases = sorted(select(load_catalog(tiny_store), labelled=True)["case_id"])
    splits = ["test", "val"] + ["train"] * 4
    rows = [{"case_id": c, "label": c.split("_")[0], "split": splits[i % 6]} for i, c in enumerate(cases)]
    table = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    run = tmp_path / "run"
    finetune("classify", tiny_store, str(run), labels=str(table), shape=(16, 16, 16), progress=False,
             log=lambda s: None, **TINY)
    assert json.loads((run / "finetune.json").read_text())["eval_split"] == "test"
    val = read_metrics(run, "val")
    assert [r["split"] for r in val] == ["val", "val"] and {r["cases"] for r in val} == {2}
    assert not (run / "cache" / "test").exists()  # no test input was even prepared while training


def test_seg_split_table_replaces_the_catalog_splits(tiny_store, tmp_path):
    from model.api import evaluate

    ids = _alpha(tiny_store)
    table = tmp_path / "splits.csv"
    pd.DataFrame({"case_id": ids[:4], "split": ["train", "train", "val", "test"]}).to_csv(table, index=False)
    run = tmp_path / "seg"
    finetune("seg", tiny_store, str(run), domain="alpha", splits=str(table), patch=(16, 16, 16), decoder="unet",
             progress=False, log=lambda s: None, **TINY)
    spec = json.loads((run / "finetune.json").read_text())
    assert spec["eval_split"] == "test" and spec["splits"] == "splits.csv" and (run / "splits.csv").is_file()
    assert [r["split"] for r in read_metrics(run, "val")] == ["val", "val"]
    summary = evaluate(run, tiny_store, progress=False, log=lambda s: None)
    cases = pd.read_csv(run / "eval" / "test" / "cases.csv")
    assert summary["split"] == "test" and list(cases["case_id"]) == [ids[3]]
    ckpt_ids = __import__("torch").load(run / "checkpoint.pt", weights_only=True)["scan_ids"]
    assert len(ckpt_ids) == 2  # trained on the table's two train cases only, whatever the catalog says


@pytest.mark.parametrize("rows, words", [
    ([("alpha_99", "train")], "not an ok, labelled case"),
    ([("alpha_00", "train"), ("alpha/alpha_00", "val")], "listed twice"),
    ([("alpha_00", "holdout")], "not one of train, val, test"),
    ([("alpha_00", "val")], "no train case"),
])
def test_bad_split_tables_are_refused_before_anything_is_written(tiny_store, tmp_path, rows, words):
    table = tmp_path / "splits.csv"
    pd.DataFrame(rows, columns=["case_id", "split"]).to_csv(table, index=False)
    with pytest.raises(FinetuneError, match=words):
        finetune("seg", tiny_store, str(tmp_path / "run"), domain="alpha", splits=str(table), patch=(16, 16, 16),
                 progress=False, log=lambda s: None, **TINY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["splits", "labels"])
def test_an_unparsable_table_is_one_line_naming_it(tiny_store, tmp_path, option):
    table = tmp_path / "t.csv"
    table.write_text("case_id\nalpha_00\nalpha_01,train,extra,fields\n")  # a ragged row: pandas' message has a newline
    with pytest.raises(FinetuneError) as err:
        finetune("seg" if option == "splits" else "classify", tiny_store, str(tmp_path / "run"), domain="alpha",
                 progress=False, log=lambda s: None, **{option: str(table)}, **TINY)
    assert str(table) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
