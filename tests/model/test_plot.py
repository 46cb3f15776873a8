"""`med3d-train plot`: loss / validation / throughput curves of a real pretraining run, a two-stage liver run
(RUN/coarse, RUN/fine) and a one-stage nodule run, drawn from their metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model.cli import main
from model.evaluation.metrics import MetricsLogger, read_metrics
from runlog.plot import find_series, loss_figure, plot_runs, throughput_figure, val_figure


@pytest.fixture(scope="module")
def pretrain_run(tiny_store, tmp_path_factory) -> str:
    """A real 4-step pretraining run on the two-domain tiny store, validated at steps 2 and 4."""
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("plot") / "pre"
    cfg = TrainConfig(store=tiny_store, out=str(out), encoder="resnet10", patch=(16, 16, 16), batch=1, steps=4,
                      workers=0, val_every=2, val_max_cases=1, ckpt_every=0, log_every=1, device="cpu", seed=0)
    pretrain(cfg, progress=False, log=lambda s: None)
    return str(out)


def _finetune_run(folder: Path, task: str, metric: str, stages: list[str], values: dict[str, list[float]]) -> str:
    """A fine-tuning run folder as `finetune` writes it (finetune.json; metrics.jsonl per stage folder, or in RUN
    for a one-stage task), written by the real MetricsLogger with the rows the training loop logs."""
    folder.mkdir(parents=True)
    (folder / "finetune.json").write_text(json.dumps({"task": task, "metric": metric, "stages": stages}))
    for stage, vals in values.items():
        with MetricsLogger(folder if stage == "main" else folder / stage, tensorboard=False) as log:
            for step in range(1, 7):
                log.log("train", step, domain=task, loss=1.0 / step, lr=1e-3, patches_per_s=float(step),
                        data_wait_s=0.1, step_s=0.3)
            for step, v in zip((3, 6), vals):
                log.log("val", step, metric=v, split="val", cases=1)
    return str(folder)


@pytest.fixture(scope="module")
def liver_run(tmp_path_factory) -> str:
    return _finetune_run(tmp_path_factory.mktemp("plot") / "liver", "liver", "dice", ["coarse", "fine"],
                         {"coarse": [0.3, 0.55], "fine": [0.14, float("nan")]})


@pytest.fixture(scope="module")
def nodule_run(tmp_path_factory) -> str:
    return _finetune_run(tmp_path_factory.mktemp("plot") / "nodule", "nodule", "accuracy", ["main"],
                         {"main": [0.5, 0.75]})


def test_series_of_each_run_kind(pretrain_run, liver_run, nodule_run):
    pre, = find_series(pretrain_run)
    assert pre.name == "pre" and pre.metric == "dice"
    assert [r["step"] for r in pre.train] == [1, 2, 3, 4] and [r["step"] for r in pre.val] == [2, 4]
    assert set(pre.val[0]["dice"]) == {"alpha", "beta"}
    coarse, fine = find_series(liver_run)
    assert (coarse.name, fine.name) == ("liver/coarse", "liver/fine")
    nodule, = find_series(nodule_run)
    assert nodule.name == "nodule" and nodule.metric == "accuracy" and len(nodule.val) == 2


def test_figures_hold_the_logged_values(pretrain_run, liver_run, nodule_run):
    series = [*find_series(pretrain_run), *find_series(liver_run), *find_series(nodule_run)]
    ax = val_figure(series).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    pre_val = read_metrics(pretrain_run, "val")
    for domain in ("alpha", "beta"):
        line = lines[f"pre: {domain}"]
        assert list(line.get_xdata()) == [2, 4]
        np.testing.assert_allclose(line.get_ydata(), [r["dice"][domain] for r in pre_val], equal_nan=True)
    np.testing.assert_allclose(lines["pre: mean Dice"].get_ydata(), [r["mean_dice"] for r in pre_val])
    np.testing.assert_allclose(lines["liver/coarse: dice on val"].get_ydata(), [0.3, 0.55])
    fine = lines["liver/fine: dice on val"].get_ydata()  # a null (NaN) value stays a gap, not a 0
    assert fine[0] == pytest.approx(0.14) and np.isnan(fine[1])
    np.testing.assert_allclose(lines["nodule: accuracy on val"].get_ydata(), [0.5, 0.75])

    loss_axes = loss_figure(series).axes
    assert len(loss_axes) == 2  # the pretraining run trained two domains: a per-domain panel
    raw = [line for line in loss_axes[0].get_lines() if line.get_label().startswith("_")]
    pre_train = read_metrics(pretrain_run, "train")
    np.testing.assert_allclose(raw[0].get_ydata(), [r["loss"] for r in pre_train])
    top, bottom = throughput_figure(series).axes
    smoothed = {line.get_label(): line for line in bottom.get_lines()}
    np.testing.assert_allclose(smoothed["liver/coarse"].get_ydata(), 0.25)  # 0.1 s wait of 0.4 s


def test_plot_writes_three_pngs_default_into_the_first_run(pretrain_run, liver_run, tmp_path):
    import matplotlib.image as mpimg

    paths = plot_runs([pretrain_run, liver_run], tmp_path / "plots")
    assert [p.name for p in paths.values()] == ["loss.png", "val.png", "throughput.png"]
    for p in paths.values():
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img[..., :3].std() > 0.01
    res = CliRunner().invoke(main, ["plot", liver_run])
    assert res.exit_code == 0, res.output
    printed = res.output.split()
    assert printed == [str(Path(liver_run) / n) for n in ("loss.png", "val.png", "throughput.png")]
    assert all(Path(p).is_file() for p in printed)


def test_plot_refuses_a_folder_without_metrics(tmp_path):
    res = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert res.exit_code == 1 and "no metrics.jsonl" in res.output
    with pytest.raises(ValueError, match="at least one run"):
        plot_runs([])


def test_metrics_lines_that_are_not_records_are_skipped_and_counted(tmp_path):
    """Issue 23 item 12: JSON that is not a record no longer crashes resume, plot, report, compare and study."""
    import json as _json

    from runlog.plot import plot_runs
    from runlog.records import read_metrics

    good = [{"kind": "train", "step": s, "time": 1.0 + s, "loss": 1.0 / s, "patches_per_s": 2.0,
             "data_wait_s": 0.0, "step_s": 0.5} for s in (1, 2)]
    bad = ["[1, 2, 3]", '{"kind": "train", "step": null}', '{"kind": "train", "step": 3, "loss": 1e400}', "not json"]
    (tmp_path / "metrics.jsonl").write_text("\n".join([_json.dumps(good[0]), *bad, _json.dumps(good[1])]) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 4 line\(s\)"):
        rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    with pytest.warns(UserWarning, match="metrics.jsonl"):
        paths = plot_runs([str(tmp_path)], str(tmp_path / "plots"))
    assert paths and all(p.is_file() for p in paths.values())
