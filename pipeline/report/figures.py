"""Per-domain statistics figures of a store report: pure functions from catalog rows to matplotlib Figures.

Every figure here is drawn from the catalog alone (``catalog.parquet``), never from the arrays, so a store of
thousands of volumes renders as fast as one of ten. Each function takes the ``ok`` rows of one domain (the
caller filters) and returns a :class:`matplotlib.figure.Figure` that the caller saves and closes. Figures are
created with :class:`~matplotlib.figure.Figure` directly, not ``pyplot``: no global figure registry, no GUI
backend, nothing left open between calls. Margins are fixed in inches (:func:`margins`) rather than computed by
matplotlib's constrained layout, which measures every text artist and takes 3-4x the time of drawing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

AXES = ("z", "y", "x")
ROBUST_Z = 3.5  # |value - median| / (1.4826 MAD) beyond this flags a volume (Iglewicz & Hoaglin's cut-off)
# ... with the scale at least this share of the domain's median p0.5-p99.5 range: in a tight domain (five
# sample volumes whose means differ by 2 units out of 400) the MAD alone would flag noise.
SCALE_FLOOR = 0.02


def margins(fig: Figure, left: float = 0.75, right: float = 0.15, bottom: float = 0.55, top: float = 0.45,
            wspace: float = 0.35, hspace: float = 0.35) -> None:
    """Place the subplots with fixed margins in inches (``wspace``/``hspace``: fractions of an axes' size)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, wspace=wspace,
                        hspace=hspace)


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_axis_off()
    return fig


