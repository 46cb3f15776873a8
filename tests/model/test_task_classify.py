"""``finetune classify`` from a label table over the real MSD hippocampus scans (tests/data/real: 4 MR cases with
masks; catalog splits train 3, val 1): the whole volume resized (through the CLI) and the mask crop (API),
evaluate's metrics equal scikit-learn's recomputed from the written predictions.csv, predict's probabilities of
the raw scans, every bad table refused before anything is written, and exact resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from model.evaluation.metrics import read_metrics
from model.task_api import FinetuneError, TaskStoreError
from model.training.checkpoint import load_checkpoint
from model.api import finetune

TINY = {"steps": 3, "batch": 2, "shape": (16, 16, 16), "workers": 0, "device": "cpu", "ckpt_every": 0,
        "val_every": 0, "log_every": 1, "lr": 1e-4}
IDS = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]  # 004 is the catalog's val


def write_table(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def hippo(real_dir, tmp_path_factory) -> dict:
    """The four real cases built once with the pipeline's build API."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("classify")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    result = build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False, log=lambda s: None)
    assert result.failed == []
    return {"store": store, "root": root, "images": real_dir / "msd" / "Task04_Hippocampus" / "imagesTr"}


@pytest.fixture(scope="module")
def shape_run(hippo) -> Path:
    """Three string classes, catalog splits (one class per train case), trained through the CLI."""
    from model.cli import main

    table = write_table(hippo["root"] / "three.csv", [{"case": i, "class": c} for i, c in
                                                      zip(IDS, ["gamma", "beta", "alpha", "alpha"])])
    run = hippo["root"] / "shape_run"
    res = CliRunner().invoke(main, ["finetune", "classify", hippo["store"], "--labels", str(table), "--out", str(run),
                                    "--shape", "16,16,16", "--steps", "3", "--lr", "1e-4", "--workers", "0",
                                    "--device", "cpu", "--val-every", "0", "--ckpt-every", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    return run


def sklearn_metrics(csv: Path) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

    df = pd.read_csv(csv)
    probs = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy()
    classes = [c[len("prob_"):] for c in df.columns if c.startswith("prob_")]
    truth, pred = df["label"].astype(str), df["pred"].astype(str)
    auc = (roc_auc_score(truth == classes[1], probs[:, 1]) if len(classes) == 2 else
           roc_auc_score(truth, probs, multi_class="ovr", average="macro", labels=classes))
    return {"accuracy": accuracy_score(truth, pred), "balanced_accuracy": balanced_accuracy_score(truth, pred),
            "auc_macro": auc, "confusion": confusion_matrix(truth, pred, labels=classes).tolist(), "probs": probs}


@pytest.mark.slow
def test_whole_volume_run_evaluates_as_sklearn_on_its_predictions(hippo, shape_run):
    from model.cli import main

    spec = json.loads((shape_run / "finetune.json").read_text())
    assert spec["classes"] == ["alpha", "beta", "gamma"] and spec["crop"] == "none" and spec["shape"] == [16] * 3
    assert spec["eval_split"] == "val"  # no test case in the table: the catalog's val
    assert (shape_run / "labels.csv").read_bytes() == (hippo["root"] / "three.csv").read_bytes()
    ckpt = load_checkpoint(shape_run / "checkpoint.pt")
    assert ckpt["num_classes"] == 3 and ckpt["kind"] == "nodule" and ckpt["config"]["loss"] == "ce"
    assert len(read_metrics(shape_run, "train")) == 3
    res = CliRunner().invoke(main, ["evaluate", str(shape_run), hippo["store"], "--split", "train", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "confusion (rows truth, columns predicted; alpha/beta/gamma)" in res.output
    folder = shape_run / "eval" / "train"
    df = pd.read_csv(folder / "predictions.csv")
    assert list(df.columns) == ["case_id", "label", "pred", "prob_alpha", "prob_beta", "prob_gamma"]
    assert sorted(df["case_id"]) == ["hippocampus_001", "hippocampus_003", "hippocampus_006"]
    assert dict(zip(df["case_id"], df["label"])) == {"hippocampus_001": "gamma", "hippocampus_003": "beta",
                                                     "hippocampus_006": "alpha"}
    summary = json.loads((folder / "summary.json").read_text())
    ref = sklearn_metrics(folder / "predictions.csv")
    np.testing.assert_allclose(ref["probs"].sum(axis=1), 1.0, atol=1e-6)
    for key in ("accuracy", "balanced_accuracy", "auc_macro"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-12), key
    assert summary["confusion"] == ref["confusion"] and summary["metric"] == summary["accuracy"]
    assert summary["split"] == "train" and summary["classes"] == ["alpha", "beta", "gamma"]


@pytest.mark.slow
def test_predict_gives_one_row_per_raw_scan_as_evaluate_saw_the_store(hippo, shape_run, tmp_path):
    from model.cli import main
    from model.api import evaluate

    evaluate(shape_run, hippo["store"], split="train", progress=False, log=lambda s: None)
    stored = pd.read_csv(shape_run / "eval" / "train" / "predictions.csv").set_index("case_id")
    res = CliRunner().invoke(main, ["predict", str(shape_run), str(hippo["images"]), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert list(df["case_id"]) == IDS and list(df.columns[:3]) == ["case_id", "scan", "pred"]
    probs = df[["prob_alpha", "prob_beta", "prob_gamma"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert list(df["pred"]) == [["alpha", "beta", "gamma"][i] for i in probs.argmax(axis=1)]
    # the raw scan goes through the build's preprocessing: the same input, the same probabilities
    for case_id in stored.index:
        row = df[df["case_id"] == case_id].iloc[0]
        np.testing.assert_allclose(row[["prob_alpha", "prob_beta", "prob_gamma"]].to_numpy(float),
                                   stored.loc[case_id, ["prob_alpha", "prob_beta", "prob_gamma"]].to_numpy(float),
                                   atol=1e-5)
    # a damaged file among good ones: skipped with a line naming it, the others written, exit status 1
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.nii.gz").write_bytes((hippo["images"] / "hippocampus_003.nii.gz").read_bytes())
    (folder / "broken.nii.gz").write_bytes((hippo["images"] / "hippocampus_003.nii.gz").read_bytes()[:200])
    res = CliRunner().invoke(main, ["predict", str(shape_run), str(folder), "--out", str(tmp_path / "q")])
    assert res.exit_code == 1 and "skipped:" in res.output and "broken.nii.gz" in res.output
    df = pd.read_csv(tmp_path / "q" / "predictions.csv")
    assert list(df["case_id"]) == ["good"]
    np.testing.assert_allclose(df[["prob_alpha", "prob_beta", "prob_gamma"]].to_numpy(float)[0],
                               probs[1], atol=1e-6)


@pytest.mark.slow
def test_mask_crop_run_with_int_classes_split_column_and_scan_ids(hippo, tmp_path):
    from catalog import load_catalog
    from model.data.classify_stream import crop_box
    from model.data.patches import read_volume
    from model.api import evaluate
    from model.tasks.base import get_task

    scan = dict(zip(load_catalog(hippo["store"])["case_id"], load_catalog(hippo["store"])["scan_id"]))
    table = write_table(tmp_path / "two.csv", [{"scan": scan[i], "label": c, "split": s} for i, c, s in
                                               zip(IDS, [10, 2, 10, 2], ["train", "train", "train", "test"])])
    run = tmp_path / "run"
    [result] = finetune("classify", hippo["store"], str(run), labels=str(table), crop="mask", crop_margin_mm=2.0,
                        progress=False, log=lambda s: None, **TINY)
    spec = json.loads((run / "finetune.json").read_text())
    assert spec["classes"] == [2, 10] and spec["eval_split"] == "test" and spec["crop"] == "mask"
    # the input is the mask's box grown by 2 voxels (1 mm spacing), resized: check one cached case by hand
    image, label = read_volume(hippo["store"], "hippocampus/hippocampus_001")
    lo, hi = crop_box(label, 2.0, (1.0, 1.0, 1.0))
    nz = np.nonzero(label > 0)
    assert lo == tuple(max(0, int(v.min()) - 2) for v in nz)
    assert hi == tuple(min(n, int(v.max()) + 3) for v, n in zip(nz, label.shape))
    from model.data.task_streams import resize_image
    want = resize_image(torch.from_numpy(image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()), (16, 16, 16))
    got = np.load(run / "cache" / "train" / "hippocampus__hippocampus_001.npy")
    np.testing.assert_array_equal(got[0], want.numpy())
    summary = evaluate(run, hippo["store"], progress=False, log=lambda s: None)
    assert summary["split"] == "test" and summary["n"] == 1  # 006, the table's test case (catalog: train)
    evaluate(run, hippo["store"], split="train", progress=False, log=lambda s: None)
    folder = run / "eval" / "train"
    df = pd.read_csv(folder / "predictions.csv")
    assert list(df.columns) == ["case_id", "label", "pred", "prob_2", "prob_10"] and len(df) == 3
    ref = sklearn_metrics(folder / "predictions.csv")
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "auc_macro"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-12), key
    assert summary["confusion"] == ref["confusion"]
    with pytest.raises(FinetuneError, match="no mask"):  # a raw scan has no mask to crop around
        get_task("classify").predict_scans(run, spec, [hippo["images"]], tmp_path / "p", modality=None,
                                           spacing_xyz=None, device="cpu", amp=False, log=lambda s: None)
    assert not (tmp_path / "p").exists()
    assert result.step == 3


BAD = {  # what is wrong: (rows of the table, what the message says)
    "unknown case": ([{"case_id": "hippocampus_001", "label": "a"}, {"case_id": "hippocampus_999", "label": "b"},
                      {"case_id": "hippocampus_003", "label": "b"}], r"line\(s\) 3 name cases that .* does not hold"),
    "one class": ([{"case_id": i, "label": "same"} for i in IDS], "every row has the class 'same'"),
    "class absent from train": ([{"case_id": i, "label": c} for i, c in zip(IDS, "abca")],
                                r"class\(es\) 'c' have no train case \(line\(s\) 4"),
    "no class column": ([{"case_id": i, "diagnosis": c} for i, c in zip(IDS, "abab")], "no class column"),
    "no id column": ([{"patient": i, "label": c} for i, c in zip(IDS, "abab")], "no case id column"),
    "unknown split": ([{"case_id": i, "label": c, "split": s} for i, c, s in zip(IDS, "abab", ["train"] * 3 + ["x"])],
                      r"line\(s\) 5 have split \['x'\]"),
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_label_table_is_a_clear_error_before_anything_is_written(what, hippo, tmp_path):
    rows, pattern = BAD[what]
    table = write_table(tmp_path / "labels.csv", rows)
    out = tmp_path / "run"
    with pytest.raises(FinetuneError, match=pattern) as info:
        finetune("classify", hippo["store"], str(out), labels=str(table), progress=False, log=lambda s: None, **TINY)
    assert str(table) in str(info.value)
    assert not out.exists()


def test_one_patients_cases_in_two_splits_are_refused(hippo, tmp_path, monkeypatch):
    import model.data.classify_table as ct
    from catalog import load_catalog

    cat = load_catalog(hippo["store"])
    cat.loc[cat["case_id"] == "hippocampus_003", "patient_id"] = "hippocampus_001"  # two scans of one patient
    monkeypatch.setattr(ct, "load_catalog", lambda store: cat)
    rows = [{"case_id": i, "label": c, "split": s} for i, c, s in zip(IDS, "abab", ["train", "", "", ""])]
    assert ct.match_table(write_table(tmp_path / "ok.csv", rows), hippo["store"]).classes == ("a", "b")
    rows[1]["split"] = "test"
    with pytest.raises(ct.LabelTableError, match=r"line\(s\) 2, 3 put one patient's cases in different splits "
                                                 r"\(patient\(s\) hippocampus_001\)"):
        ct.match_table(write_table(tmp_path / "bad.csv", rows), hippo["store"])


def test_mask_crop_refuses_a_case_without_a_labelled_region(hippo, tmp_path, monkeypatch):
    import model.data.classify_table as ct
    from catalog import load_catalog

    cat = load_catalog(hippo["store"])
    cat.loc[cat["case_id"] == "hippocampus_003", "foreground_voxels"] = 0  # as a case with an empty mask
    monkeypatch.setattr(ct, "load_catalog", lambda store: cat)
    table = write_table(tmp_path / "labels.csv", [{"case_id": i, "label": c} for i, c in zip(IDS, "abab")])
    assert ct.match_table(table, hippo["store"]).classes == ("a", "b")  # the whole volume needs no mask
    with pytest.raises(ct.LabelTableError, match=r"line\(s\) 3 name cases without a labelled region .* --crop none"):
        ct.match_table(table, hippo["store"], crop="mask")


def test_cli_without_labels_and_with_a_bad_table_exits_with_the_message(hippo, tmp_path):
    from model.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["finetune", "classify", hippo["store"], "--out", str(out)])
    assert res.exit_code != 0 and "needs --labels" in res.output and not out.exists()
    table = write_table(tmp_path / "t.csv", [{"case_id": i, "label": 1} for i in IDS])
    res = CliRunner().invoke(main, ["finetune", "classify", hippo["store"], "--labels", str(table), "--out", str(out)])
    assert res.exit_code == 1 and f"{table}: every row has the class 1" in res.output and not out.exists()


def test_evaluate_on_a_store_without_the_runs_cases_is_refused(hippo, tmp_path):
    from model.tasks.classify import run_table

    run = tmp_path / "run"
    run.mkdir()
    write_table(run / "labels.csv", [{"case_id": "other_001", "label": "a"}, {"case_id": "other_002", "label": "b"}])
    with pytest.raises(TaskStoreError, match="cannot measure .* does not hold"):
        run_table(run, {"labels": "labels.csv", "crop": "none", "store": "elsewhere"}, hippo["store"])


@pytest.mark.slow
def test_classify_resumes_exactly(hippo, tmp_path):
    table = write_table(tmp_path / "t.csv", [{"case_id": i, "label": c} for i, c in zip(IDS, "abba")])
    kw = {**TINY, "steps": 4, "ckpt_every": 2, "labels": str(table)}
    whole = finetune("classify", hippo["store"], str(tmp_path / "whole"), progress=False, log=lambda s: None, **kw)[0]
    first = finetune("classify", hippo["store"], str(tmp_path / "split"), stop_after=2, progress=False,
                     log=lambda s: None, **kw)[0]
    assert first.step == 2
    other = write_table(tmp_path / "other.csv", [{"case_id": i, "label": c} for i, c in zip(IDS, "baab")])
    with pytest.raises(FinetuneError, match="another label table"):
        finetune("classify", hippo["store"], str(tmp_path / "split"), resume=True, progress=False,
                 log=lambda s: None, **{**kw, "labels": str(other)})
    resumed = finetune("classify", hippo["store"], str(tmp_path / "split"), resume=True, progress=False,
                       log=lambda s: None, **kw)[0]
    assert resumed.step == 4
    a = [r["loss"] for r in read_metrics(whole.run_dir, "train")]
    b = [r["loss"] for r in read_metrics(resumed.run_dir, "train")]
    assert [r["step"] for r in read_metrics(resumed.run_dir, "train")] == [1, 2, 3, 4] and a == b
    sa, sb = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_store_without_masks_trains_with_the_tables_splits_and_refuses_mask_crops(real_dir, tmp_path):
    """Most classification datasets have no masks: the build puts such cases in test, so the table's split
    column decides; the whole volume trains, --crop mask is refused naming the rows."""
    import dataclasses

    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    [(domain, cases)] = scan_msd(real_dir / "msd")[0]
    store = str(tmp_path / "store")
    build([(domain, [dataclasses.replace(c, label=None) for c in cases])], store, PrepConfig(chunks=(16, 16, 16)),
          workers=0, progress=False, log=lambda s: None)
    no_split = write_table(tmp_path / "a.csv", [{"case_id": i, "label": c} for i, c in zip(IDS, "abab")])
    with pytest.raises(FinetuneError, match="no row is in the train split .* splits: test.*add a split column"):
        finetune("classify", store, str(tmp_path / "r0"), labels=str(no_split), progress=False, log=lambda s: None,
                 **TINY)
    table = write_table(tmp_path / "b.csv", [{"case_id": i, "label": c, "split": s}
                                             for i, c, s in zip(IDS, "abab", ["train", "train", "test", ""])])
    with pytest.raises(FinetuneError, match=r"line\(s\) 2, 3, 4, 5 name cases without a labelled region"):
        finetune("classify", store, str(tmp_path / "r1"), labels=str(table), crop="mask", progress=False,
                 log=lambda s: None, **TINY)
    assert not (tmp_path / "r1").exists()
    [result] = finetune("classify", store, str(tmp_path / "r2"), labels=str(table), progress=False,
                        log=lambda s: None, **TINY)
    spec = json.loads((tmp_path / "r2" / "finetune.json").read_text())
    assert spec["eval_split"] == "test" and spec["preprocessing"]["domain"] == "hippocampus" and result.step == 3
    assert len(read_metrics(tmp_path / "r2", "train")) == 3
