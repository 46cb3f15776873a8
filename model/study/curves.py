"""The validation curves of a study's cells (``metrics.jsonl`` ``val`` records) and steps to target from them."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from model.study.stats import TARGET_SHARE, steps_to_target

__all__ = ["add_steps_to_target", "val_curve"]


def val_curve(run: str | Path) -> list[tuple[int, float]]:
    """``(step, metric)`` of every validation record of a run, in step order; records that are not usable
    (no step, no finite metric) are left out."""
    from runlog.records import read_metrics

    out = []
    try:
        records = read_metrics(run, "val")
    except ValueError:
        return []
    for r in records:
        step, metric = r.get("step"), r.get("metric")
        if isinstance(step, int) and isinstance(metric, (int, float)) and math.isfinite(metric):
            out.append((step, float(metric)))
    return sorted(out)


def add_steps_to_target(rows: pd.DataFrame, reference: str = "scratch") -> pd.DataFrame:
    """``rows`` with ``final_val`` (a run's last validation metric), ``target`` (95 % of the reference's final
    validation metric at the same fraction and seed) and ``steps_to_target``; NaN where a curve is missing."""
    rows = rows.copy()
    curves = {i: val_curve(r) if s == "ok" else [] for i, (r, s) in enumerate(zip(rows["run"], rows["status"]))}
    rows["final_val"] = [c[-1][1] if c else math.nan for c in curves.values()]
    finals = {(r.fraction, r.seed): r.final_val for r in rows.itertuples() if r.init == reference}
    rows["target"] = [TARGET_SHARE * finals.get((r.fraction, r.seed), math.nan) for r in rows.itertuples()]
    rows["steps_to_target"] = [steps_to_target(curves[i], t) for i, t in enumerate(rows["target"])]
    return rows
