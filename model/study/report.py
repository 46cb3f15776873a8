"""A study's tables and figures: ``study.csv`` (a row per cell), ``summary.csv`` and ``summary.md`` (per init ×
fraction: mean, 95 % t-interval, paired difference to scratch, steps to target), ``label_efficiency.png`` (metric
against the number of labelled training patients, a line and interval band per init) and ``convergence.png``
(validation metric against step, mean over seeds, one panel per fraction)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from model.study.stats import summarize
from runlog.tables import spreadsheet_safe

if TYPE_CHECKING:
    from model.study.grid import Plan

__all__ = ["metric_columns", "summary_markdown", "write_outputs"]


def metric_columns(rows: pd.DataFrame, task: str) -> list[str]:
    """The metrics of a study's rows, the main one first (seg: mean foreground Dice, then per class; classify:
    macro AUC, accuracy, balanced accuracy)."""
    if task == "classify":
        return [m for m in ("auc_macro", "accuracy", "balanced_accuracy") if m in rows]
    return ["dice", *sorted(c for c in rows.columns if c.startswith("dice_"))] if "dice" in rows else []


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(float(v)) else f"{float(v):.{digits}f}"


def summary_markdown(summary: pd.DataFrame, metrics: list[str], eval_split: str, n_eval: int) -> str:
    """The summary as a Markdown table: the main metric with its interval, the other metrics' means, the paired
    difference to scratch and steps to target."""
    if summary.empty:
        return "No finished cell yet.\n"
    main = metrics[0]
    head = ["init", "fraction", "n_train", "seeds", f"{main} mean [95% CI]", *[f"{m}" for m in metrics[1:]],
            "diff vs scratch [95% CI]", "steps to target", "reached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.to_dict("records"):
        diff = "-" if "diff_vs_scratch" not in r or pd.isna(r.get("diff_vs_scratch")) else \
            f"{r['diff_vs_scratch']:+.3f} [{_fmt(r['diff_ci_low'])}, {_fmt(r['diff_ci_high'])}]"
        cells = [r["init"], f"{r['fraction']:g}", str(r["n_train"]), str(r["cells"]),
                 f"{_fmt(r[f'{main}_mean'])} [{_fmt(r[f'{main}_ci_low'])}, {_fmt(r[f'{main}_ci_high'])}]",
                 *[_fmt(r[f"{m}_mean"]) for m in metrics[1:]], diff,
                 _fmt(r.get("steps_to_target_mean", math.nan), 0), str(r.get("reached_target", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMeasured on the {n_eval} cases of the {eval_split} split (the same for every cell). Intervals: "
            "Student t over seeds; diff: paired by seed (same training patients). Steps to target: first validation "
            "step reaching 95 % of scratch's final validation metric at the same fraction and seed.\n")
    return "\n".join(lines) + "\n" + note


def write_outputs(study: Path, plan: Plan, rows: pd.DataFrame, *, figures: bool = True) -> list[Path]:
    """Write the study's tables (and figures); returns the paths written."""
    from catalog.atomic import write_atomic

    metrics = metric_columns(rows, plan.grid.task)
    written = []
    path = study / "study.csv"
    write_atomic(path, lambda tmp: spreadsheet_safe(rows).to_csv(tmp, index=False))
    written.append(path)
    if not metrics:
        return written
    for col in ("n_train", *metrics):
        rows[col] = pd.to_numeric(rows[col], errors="coerce")
    summary = summarize(rows, metrics)
    write_atomic(study / "summary.csv", lambda tmp: spreadsheet_safe(summary).to_csv(tmp, index=False))
    n_eval = int(plan.cases["split"].eq(plan.eval_split).sum())
    text = summary_markdown(summary, metrics, plan.eval_split, n_eval)
    write_atomic(study / "summary.md", lambda tmp: Path(tmp).write_text(text))
    written += [study / "summary.csv", study / "summary.md"]
    if figures and not summary.empty:
        from model.study.figures import plot_convergence, plot_label_efficiency

        written.append(plot_label_efficiency(summary, metrics[0], study / "label_efficiency.png"))
        written.append(plot_convergence(rows, study / "convergence.png"))
    return written
