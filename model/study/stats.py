"""What a study's rows say: means with Student-t intervals over seeds, paired differences to scratch, and steps to
target from the validation curves. Pure functions of data frames and curves.

- Interval: ``mean ± t(0.975, n-1) · sd / sqrt(n)`` over the seeds of one init × fraction (``sd`` with n-1); NaN
  for one seed (no spread to measure).
- Paired difference: per seed, the init's metric minus scratch's at the same fraction and seed (the same
  training patients: the subsets do not depend on the init), then the same interval over those differences.
- Steps to target: the first validation step at which a run's curve reaches 95 % of the scratch run's final
  validation metric at the same fraction and seed (Med3D's "converges faster", as a number; NaN when never).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["TARGET_SHARE", "mean_interval", "paired_differences", "steps_to_target", "summarize"]

TARGET_SHARE = 0.95
"""Steps to target: the share of scratch's final validation metric a run must reach."""


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite ``values``: the Student-t interval of the mean at ``level``."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=float)
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def steps_to_target(curve: Sequence[tuple[int, float]], target: float) -> float:
    """The first step of ``curve`` (``(step, metric)`` in step order) whose metric is >= ``target``; NaN when none
    (or when the target is not a number)."""
    if not math.isfinite(target):
        return math.nan
    for step, value in curve:
        if value is not None and math.isfinite(value) and value >= target:
            return float(step)
    return math.nan


def paired_differences(rows: pd.DataFrame, metric: str, reference: str = "scratch") -> pd.DataFrame:
    """Per init (not ``reference``) × fraction × seed: ``metric`` minus the reference's at the same fraction and
    seed; only cells where both finished."""
    ok = rows[rows["status"].eq("ok")]
    ref = ok[ok["init"].eq(reference)].set_index(["fraction", "seed"])[metric]
    out = []
    for r in ok[ok["init"].ne(reference)].itertuples(index=False):
        key = (r.fraction, r.seed)
        if key in ref.index:
            out.append({"init": r.init, "fraction": r.fraction, "seed": r.seed,
                        "difference": float(getattr(r, metric)) - float(ref.loc[key])})
    return pd.DataFrame(out, columns=["init", "fraction", "seed", "difference"])


def summarize(rows: pd.DataFrame, metrics: Sequence[str], reference: str = "scratch") -> pd.DataFrame:
    """One row per init × fraction: ``n_train``, cells finished, and per metric its mean and 95 % interval; for the
    first metric also the paired difference to ``reference`` with its interval, and mean steps to target."""
    ok = rows[rows["status"].eq("ok")]
    diffs = paired_differences(rows, metrics[0], reference) if (rows["init"] == reference).any() else None
    out = []
    for (init, fraction), group in ok.groupby(["init", "fraction"], sort=False):
        rec = {"init": init, "fraction": fraction, "n_train": int(group["n_train"].iloc[0]), "cells": len(group),
               "failed": int(((rows["init"] == init) & (rows["fraction"] == fraction)
                              & rows["status"].ne("ok")).sum())}
        for m in metrics:
            mean, lo, hi, _ = mean_interval(group[m].tolist())
            rec.update({f"{m}_mean": mean, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        if diffs is not None and init != reference:
            d = diffs[(diffs["init"] == init) & (diffs["fraction"] == fraction)]["difference"].tolist()
            mean, lo, hi, n = mean_interval(d)
            rec.update({"diff_vs_" + reference: mean, "diff_ci_low": lo, "diff_ci_high": hi, "pairs": n})
        if "steps_to_target" in group:
            steps = group["steps_to_target"].astype(float)
            rec["steps_to_target_mean"] = float(steps.mean()) if steps.notna().any() else math.nan
            rec["reached_target"] = f"{int(steps.notna().sum())}/{len(steps)}"
        out.append(rec)
    frame = pd.DataFrame(out)
    return frame.sort_values(["fraction", "init"], kind="stable").reset_index(drop=True) if len(frame) else frame