def _triples(series: pd.Series) -> np.ndarray:
    """(N, 3) float array of the rows' 3-element lists; rows without three values are dropped."""
    rows = [list(v) for v in series if v is not None and len(v) == 3]
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def spacing_figure(rows: pd.DataFrame, target_spacing: Sequence[float]) -> Figure:
    """Scatter of the volumes' original voxel spacings with the domain's target spacing marked.

    Left: slice spacing z against in-plane y; right: x against y (all mm, the catalog's ``orig_spacing``
    (z, y, x) in file axis order). The target (``target_spacing``, canonical (z, y, x)) is the red star.
    """
    fig = Figure(figsize=(8, 3.6))
    sp = _triples(rows["orig_spacing"])
    if not len(sp):
        return _empty(fig, "no spacings in the catalog")
    target = [float(v) for v in target_spacing] if len(target_spacing) == 3 else None
    for ax, (a, b) in zip(fig.subplots(1, 2), ((1, 0), (1, 2))):
        if target is not None:
            ax.scatter([target[a]], [target[b]], marker="*", s=260, color="tab:red", alpha=0.7, zorder=2,
                       label=f"target {target[a]:g} × {target[b]:g} mm")
        ax.scatter(sp[:, a], sp[:, b], s=14, alpha=0.7, color="tab:blue", zorder=3, label=f"volumes ({len(sp)})")
        ax.set_xlabel(f"{AXES[a]} spacing (mm)")
        ax.set_ylabel(f"{AXES[b]} spacing (mm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("original voxel spacing (★ target)", fontsize=10)
    margins(fig)
    return fig


def shape_figure(rows: pd.DataFrame) -> Figure:
    """Histograms of the original shapes (``orig_shape``) and the stored, resampled ones (``shape``), one panel
    per axis (z, y, x), in voxels."""
    fig = Figure(figsize=(10, 3.2))
    orig, stored = _triples(rows["orig_shape"]), _triples(rows["shape"])
    if not len(orig) and not len(stored):
        return _empty(fig, "no shapes in the catalog")
    for i, ax in enumerate(fig.subplots(1, 3)):
        values = np.concatenate([orig[:, i], stored[:, i]])
        bins = np.histogram_bin_edges(values, bins=min(20, max(3, len(np.unique(values)))))
        ax.hist([orig[:, i], stored[:, i]], bins=bins, color=["tab:gray", "tab:green"],
                label=["original", "resampled (stored)"])
        ax.set_xlabel(f"{AXES[i]} (voxels)")
        ax.set_ylabel("volumes")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle("volume shapes: original vs resampled", fontsize=10)
    margins(fig, wspace=0.3)
    return fig


def _robust_flags(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Boolean mask of values whose robust z-score exceeds :data:`ROBUST_Z`: distance to the median over
    1.4826·MAD, the scale being at least ``floor`` (so a tight domain does not flag differences of a few units)."""
    finite = np.isfinite(values)
    if finite.sum() < 3:
        return np.zeros(values.shape, bool)
    med = np.median(values[finite])
    scale = max(1.4826 * float(np.median(np.abs(values[finite] - med))), floor)
    if scale == 0:
        return np.zeros(values.shape, bool)
    return finite & (np.abs(values - med) / scale > ROBUST_Z)


def intensity_table(rows: pd.DataFrame, channel_names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (volume, channel): ``case_id, channel, p005, mean, p995, outlier`` in source units (HU for
    CT), ``outlier`` naming the statistics whose robust z-score (median / MAD over the domain's volumes of that
    channel; the scale 1.4826·MAD is at least 2% of the median p0.5-p99.5 range) exceeds 3.5, '' otherwise."""
    recs = []
    for _, r in rows.iterrows():
        stats = [list(r[c]) for c in ("p005", "mean", "p995")]
        for ch in range(min(len(s) for s in stats)):
            name = channel_names[ch] if ch < len(channel_names) else str(ch)
            recs.append({"case_id": r["case_id"], "source_modality": r.get("source_modality", ""), "channel": name,
                         "p005": stats[0][ch], "mean": stats[1][ch], "p995": stats[2][ch]})
    df = pd.DataFrame(recs, columns=["case_id", "source_modality", "channel", "p005", "mean", "p995"])
    df["outlier"] = ""
    for _, sub in df.groupby("channel", sort=False):
        spread = (sub["p995"] - sub["p005"]).to_numpy(float)
        floor = SCALE_FLOOR * float(np.nanmedian(spread)) if np.isfinite(spread).any() else 0.0
        for stat in ("p005", "mean", "p995"):
            flags = _robust_flags(sub[stat].to_numpy(float), max(floor, 0.0))
            idx = sub.index[flags]
            df.loc[idx, "outlier"] = [f"{o} {stat}".strip() for o in df.loc[idx, "outlier"]]
    return df


def intensity_figure(rows: pd.DataFrame, channel_names: Sequence[str] = ()) -> Figure:
    """Per channel, each volume's intensity range before normalization: a bar from p0.5 to p99.5 with the mean
    as a dot, volumes sorted by mean (source units, HU for CT). Outliers (see :func:`intensity_table`) are red
    and named."""
    table = intensity_table(rows, channel_names)
    channels = list(dict.fromkeys(table["channel"]))
    fig = Figure(figsize=(10, 2.6 * max(1, len(channels)) + 0.4))
    if not channels:
        return _empty(fig, "no intensity statistics in the catalog")
    axes = np.atleast_1d(fig.subplots(len(channels), 1, squeeze=False)[:, 0])
    for ax, ch in zip(axes, channels):
        sub = table[table["channel"] == ch].sort_values("mean").reset_index(drop=True)
        x = np.arange(len(sub))
        bad = sub["outlier"] != ""
        colors = np.where(bad, "tab:red", "tab:blue")
        ax.vlines(x, sub["p005"], sub["p995"], colors=colors, alpha=0.6, lw=2)
        ax.scatter(x, sub["mean"], c=colors, s=14, zorder=3)
        for i in np.flatnonzero(bad.to_numpy())[:12]:
            ax.annotate(sub.loc[i, "case_id"], (x[i], sub.loc[i, "p995"]), fontsize=7, rotation=45,
                        xytext=(2, 4), textcoords="offset points", color="tab:red")
        ax.set_ylabel(str(ch))
        ax.set_xlim(-1, max(len(sub), 2))
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("volumes, sorted by mean (bar: p0.5 - p99.5, dot: mean; red: outlier)")
    fig.suptitle("intensities before normalization (source units, HU for CT)", fontsize=10)
    margins(fig, left=0.85, top=0.4, bottom=0.5, hspace=0.25)
    return fig


def label_fraction_table(rows: pd.DataFrame, labels: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (labelled volume, foreground class): ``case_id, value, name, voxels, fraction`` where
    fraction = voxels of that class / voxels of the stored grid (``label_voxels`` / prod(``shape``)); a class
    of the domain absent from a volume has 0 voxels."""
    recs = []
    n_classes = len(labels)
    for _, r in rows.iterrows():
        values, voxels, shape = list(r["label_values"]), list(r["label_voxels"]), list(r["shape"])
        if not r.get("has_label", bool(values)) or not values or not shape:
            continue
        total = float(np.prod(shape))
        counts = dict(zip(values, voxels))
        for v in sorted(set(range(1, n_classes)) | {v for v in values if v != 0}):
            name = labels[v] if v < n_classes and labels[v] else f"class {v}"
            n = int(counts.get(v, 0))
            recs.append({"case_id": r["case_id"], "value": int(v), "name": name, "voxels": n,
                         "fraction": n / total if total else float("nan")})
    return pd.DataFrame(recs, columns=["case_id", "value", "name", "voxels", "fraction"])


def label_fraction_figure(rows: pd.DataFrame, labels: Sequence[str] = ()) -> Figure:
    """Per foreground class, the share of each labelled volume's voxels it covers (log scale, one dot per
    volume, a box over them); the tick says in how many volumes the class is absent."""
    table = label_fraction_table(rows, labels)
    fig = Figure(figsize=(max(4.5, 1.6 * max(1, table["value"].nunique()) + 2), 3.4))
    if table.empty:
        return _empty(fig, "no labelled volumes")
    ax = fig.add_subplot()
    ticks = []
    rng = np.random.default_rng(0)  # jitter only: the figure is identical on every run
    for i, (value, sub) in enumerate(table.groupby("value", sort=True)):
        frac = sub["fraction"].to_numpy(float)
        present = frac[frac > 0]
        if len(present):
            ax.boxplot(present, positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(present)), present, s=12, alpha=0.6, color="tab:purple")
        absent = int((frac == 0).sum())
        ticks.append(f"{value}: {sub['name'].iloc[0]}" + (f"\n(absent in {absent})" if absent else ""))
    ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
    ax.set_yscale("log")
    present = table["fraction"][table["fraction"] > 0]
    if len(present):  # whole decades: tick labels 10^-k only, never the long minor labels of a narrow range
        lo, hi = np.floor(np.log10(present.min())), np.ceil(np.log10(present.max()))
        ax.set_ylim(10 ** lo, 10 ** max(hi, lo + 1))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("fraction of the volume's voxels")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"label voxel fractions per class ({table['case_id'].nunique()} labelled volumes)", fontsize=10)
    margins(fig, bottom=0.7, top=0.35)
    return fig
