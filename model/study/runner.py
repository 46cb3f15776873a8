"""``med3d-train study``: run every cell of a study (an ordinary finetune run, then ``evaluate``), resumably.

A study folder::

    STUDY/study.json                          the grid (a re-run with other options is refused)
    STUDY/tables/f<fraction>_s<seed>.csv      the cell's cases (seg: a split table; classify: a label table),
                                              shared by every init: a paired design
    STUDY/runs/<init>/f<fraction>/s<seed>/    a finetune run folder (config.json, checkpoint.pt, metrics.jsonl,
                                              eval/<split>/...) and cell.json, written when the cell is done
                                              (then the run's fallback checkpoint.prev.pt is deleted)
    STUDY/logs/<init>_f<fraction>_s<seed>.log what finetune and evaluate said
    STUDY/study.csv, summary.csv, summary.md, label_efficiency.png, convergence.png

A killed study re-run goes on where it stopped: a cell with an ok ``cell.json`` is never re-trained; a run with a
checkpoint resumes from it; a run folder without one (killed in its first steps) starts again. A cell that fails
is a row with its error and the other cells go on; a re-run tries it again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from catalog.redact import redact_url, redact_urls
from model.study.grid import GRID_FILE, Cell, Plan, StudyError, StudyGrid, plan_study, read_saved_grid
from model.training.run_lock import LOCK_FILE, run_lock

__all__ = ["CELL_FILE", "StudyError", "cell_dir", "run_study", "study_rows"]

CELL_FILE = "cell.json"


def cell_dir(study: Path, cell: Cell) -> Path:
    return study / "runs" / cell.init / f"f{cell.fraction:g}" / f"s{cell.seed}"


def _table_path(study: Path, fraction: float, seed: int) -> Path:
    return study / "tables" / f"f{fraction:g}_s{seed}.csv"


def _write_table(plan: Plan, study: Path, fraction: float, seed: int) -> Path:
    """The cell's case table: a split table (seg) or a label table with splits (classify)."""
    from catalog.atomic import write_atomic

    rows = plan.table(fraction, seed)
    if plan.grid.task == "seg":
        frame = pd.DataFrame({"case_id": rows["store_path"], "split": rows["split"]})
    else:
        ids = "case_id" if not rows["case_id"].duplicated().any() else "scan_id"
        frame = pd.DataFrame({ids: rows[ids], "label": rows["label"], "split": rows["split"]})
    path = _table_path(study, fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = frame.to_csv(index=False)
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path


def _metrics(task: str, summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluate summary a study row keeps."""
    if task == "classify":
        keys = ("auc_macro", "accuracy", "balanced_accuracy")
        return {k: float(summary[k]) if summary.get(k) is not None else float("nan") for k in keys}
    out = {"dice": float(summary["metric"]) if summary.get("metric") is not None else float("nan")}
    for name in summary.get("classes", []):
        v = summary.get(f"dice_{name}_mean")
        out[f"dice_{name}"] = float(v) if v is not None else float("nan")
    return out


def _trained_steps(run: Path) -> int | None:
    """The step of ``run``'s checkpoint, or None without one."""
    import torch

    from model.training.checkpoint import CHECKPOINT_NAME

    path = run / CHECKPOINT_NAME
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def _run_cell(plan: Plan, study: Path, cell: Cell, log_file: Path) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; its row."""
    from model.api import evaluate, finetune

    grid = plan.grid
    run = cell_dir(study, cell)
    table = _write_table(plan, study, cell.fraction, cell.seed)
    steps = _trained_steps(run)
    if run.exists() and steps is None:
        shutil.rmtree(run)  # killed before its first checkpoint: nothing to resume
    options = grid.task_options()
    options["splits" if grid.task == "seg" else "labels"] = str(table)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as fh:
        def log(line: str) -> None:
            fh.write(redact_url(line) + "\n")
            fh.flush()

        t0 = time.perf_counter()
        if steps is None or steps < int(options.get("steps", 1000)):
            finetune(grid.task, grid.store, str(run), resume=steps is not None, progress=False, log=log,
                     init=cell.weights, seed=cell.seed, **options)
        t1 = time.perf_counter()
        summary = evaluate(run, grid.store, device=options.get("device") or "cpu", progress=False, log=log)
        t2 = time.perf_counter()
    rows = plan.table(cell.fraction, cell.seed)
    train = rows[rows["split"].eq("train")]
    return {"status": "ok", "error": "", **_metrics(grid.task, summary), "split": summary.get("split"),
            "n_train": int(train["patient"].nunique()), "n_train_cases": len(train),
            "train_s": round(t1 - t0, 2), "eval_s": round(t2 - t1, 2)}


def _drop_fallback_checkpoint(run: Path, log: Callable[[str], None]) -> None:
    """A finished cell keeps its last checkpoint only. ``checkpoint.prev.pt`` is training's fallback for a
    checkpoint damaged after it was written; once the cell is evaluated and its ``cell.json`` written, the cell
    is never trained again, and the copy is dead weight: half of a finished study's checkpoint bytes (290 MB a
    cell for the ResNet-10 U-Net; the studies behind the README kept 58 such copies, 15.6 GB)."""
    from model.training.checkpoint import CHECKPOINT_NAME, previous_path

    path = previous_path(run / CHECKPOINT_NAME)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a folder or a read-only file in its place: the cell is done all the same
        log(f"note: could not delete {path} ({exc.strerror or exc}); the cell is done, delete it by hand")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """study.json and cell.json: strict JSON, credentials in URLs redacted (a cell's error may name the store)."""
    from catalog.atomic import write_atomic
    from runlog.records import json_safe

    text = json.dumps(redact_urls(json_safe(data)), indent=2) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _read_cell(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_study(grid: StudyGrid, study: str | Path, *, log: Callable[[str], None] = print,
              figures: bool = True) -> pd.DataFrame:
    """Run (or finish) every cell of ``grid`` in ``study``; returns the rows of ``study.csv``. ``study/.lock`` is
    held meanwhile (:mod:`model.training.run_lock`): a second study into the folder is a :class:`StudyError`."""
    study = Path(study)
    # The study folder's lock before anything else (each cell's finetune run locks its own run folder).
    with run_lock(study, log=log, error=StudyError):
        return _run_locked(grid, study, log, figures)


def _run_locked(grid: StudyGrid, study: Path, log: Callable[[str], None], figures: bool) -> pd.DataFrame:
    from model.study.report import write_outputs

    saved = read_saved_grid(study)
    if saved is not None:
        diff = grid.differences(saved)
        if diff:
            raise StudyError(f"{study} holds a study with other {', '.join(diff)} ({study / GRID_FILE}); a re-run "
                             "must ask for the same grid: give the same options, or another --out")
    elif any(p.name != LOCK_FILE for p in study.iterdir()):
        raise StudyError(f"{study} is not empty and holds no {GRID_FILE}; choose another --out")
    t_plan = time.perf_counter()
    plan = plan_study(grid)
    study.mkdir(parents=True, exist_ok=True)
    grown = grid.grown(saved) if saved is not None else []
    if saved is None or grown:
        for key in grown:
            log(f"study: more {key} than {study / GRID_FILE} holds: the finished cells are kept, the new ones run")
        _write_json(study / GRID_FILE, grid.to_dict())
    cells = plan.cells()
    log(f"study: {len(grid.inits)} init(s) x {len(grid.fractions)} fraction(s) x {len(grid.seeds)} seed(s) = "
        f"{len(cells)} cells, measured on {int(plan.cases['split'].eq(plan.eval_split).sum())} {plan.eval_split} "
        f"cases; training pool {int(plan.cases['split'].eq('train').sum())} cases "
        f"(planned in {time.perf_counter() - t_plan:.2f} s)")
    for n, cell in enumerate(cells, start=1):
        path = cell_dir(study, cell) / CELL_FILE
        done = _read_cell(path)
        if done is not None and done.get("status") == "ok":
            continue
        t0 = time.perf_counter()
        base = {"init": cell.init, "fraction": cell.fraction, "seed": cell.seed, "run": str(cell_dir(study, cell))}
        try:
            row = {**base, **_run_cell(plan, study, cell, study / "logs" /
                                       f"{cell.init}_f{cell.fraction:g}_s{cell.seed}.log")}
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a failed cell is a row; the others go on
            row = {**base, "status": "failed",
                   "error": redact_url(f"{type(exc).__name__}: {exc}".splitlines()[0])[:500]}
        row["cell_s"] = round(time.perf_counter() - t0, 2)  # with train_s and eval_s: the study's own overhead
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, row)
        if row["status"] == "ok":
            _drop_fallback_checkpoint(cell_dir(study, cell), log)
        main = next((k for k in ("dice", "auc_macro") if k in row), None)
        what = f"{main} {row[main]:.4f}" if main and row["status"] == "ok" else f"FAILED: {row['error']}"
        log(f"[{n}/{len(cells)}] {cell.key}: {what} ({time.perf_counter() - t0:.0f} s)")
        write_outputs(study, plan, study_rows(study, plan), figures=False)
    rows = study_rows(study, plan)
    write_outputs(study, plan, rows, figures=figures)
    return rows


def study_rows(study: Path, plan: Plan) -> pd.DataFrame:
    """Every cell's row (finished, failed, or missing when not run yet), with steps to target from the curves."""
    from model.study.curves import add_steps_to_target

    rows = []
    for cell in plan.cells():
        data = _read_cell(cell_dir(study, cell) / CELL_FILE)
        rows.append(data if data is not None else {"init": cell.init, "fraction": cell.fraction, "seed": cell.seed,
                                                   "status": "missing", "error": "",
                                                   "run": str(cell_dir(study, cell))})
    frame = pd.DataFrame(rows)
    return add_steps_to_target(frame)
