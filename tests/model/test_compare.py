"""The comparison table from synthetic fine-tuning run folders: exact cells, steps to reach the scratch run's
final val metric, missing evaluations, shared cells, malformed folders, and the written files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from model.evaluation.compare import INIT_KINDS, collect_runs, compare_cells, compare_table, missing_runs, write_compare


def _run(root: Path, name: str, *, task: str, encoder: str, init_kind: str, curve: list[tuple[int, float | None]],
         evals: dict[str, float] | None = None, metric: str | None = None, extra_rows: list[dict] | None = None,
         mtime: float | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    metric = metric or ("accuracy" if task == "nodule" else "dice")
    (folder / "finetune.json").write_text(json.dumps(
        {"task": task, "encoder": encoder, "init": "scratch" if init_kind == "scratch" else f"/w/{init_kind}.pth",
         "init_kind": init_kind, "metric": metric, "lr": 1e-3}))
    rows = []
    for step, value in curve:
        rows.append({"kind": "train", "step": step - 50, "loss": 1.0 / step})
        rows.append({"kind": "val", "step": step, "split": "val", "metric": value})
    rows += extra_rows or []
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split, value in (evals or {}).items():
        (folder / "eval" / split).mkdir(parents=True)
        (folder / "eval" / split / "summary.json").write_text(json.dumps(
            {"task": task, "split": split, "metric_name": metric, "metric": value, "hd95": 3.0}))
    if mtime is not None:
        for f in folder.rglob("*"):
            os.utime(f, (mtime, mtime))
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    lung = dict(task="lung", encoder="resnet10")
    return [
        # test-split val rows must not enter the curve (would make the target 0.99)
        _run(tmp_path, "lung10_scratch", **lung, init_kind="scratch",
             curve=[(100, 0.50), (200, 0.65), (300, 0.70), (400, 0.7130)], evals={"val": 0.70, "test": 0.7130},
             extra_rows=[{"kind": "val", "step": 400, "split": "test", "metric": 0.99}]),
        _run(tmp_path, "lung10_kin", **lung, init_kind="kinetics",
             curve=[(100, 0.30), (200, 0.50), (300, 0.60), (400, 0.7129)], evals={"val": 0.70}),
        _run(tmp_path, "lung10_mnet", **lung, init_kind="medicalnet",
             curve=[(100, 0.60), (200, None), (300, 0.7130), (400, 0.75)]),
        _run(tmp_path, "lung10_med3d", **lung, init_kind="med3d",
             curve=[(100, 0.60), (200, 0.72), (300, 0.80), (400, 0.8716)], evals={"test": 0.8716}),
        _run(tmp_path, "nodule50_med3d_old", task="nodule", encoder="resnet50", init_kind="med3d",
             curve=[(50, 0.5)], evals={"test": 0.5}, mtime=1_000_000.0),
        _run(tmp_path, "nodule50_med3d", task="nodule", encoder="resnet50", init_kind="med3d",
             curve=[(50, 0.80), (100, 0.8990)], evals={"test": 0.8990}, mtime=2_000_000.0),
    ]


def test_collect_runs(runs):
    df = collect_runs(runs)
    assert list(df["run"]) == [str(r) for r in runs]
    by = df.set_index(df["run"].map(lambda r: Path(r).name))
    scratch = by.loc["lung10_scratch"]
    assert (scratch.task, scratch.encoder, scratch.depth, scratch.init_kind, scratch.metric_name) == \
        ("lung", "resnet10", 10, "scratch", "dice")
    assert scratch.metric == 0.7130 and scratch.split == "test" and scratch.final_step == 400
    assert scratch.curve == [(100, 0.50), (200, 0.65), (300, 0.70), (400, 0.7130)] and scratch.note == ""
    assert by.loc["lung10_kin", "split"] == "val" and by.loc["lung10_kin", "metric"] == 0.70
    mnet = by.loc["lung10_mnet"]
    assert math.isnan(mnet.metric) and pd.isna(mnet.split) and "no evaluation yet" in mnet.note
    assert mnet.curve == [(100, 0.60), (300, 0.7130), (400, 0.75)]          # null metric skipped
    assert by.loc["nodule50_med3d", "depth"] == 50 and by.loc["nodule50_med3d", "metric_name"] == "accuracy"
    assert df["depth"].dtype == "Int64" and df["final_step"].dtype == "Int64"


def test_compare_table_cells(runs):
    with pytest.warns(UserWarning, match="2 runs for nodule / resnet50 / med3d.*nodule50_med3d "):
        table = compare_table(collect_runs(runs))
    assert list(table.columns) == ["scratch", "Kinetics", "MedicalNet", "Med3D (ours)"]
    assert list(table.index) == [("lung", "resnet10"), ("nodule", "resnet50")]
    assert table.loc[("lung", "resnet10")].tolist() == ["71.30 (step 400)", "70.00 (step -)", "n/a (step 300)",
                                                "87.16 (step 200)"]
    # No scratch run for nodule/50: no steps; the newer of the two med3d runs.
    assert table.loc[("nodule", "resnet50")].tolist() == ["", "", "", "89.90"]


def test_compare_cells_numeric(runs):
    with pytest.warns(UserWarning):
        cells = compare_cells(collect_runs(runs))
    assert list(cells["column"]) == ["scratch", "Kinetics", "MedicalNet", "Med3D (ours)", "Med3D (ours)"]
    # scratch reaches its own final 0.7130 at 400; Kinetics tops out at 0.7129; MedicalNet hits it exactly at 300
    assert [None if pd.isna(v) else int(v) for v in cells["steps_to_reach"]] == [400, None, 300, 200, None]
    assert cells["steps_to_reach"].dtype == "Int64" and cells["metric"].dtype == "float64"
    assert cells["scratch_target"].iloc[:4].tolist() == [0.7130] * 4 and math.isnan(cells["scratch_target"].iloc[4])
    last = cells.iloc[4]
    assert Path(last.run).name == "nodule50_med3d" and last.n_runs == 2 and last.metric == 0.8990


def test_write_compare(runs, tmp_path):
    with pytest.warns(UserWarning):
        md, csv = write_compare(collect_runs(runs), tmp_path / "out")
    assert (md.name, csv.name) == ("compare.md", "compare.csv")
    text = md.read_text()
    assert "| task | encoder | metric | scratch | Kinetics | MedicalNet | Med3D (ours) |" in text
    assert "| lung | ResNet-10 | dice | 71.30 (step 400) | 70.00 (step -) | n/a (step 300) | 87.16 (step 200) |" in text
    assert "| nodule | ResNet-50 | accuracy |  |  |  | 89.90 |" in text
    assert "lung10_mnet: no evaluation yet" in text and "kept " in text
    for figure in ("71.30 | 87.16", "71.75 | 93.31", "79.80 | 86.87", "84.85 | 89.90", "94.6"):
        assert figure in text
    df = pd.read_csv(csv)
    assert len(df) == 5 and df["metric"].dtype == "float64" and df["depth"].tolist() == [10, 10, 10, 10, 50]
    assert df["steps_to_reach"].isna().tolist() == [False, True, False, False, True]
    assert df.loc[df["init_kind"] == "med3d", "steps_to_reach"].iloc[0] == 200
    assert math.isnan(df.loc[df["init_kind"] == "medicalnet", "metric"].iloc[0])


def test_not_a_run_names_the_folder(tmp_path):
    empty = tmp_path / "some_folder"
    empty.mkdir()
    with pytest.raises(ValueError, match="some_folder is not a fine-tuning run"):
        collect_runs([empty])
    bad = _run(tmp_path, "bad_kind", task="lung", encoder="resnet10", init_kind="imagenet", curve=[(1, 0.1)])
    with pytest.raises(ValueError, match="bad_kind.*init_kind 'imagenet'"):
        collect_runs([bad])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "finetune.json").write_text(json.dumps({"task": "lung"}))
    with pytest.raises(ValueError, match="half.*lacks encoder, init_kind, metric"):
        collect_runs([tmp_path / "half"])


def test_run_without_metrics_or_scratch_curve(tmp_path):
    scratch = _run(tmp_path, "s", task="liver", encoder="resnet152", init_kind="scratch", curve=[],
                   evals={"val": 0.9})
    med3d = _run(tmp_path, "m", task="liver", encoder="resnet152", init_kind="med3d", curve=[(10, 0.95)],
                 evals={"val": 0.946})
    (scratch / "metrics.jsonl").unlink()
    df = collect_runs([scratch, med3d])
    assert pd.isna(df["final_step"].iloc[0]) and "no val metric" in df["note"].iloc[0]
    table = compare_table(df)
    assert table.loc[("liver", "resnet152")].tolist() == ["90.00", "", "", "94.60"]  # a scratch run without a curve
    assert set(INIT_KINDS) == {"scratch", "kinetics", "medicalnet", "med3d", "nnunet"}


def test_one_run_names_the_empty_columns_and_the_commands_that_fill_them(tmp_path):
    from click.testing import CliRunner

    from model.cli import main

    run = _run(tmp_path, "lung_med3d", task="lung", encoder="resnet10", init_kind="med3d",
               curve=[(100, 0.5), (200, 0.5817)], evals={"test": 0.5817})
    spec = json.loads((run / "finetune.json").read_text())
    (run / "finetune.json").write_text(json.dumps(spec | {"store": "data/visceral_store"}))
    res = CliRunner().invoke(main, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "58.17" in res.output and "(step" not in res.output  # no scratch run: no steps to reach
    fill = [f"med3d-train finetune lung data/visceral_store --out {tmp_path}/lung_r10_scratch --init scratch "
            "--depth 10",
            f"med3d-train evaluate {tmp_path}/lung_r10_scratch data/visceral_store",
            f"med3d-train finetune lung data/visceral_store --out {tmp_path}/lung_r10_kinetics --init "
            "resnet-10-kinetics.pth",
            f"med3d-train evaluate {tmp_path}/lung_r10_kinetics data/visceral_store",
            f"med3d-train finetune lung data/visceral_store --out {tmp_path}/lung_r10_medicalnet --init resnet_10.pth",
            f"med3d-train evaluate {tmp_path}/lung_r10_medicalnet data/visceral_store",
            f"med3d-train compare {run} {tmp_path}/lung_r10_scratch {tmp_path}/lung_r10_kinetics "
            f"{tmp_path}/lung_r10_medicalnet"]
    lines = res.output.splitlines()
    start = lines.index("Empty columns, and the commands that fill them:")
    assert lines[start + 1].startswith("# lung / ResNet-10: no scratch, Kinetics, MedicalNet run")
    assert lines[start + 2:start + 2 + len(fill)] == fill
    assert "\n".join(fill) in (tmp_path / "cmp" / "compare.md").read_text()


def test_missing_runs_is_empty_for_full_rows_and_one_compare_for_several_rows(runs, tmp_path):
    full = _run(tmp_path, "n50_scratch", task="nodule", encoder="resnet50", init_kind="scratch", curve=[(1, 0.5)])
    lines = missing_runs(collect_runs(runs[:4] + [full]))
    assert [line for line in lines if line.startswith("#")] == [
        "# nodule / ResNet-50: no Kinetics, MedicalNet, Med3D (ours) run; to fill them (replace the --init "
        "placeholders with your files):"]
    assert "--init PRETRAIN_RUN" in lines[-3] and lines[-1].startswith("med3d-train compare ")
    assert sum(line.startswith("med3d-train compare") for line in lines) == 1
    assert missing_runs(collect_runs(runs[:4])) == []


def test_a_run_is_read_on_its_own_evaluation_split(tmp_path):
    """A liver run is measured on val; its eval/test folder (LiTS test volumes, no labels: predictions only,
    metric null) must not hide the val metric."""
    from model.evaluation.compare import collect_runs

    folder = _run(tmp_path, "liver10_med3d", task="liver", encoder="resnet10", init_kind="med3d",
                  curve=[(100, 0.9)], evals={"val": 0.93, "test": None})
    spec = json.loads((folder / "finetune.json").read_text())
    (folder / "finetune.json").write_text(json.dumps({**spec, "eval_split": "val"}))
    [row] = collect_runs([folder]).to_dict("records")
    assert row["split"] == "val" and row["metric"] == pytest.approx(0.93) and row["note"] == ""
    (folder / "eval" / "val" / "summary.json").unlink()
    [row] = collect_runs([folder]).to_dict("records")
    assert "evaluate RUN STORE --split val" in row["note"] and "eval/test/summary.json has no metric" in row["note"]
    assert row["metric"] != row["metric"]  # NaN


def test_cli_says_a_shared_cell_once_as_a_note(runs, tmp_path):
    from click.testing import CliRunner

    from model.cli import main

    res = CliRunner().invoke(main, ["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "2 runs for nodule / resnet50 / med3d: using the last modified" in notes[0]
    assert "warnings.warn" not in res.output and "UserWarning" not in res.output


def test_rows_are_encoders_a_non_resnet_one_by_its_name(tmp_path):
    """compare groups by encoder name: two encoders of one task are two rows; a non-ResNet has no depth, its
    row is named by its registry name, and the runs that fill it offer scratch and Med3D only (Kinetics and
    MedicalNet released ResNets) with --encoder."""
    a = _run(tmp_path, "seg_r10", task="seg", encoder="resnet10", init_kind="scratch", curve=[(10, 0.5)],
             evals={"test": 0.5})
    b = _run(tmp_path, "seg_resenc", task="seg", encoder="resenc_m", init_kind="med3d", curve=[(10, 0.6)],
             evals={"test": 0.6})
    df = collect_runs([a, b])
    assert df["depth"].tolist()[0] == 10 and pd.isna(df["depth"].iloc[1])
    table = compare_table(df)
    assert list(table.index) == [("seg", "resenc_m"), ("seg", "resnet10")]
    assert table.loc[("seg", "resenc_m")].tolist() == ["", "", "", "60.00"]
    lines = missing_runs(df)
    assert "# seg / resenc_m: no scratch run; to fill it (replace the --init placeholders with your files):" in lines
    assert f"med3d-train finetune seg STORE --out {tmp_path}/seg_resenc_m_scratch --init scratch --encoder resenc_m" \
        in lines
    md, _ = write_compare(df, tmp_path / "cmp")
    assert "| seg | resenc_m | dice |  |  |  | 60.00 |" in md.read_text()
