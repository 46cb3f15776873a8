"""The study's two figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_convergence", "plot_label_efficiency"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_label_efficiency(summary: pd.DataFrame, metric: str, path: Path) -> Path:
    """``metric`` against labelled training patients (log axis), a line per init with its 95 % interval band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for init, g in summary.groupby("init", sort=False):
        g = g.sort_values("n_train")
        x, y = g["n_train"].to_numpy(float), g[f"{metric}_mean"].to_numpy(float)
        ax.plot(x, y, marker="o", label=str(init))
        lo, hi = g[f"{metric}_ci_low"].to_numpy(float), g[f"{metric}_ci_high"].to_numpy(float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training patients")
    ax.set_ylabel(f"test {metric} (mean, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_convergence(rows: pd.DataFrame, path: Path) -> Path:
    """Validation metric against step, mean over seeds, a line per init, one panel per fraction."""
    from model.study.curves import val_curve

    plt = _pyplot()
    ok = rows[rows["status"].eq("ok")]
    fractions = sorted(ok["fraction"].unique())
    cols = max(1, min(3, len(fractions)))
    nrows = max(1, math.ceil(len(fractions) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), dpi=110, squeeze=False)
    for ax, fraction in zip(axes.flat, fractions):
        for init, g in ok[ok["fraction"] == fraction].groupby("init", sort=False):
            curves = [dict(val_curve(r)) for r in g["run"]]
            steps = sorted(set().union(*curves)) if curves else []
            if not steps:
                continue
            mean = [np.nanmean([c.get(s, np.nan) for c in curves]) for s in steps]
            ax.plot(steps, mean, marker=".", label=str(init))
        ax.set_title(f"fraction {fraction:g}")
        ax.set_xlabel("step")
        ax.set_ylabel("val metric")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(fractions):]:
        ax.axis("off")
    if fractions:
        axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
