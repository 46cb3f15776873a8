"""``med3d-train study``: nested subsets, the fixed holdout, t-intervals, steps to target, and the resumable grid
on the tiny store (a SIGKILL mid-study, then the same command finishes without re-training a finished cell)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from model.study.curves import add_steps_to_target
from model.study.stats import mean_interval, paired_differences, steps_to_target, summarize
from model.study.subsets import SubsetError, holdout, nested_subsets

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------- pure parts
def test_subsets_are_nested_stratified_and_reproducible():
    patients = {f"p{i:02d}": ("a" if i < 30 else "b") for i in range(40)}  # 30 of class a, 10 of class b
    subsets = nested_subsets(patients, [0.1, 0.25, 0.5, 1.0], [0, 1, 2])
    for seed in (0, 1, 2):
        prev: set[str] = set()
        for f in (0.1, 0.25, 0.5, 1.0):
            chosen = set(subsets[(f, seed)])
            assert prev <= chosen  # nested
            n_a = sum(patients[p] == "a" for p in chosen)
            assert (n_a, len(chosen) - n_a) == (math.floor(30 * f + 0.5), math.floor(10 * f + 0.5))
            prev = chosen
        assert len(subsets[(1.0, seed)]) == 40
    assert subsets[(0.25, 0)] != subsets[(0.25, 1)]  # seeds draw other patients
    assert nested_subsets(patients, [0.25], [1]) == {(0.25, 1): subsets[(0.25, 1)]}  # a pure function of the seed


def test_a_fraction_leaving_a_class_without_a_patient_is_refused():
    patients = {f"p{i}": ("a" if i < 18 else "b") for i in range(20)}  # 2 of class b
    with pytest.raises(SubsetError, match="class 'b'"):
        nested_subsets(patients, [0.1], [0])


def test_holdout_is_fixed_stratified_and_disjoint():
    patients = {f"p{i:02d}": ("a" if i % 4 else "b") for i in range(40)}  # 30 a, 10 b
    first = holdout(patients, 8, 4)
    assert first == holdout(patients, 8, 4)  # fixed: no seed of the study enters it
    test = [p for p, s in first.items() if s == "test"]
    assert len(test) == 8 and sum(s == "val" for s in first.values()) == 4
    assert sum(patients[p] == "b" for p in test) == 2  # 10/40 of 8
    with pytest.raises(SubsetError):
        holdout(patients, 30, 10)


def test_interval_equals_scipys_t_interval():
    values = [0.61, 0.72, 0.66, 0.70]
    mean, lo, hi, n = mean_interval(values)
    ref_lo, ref_hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert n == 4 and mean == pytest.approx(np.mean(values))
    assert (lo, hi) == (pytest.approx(ref_lo), pytest.approx(ref_hi))
    one = mean_interval([0.5, float("nan")])
    assert one[0] == 0.5 and math.isnan(one[1]) and one[3] == 1


def _fake_run(folder: Path, curve: list[tuple[int, float]]) -> str:
    folder.mkdir(parents=True)
    lines = [json.dumps({"kind": "train", "step": 1, "loss": 1.0})]
    lines += [json.dumps({"kind": "val", "step": s, "metric": m, "split": "val"}) for s, m in curve]
    lines.append("[1, 2, 3]")  # not a record: left out
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_steps_to_target_from_the_logged_curves(tmp_path):
    scratch = _fake_run(tmp_path / "s", [(10, 0.2), (20, 0.5), (30, 0.8)])
    pre = _fake_run(tmp_path / "p", [(10, 0.7), (20, 0.77), (30, 0.85)])
    slow = _fake_run(tmp_path / "q", [(10, 0.1), (20, 0.3), (30, 0.4)])
    rows = pd.DataFrame({"init": ["scratch", "pre", "slow"], "fraction": [0.5] * 3, "seed": [0] * 3,
                         "status": ["ok"] * 3, "run": [scratch, pre, slow]})
    with pytest.warns(UserWarning, match="skipped 1 line"):  # the damaged line is said, not fatal
        out = add_steps_to_target(rows)
    assert list(out["target"]) == pytest.approx([0.76] * 3)  # 95 % of scratch's final 0.8
    assert out["steps_to_target"].iloc[0] == 30 and out["steps_to_target"].iloc[1] == 20
    assert math.isnan(out["steps_to_target"].iloc[2])
    assert steps_to_target([(5, 0.9)], float("nan")) != steps_to_target([(5, 0.9)], float("nan"))  # NaN


def test_summary_pairs_by_seed():
    rows = pd.DataFrame({"init": ["scratch", "pre"] * 3, "fraction": [1.0] * 6, "seed": [0, 0, 1, 1, 2, 2],
                         "status": ["ok"] * 6, "n_train": [4] * 6,
                         "dice": [0.5, 0.6, 0.7, 0.75, 0.6, 0.62]})
    diffs = paired_differences(rows, "dice")
    assert list(diffs["difference"]) == pytest.approx([0.1, 0.05, 0.02])
    s = summarize(rows, ["dice"]).set_index("init")
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([0.1, 0.05, 0.02]), scale=stats.sem([0.1, 0.05, 0.02]))
    assert s.loc["pre", "diff_vs_scratch"] == pytest.approx(0.17 / 3)
    assert (s.loc["pre", "diff_ci_low"], s.loc["pre", "diff_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


# ------------------------------------------------------------------------------------------- the command
def _study_args(store: str, out: Path, *extra: str) -> list[str]:
    return ["study", store, "--task", "seg", "--out", str(out), "--domain", "alpha", "--init", "scratch",
            "--fractions", "0.5,1", "--seeds", "0,1", "--holdout", "1,1", "--steps", "2", "--batch", "2",
            "--patch", "16", "--decoder", "unet", "--device", "cpu", "--workers", "0", "--val-every", "1",
            "--ckpt-every", "1", "--no-figures", *extra]


def test_refusals_before_any_training(tiny_store, tmp_path):
    from model.cli import main

    runner = CliRunner()
    for extra, words in ((["--fractions", "0,0.5"], "(0, 1]"), (["--fractions", "0.5,1.5"], "(0, 1]"),
                         (["--seeds", "1,1"], "given twice"), (["--holdout", "6,1"], "leave some to train"),
                         (["--fractions", "0.1"], "takes no patient")):
        out = tmp_path / f"s{len(words)}{extra[1]}"
        args = _study_args(tiny_store, out)
        for i in range(0, len(extra), 2):
            args[args.index(extra[i]) + 1] = extra[i + 1]
        res = runner.invoke(main, args)
        assert res.exit_code != 0 and words in res.output, (extra, res.output)
        assert not (out / "runs").exists()
    res = runner.invoke(main, ["study", tiny_store, "--task", "classify", "--out", str(tmp_path / "c"),
                               "--init", "scratch"])
    assert res.exit_code != 0 and "--labels" in res.output


def test_an_init_that_saw_a_test_scan_is_refused(tiny_store, tmp_path):
    from model.cli import main
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    cfg = TrainConfig(store=tiny_store, out=str(tmp_path / "pre"), encoder="resnet10", steps=1, batch=1,
                      patch=(16, 16, 16), workers=0, device="cpu", val_every=0, ckpt_every=0)
    ckpt = pretrain(cfg, progress=False, log=lambda s: None).checkpoint
    res = CliRunner().invoke(main, _study_args(tiny_store, tmp_path / "st", "--init", f"seen={ckpt}",
                                               "--holdout", "3,1"))
    assert res.exit_code != 0 and "was trained on" in res.output and "test" in res.output, res.output
    assert not (tmp_path / "st" / "runs").exists()


@pytest.mark.slow
def test_study_survives_sigkill_and_finishes_without_retraining(tiny_store, tmp_path):
    from model.cli import main
    from tests_model_helpers import tiny_pretrain

    init = tiny_pretrain(tmp_path / "pre")
    out = tmp_path / "study"
    # one checkpoint and one validation per cell (its last step): the test is about the kill, not the curves
    args = _study_args(tiny_store, out, "--init", f"pre={init}", "--seeds", "0", "--ckpt-every", "2",
                       "--val-every", "2")
    cmd = [sys.executable, "-m", "model.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "runs" / "scratch" / "f0.5" / "s0" / "cell.json"
    deadline = time.time() + 240
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.is_file(), proc.stderr.read().decode() if proc.poll() is not None else "no cell finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/checkpoint.pt")
                if (p.parent / "cell.json").is_file()}
    assert finished and len(list(out.glob("runs/*/*/*/cell.json"))) < 4

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for path, mtime in finished.items():  # a finished cell is never trained again
        assert path.stat().st_mtime_ns == mtime
    rows = pd.read_csv(out / "study.csv")
    assert len(rows) == 4 and set(rows["status"]) == {"ok"}
    assert set(rows["init"]) == {"scratch", "pre"} and set(rows["n_train"]) == {2, 4}
    assert rows["dice"].between(0, 1).all() and set(rows["split"]) == {"test"}
    assert rows.loc[rows["init"] == "scratch", "steps_to_target"].notna().all()  # its own target, reached at the end
    # every cell measured on the same held-out case; the 2-patient subsets lie inside the 4-patient ones
    tables = {p.stem: pd.read_csv(p) for p in (out / "tables").glob("*.csv")}
    tests = {tuple(sorted(t.loc[t["split"] == "test", "case_id"])) for t in tables.values()}
    assert len(tests) == 1 and len(next(iter(tests))) == 1
    for seed in (0,):
        small, full = (set(tables[f"f{f}_s{seed}"].query("split == 'train'")["case_id"]) for f in ("0.5", "1"))
        assert len(small) == 2 and small < full
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["init"]) == {"scratch", "pre"} and (summary["cells"] == 1).all()
    assert "diff vs scratch" in (out / "summary.md").read_text()
    # the grid cannot change under a re-run
    changed = CliRunner().invoke(main, [*args, "--steps", "5"])
    assert changed.exit_code != 0 and "--steps" in changed.output, changed.output


def test_a_failed_cell_is_a_row_and_the_others_go_on(tiny_store, tmp_path, monkeypatch):
    import model.training.finetune as ft
    from model.study.grid import StudyGrid
    from model.study.runner import run_study
    from model.training.checkpoint import load_checkpoint

    grid = StudyGrid(task="seg", store=tiny_store, inits=(("scratch", "scratch"),), fractions=(1.0,), seeds=(0, 1),
                     holdout=(1, 1), options={"domain": "alpha", "steps": 2, "batch": 2, "patch": (16, 16, 16),
                                              "decoder": "unet", "device": "cpu", "workers": 0, "val_every": 1,
                                              "ckpt_every": 1})
    real = ft.finetune

    def flaky(task, store, out, **kw):
        if kw["seed"] == 0:
            raise RuntimeError("out of memory (simulated)")
        return real(task, store, out, **kw)

    monkeypatch.setattr(ft, "finetune", flaky)
    rows = run_study(grid, tmp_path / "st", log=lambda s: None, figures=False).set_index("seed")
    assert rows.loc[0, "status"] == "failed" and "out of memory (simulated)" in rows.loc[0, "error"]
    assert rows.loc[1, "status"] == "ok" and 0 <= rows.loc[1, "dice"] <= 1
    done = tmp_path / "st" / "runs" / "scratch" / "f1" / "s1" / "checkpoint.pt"
    mtime = done.stat().st_mtime_ns
    # a finished cell keeps its last checkpoint only (two were saved: ckpt_every 1, 2 steps)
    assert load_checkpoint(done)["step"] == 2 and not done.with_name("checkpoint.prev.pt").exists()
    monkeypatch.setattr(ft, "finetune", real)
    rows = run_study(grid, tmp_path / "st", log=lambda s: None, figures=False).set_index("seed")
    assert set(rows["status"]) == {"ok"} and done.stat().st_mtime_ns == mtime  # the failed cell tried again only


def test_more_seeds_or_inits_extend_a_study_other_changes_do_not(tiny_store):
    from model.study.grid import StudyGrid

    def grid(seeds, steps=2, inits=(("scratch", "scratch"),)):
        return StudyGrid(task="seg", store=tiny_store, inits=inits, fractions=(1.0,),
                         seeds=seeds, holdout=(1, 1), options={"steps": steps})

    saved = grid((0,)).to_dict()
    assert grid((0, 1, 2)).differences(saved) == []          # a superset of the seeds: new cells only
    assert grid((1, 2)).differences(saved) == ["seeds"]       # a seed dropped: refused
    assert grid((0,), steps=5).differences(saved) == ["--steps"]
    assert grid((0, 1), steps=5).differences(saved) == ["--steps"]
    more = (("scratch", "scratch"), ("pre", "/runs/pre"))
    assert grid((0,), inits=more).differences(saved) == [] and grid((0,), inits=more).grown(saved) == ["inits"]
    assert grid((0,), inits=(("pre", "/runs/pre"),)).differences(saved) == ["inits"]  # scratch dropped
    assert grid((0,), inits=(("scratch", "/runs/other"),)).differences(saved) == ["inits"]  # other weights


def test_a_fallback_checkpoint_that_cannot_be_deleted_is_a_note_not_a_failure(tmp_path):
    from model.study.runner import _drop_fallback_checkpoint

    (tmp_path / "checkpoint.prev.pt").mkdir()  # a folder where the file would be
    lines: list[str] = []
    _drop_fallback_checkpoint(tmp_path, lines.append)
    assert len(lines) == 1 and "checkpoint.prev.pt" in lines[0] and "by hand" in lines[0]
    (tmp_path / "checkpoint.prev.pt").rmdir()
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"x")
    _drop_fallback_checkpoint(tmp_path, lines.append)
    assert not (tmp_path / "checkpoint.prev.pt").exists() and len(lines) == 1
