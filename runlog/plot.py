"""Training curves of run folders: loss, validation metric and throughput as PNG figures.

    med3d-train plot RUN [RUN ...] --out DIR     ->  DIR/loss.png, DIR/val.png, DIR/throughput.png

A run folder holds ``metrics.jsonl`` (pretraining, lung and nodule fine-tuning) or, for the two-stage liver
recipe, one per stage (``RUN/coarse/metrics.jsonl``, ``RUN/fine/metrics.jsonl``); each such file is one
*series*, named ``run`` or ``run/stage``. ``train`` rows carry step, domain, loss, lr, patches_per_s, data_wait_s
and step_s; ``val`` rows carry ``dice`` {domain: value} (pretraining) or ``metric`` + ``split`` (fine-tuning; the
metric's name is in ``RUN/finetune.json``). Figures are built on :class:`matplotlib.figure.Figure` and written by
the Agg canvas: no display, no pyplot state.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from runlog.records import METRICS_FILE, read_metrics

__all__ = ["RunSeries", "find_series", "loss_figure", "plot_runs", "throughput_figure", "unique_names",
           "val_figure"]


@dataclass(frozen=True)
class RunSeries:
    """The metrics of one ``metrics.jsonl``: ``name`` (``run`` or ``run/stage``), its folder, the validation
    metric's name (``dice`` for pretraining, else finetune.json's ``metric``) and its train and val rows."""

    name: str
    folder: Path
    metric: str
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)


def find_series(run_dir: str | Path) -> list[RunSeries]:
    """Every metrics file of a run folder: ``RUN/metrics.jsonl`` and the stage folders' (finetune.json's
    ``stages`` order, else any sub-folder holding one, sorted). Raises ValueError when there is none."""
    run = Path(run_dir)
    info: dict[str, Any] = {}
    if (run / "finetune.json").is_file():
        info = json.loads((run / "finetune.json").read_text())
    metric = str(info.get("metric", "dice"))
    stages = [str(s) for s in info.get("stages", [])]
    others = sorted(p.name for p in run.iterdir() if p.is_dir() and (p / METRICS_FILE).is_file()) \
        if run.is_dir() else []
    folders = [run] if (run / METRICS_FILE).is_file() else []
    folders += [run / s for s in stages if (run / s / METRICS_FILE).is_file()]
    folders += [run / s for s in others if s not in stages]
    if not folders:
        raise ValueError(f"{run}: no {METRICS_FILE} (nor in a stage folder such as {run}/coarse/); is it a "
                         "`med3d-train pretrain` or `finetune` run folder?")
    name = run.resolve().name or str(run)
    return [RunSeries(name=name if f == run else f"{name}/{f.name}", folder=f, metric=metric,
                      train=read_metrics(f, "train"), val=read_metrics(f, "val")) for f in folders]


def unique_names(series: Sequence[RunSeries]) -> list[RunSeries]:
    """``series`` with each run's name made unique by as many parent folders as it takes: two runs both named
    ``seg`` (``a/seg``, ``b/seg``) become ``a/seg`` and ``b/seg`` in the legends, not two ``seg``."""
    def run_dir(s: RunSeries) -> Path:
        return s.folder.parent if "/" in s.name else s.folder

    runs = list(dict.fromkeys(run_dir(s).resolve() for s in series))
    depth = {r: 1 for r in runs}
    while True:
        names = {r: "/".join(r.parts[-depth[r]:]) for r in runs}
        twice = {n for n, c in Counter(names.values()).items() if c > 1}
        grow = [r for r in runs if names[r] in twice and depth[r] < len(r.parts)]
        if not grow:
            break
        for r in grow:
            depth[r] += 1
    out = []
    for s in series:
        r = run_dir(s).resolve()
        out.append(replace(s, name=names[r] + (s.name[s.name.index("/"):] if "/" in s.name else ""))
                   if depth[r] > 1 else s)
    return out


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in columns:
        if col not in df:
            df[col] = np.nan
    return df


def _smooth(values: pd.Series) -> pd.Series:
    """Exponential moving average spanning ~5% of the points (at least 1): a trend through noisy steps."""
    return values.astype(float).ewm(span=max(1, len(values) // 20), ignore_na=True).mean()


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def loss_figure(series: Sequence[RunSeries]) -> Figure:
    """Training loss against step: left, each series (raw faint, smoothed bold); right, when a series trained
    several domains (pretraining), its smoothed loss per domain."""
    multi = [s for s in series if _frame(s.train, ["domain"])["domain"].nunique() > 1]
    fig = Figure(figsize=(11 if multi else 6.5, 4), layout="constrained")
    axes = fig.subplots(1, 2 if multi else 1, squeeze=False)[0]
    ax = axes[0]
    for i, s in enumerate(series):
        df = _frame(s.train, ["step", "loss"]).dropna(subset=["loss"])
        if df.empty:
            continue
        color = f"C{i % 10}"
        ax.plot(df["step"], df["loss"], color=color, alpha=0.25, lw=0.8)
        ax.plot(df["step"], _smooth(df["loss"]), color=color, lw=1.8, label=s.name)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no train rows")
    ax.set_title("training loss", fontsize=10)
    for s in multi:
        df = _frame(s.train, ["step", "loss", "domain"]).dropna(subset=["loss"])
        for j, (domain, sub) in enumerate(df.groupby("domain", sort=True)):
            axes[1].plot(sub["step"], _smooth(sub["loss"]), marker="o", ms=3.5, lw=1.2, color=f"C{j % 10}",
                         label=f"{s.name}: {domain}" if len(multi) > 1 else str(domain))
    if multi:
        axes[1].set_title("training loss per domain (smoothed)", fontsize=10)
        axes[1].legend(fontsize=7, ncol=2)
    for a in axes:
        a.set_xlabel("step")
        a.set_ylabel("loss")
        a.grid(alpha=0.3)
        if a.lines and all(np.nanmin(line.get_ydata()) > 0 for line in a.lines):
            a.set_yscale("log")
    return fig


def val_figure(series: Sequence[RunSeries]) -> Figure:
    """Validation against step: pretraining Dice per domain (thin) and its mean (dashed); fine-tuning runs'
    metric on their validation split (bold, one marker shape per series, so runs stay apart when the colours
    repeat after ten lines)."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    k = m = 0
    for s in series:
        rows = [r for r in s.val if isinstance(r.get("dice"), dict)]
        domains = sorted({d for r in rows for d in r["dice"]})
        for d in domains:
            steps = [r["step"] for r in rows]
            ax.plot(steps, [_num(r["dice"].get(d)) for r in rows], marker="o", ms=4, lw=1, color=f"C{k % 10}",
                    label=f"{s.name}: {d}")
            k += 1
        if rows and any("mean_dice" in r for r in rows):
            ax.plot([r["step"] for r in rows], [_num(r.get("mean_dice")) for r in rows], "k--", marker="s", ms=4,
                    lw=1.5, label=f"{s.name}: mean Dice")
        metric_rows = [r for r in s.val if "metric" in r]
        if metric_rows:
            split = metric_rows[-1].get("split", "val")
            ax.plot([r["step"] for r in metric_rows], [_num(r.get("metric")) for r in metric_rows],
                    marker="osD^vP<>"[m % 8], ms=6, lw=2, color=f"C{k % 10}", label=f"{s.name}: {s.metric} on {split}")
            k, m = k + 1, m + 1
    if ax.lines:
        ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 8 else 1)
        ax.set_ylim(-0.02, 1.02)
    else:
        _no_data(ax, "no validation rows (--val-every 0?)")
    ax.set_xlabel("step")
    ax.set_ylabel("Dice / metric")
    ax.set_title("validation", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def throughput_figure(series: Sequence[RunSeries]) -> Figure:
    """Top: patches per second against step (smoothed); bottom: the share of each step spent waiting for data
    (``data_wait_s / (data_wait_s + step_s)``): near 1, the loader is the bottleneck."""
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for i, s in enumerate(series):
        df = _frame(s.train, ["step", "patches_per_s", "data_wait_s", "step_s"])
        if df.empty:
            continue
        color = f"C{i % 10}"
        top.plot(df["step"], df["patches_per_s"], color=color, alpha=0.25, lw=0.8)
        top.plot(df["step"], _smooth(df["patches_per_s"]), color=color, lw=1.8, label=s.name)
        wait = df["data_wait_s"].astype(float)
        share = wait / (wait + df["step_s"].astype(float)).replace(0, np.nan)
        bottom.plot(df["step"], _smooth(share), color=color, lw=1.5, label=s.name)
    if top.lines:
        top.legend(fontsize=8)
    else:
        _no_data(top, "no train rows")
    top.set_ylabel("patches / s")
    top.set_title("throughput", fontsize=10)
    bottom.set_ylabel("data-wait share of step")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("step")
    for a in (top, bottom):
        a.grid(alpha=0.3)
    return fig


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG with the Agg canvas."""
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_runs(runs: Sequence[str | Path], out: str | Path | None = None, *, dpi: int = 100) -> dict[str, Path]:
    """Write loss.png, val.png and throughput.png for ``runs`` into ``out`` (default: the first run folder).

    Returns {"loss": path, "val": path, "throughput": path}. Raises ValueError for a folder without metrics.
    """
    if not runs:
        raise ValueError("give at least one run folder")
    series = unique_names([s for run in runs for s in find_series(run)])
    folder = Path(out) if out is not None else Path(runs[0])
    makers = {"loss": loss_figure, "val": val_figure, "throughput": throughput_figure}
    return {key: save_figure(make(series), folder / f"{key}.png", dpi) for key, make in makers.items()}
