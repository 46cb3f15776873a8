"""Mid-slice montages of stored cases: three orthogonal planes with the label overlaid, read from the store.

The planes come from the stored arrays (``STORE/<domain>/<case>/image`` (C, Z, Y, X) and ``label`` (Z, Y, X)),
so a montage shows exactly what training sees, in the stored LPS orientation: z towards the head, y towards the
back, x towards the patient's left. Only the three planes are read (just the chunks they cross), never whole
volumes, through the store's checked reader (:mod:`catalog.case_arrays`), so a damaged or crafted case is refused
in one line instead of read. The planes pass through the label's centroid, estimated from the case's stored
foreground samples (``foreground``: up to 1,000 random voxels per class); when that point lies outside the
structure (two lungs, two hippocampus parts, a crescent) they pass through the nearest sample instead, so that each
plane cuts the structure. Unlabelled cases (and LIDC crops, centred on their nodule) use the volume centre.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PLANES = ("axial (z)", "coronal (y)", "sagittal (x)")
# Label colours by class value (1 is the first foreground class); cycled for larger label sets.
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class CasePlanes:
    """The three planes of one case through ``centre`` (z, y, x voxel indices of the stored grid).

    ``image``: axial (Y, X) = image[channel, z], coronal (Z, X) = image[channel, :, y], sagittal (Z, Y) =
    image[channel, :, :, x], float32, normalized units as stored; ``label``: the same planes of the label, or
    None for an unlabelled case. ``spacing``: stored (z, y, x) voxel size in mm; ``centre_from``: "label
    centroid" or "volume centre".
    """

    store_path: str
    centre: tuple[int, int, int]
    centre_from: str
    spacing: tuple[float, float, float]
    image: tuple[np.ndarray, np.ndarray, np.ndarray]
    label: tuple[np.ndarray, np.ndarray, np.ndarray] | None


def label_centre(foreground: np.ndarray, shape: Sequence[int], class_voxels: Mapping[int, int] | None = None,
                 inside: Callable[[tuple[int, int, int]], bool] | None = None) -> tuple[int, int, int] | None:
    """The label's centroid (z, y, x voxel indices) estimated from foreground samples ``(N, 4)`` rows (class, z, y,
    x); None without samples. Each class's samples weigh by its voxel count (``class_voxels``, e.g. the catalog's
    ``label_voxels``; equal weights without it), since samples are capped per class. When the rounded centroid is
    not labelled (``inside`` says so; unknown without it) the nearest sample is returned instead, so that planes
    through it cut the structure."""
    if foreground is None or len(foreground) == 0:
        return None
    fg = np.asarray(foreground, dtype=np.int64)
    classes, counts = np.unique(fg[:, 0], return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist()))
    weights = np.array([(class_voxels or {}).get(int(c), per_class[int(c)]) / per_class[int(c)] for c in fg[:, 0]],
                       dtype=float)
    pts = fg[:, 1:].astype(float)
    centroid = (pts * weights[:, None]).sum(axis=0) / weights.sum()
    at = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(centroid, shape))
    if inside is not None and inside(at):  # type: ignore[arg-type]
        return at  # type: ignore[return-value]
    nearest = fg[np.argmin(((pts - centroid) ** 2).sum(axis=1)), 1:]
    return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(nearest, shape))  # type: ignore[return-value]


def read_planes(store: str, store_path: str, *, channel: int = 0, centre: str = "label",
                class_voxels: Mapping[int, int] | None = None) -> CasePlanes:
    """Read the three orthogonal planes of one stored case (see :class:`CasePlanes`).

    ``centre``: "label" (the label's centroid, see :func:`label_centre`; the volume centre when the case has no
    label or no foreground) or "volume". The arrays are read through :func:`catalog.case_arrays.case_array`: their
    metadata must agree with the case's catalog row and their chunk files pass the store's checks (a damaged case
    raises :class:`catalog.chunk_read.DamagedStoreError`, one line).
    """
    from catalog.case_arrays import case_array, case_geometry
    from catalog.store_format import FOREGROUND, IMAGE, LABEL, node_meta

    shape, n_channels = case_geometry(store, store_path)
    geometry = {"shape": shape, "n_channels": n_channels}
    image = case_array(store, store_path, IMAGE, **geometry)
    has_label = node_meta(store, store_path, LABEL) is not None
    lab_r = case_array(store, store_path, LABEL, **geometry) if has_label else None
    at = None
    if centre == "label" and lab_r is not None and node_meta(store, store_path, FOREGROUND) is not None:
        fg = case_array(store, store_path, FOREGROUND, **geometry).read_all()
        at = label_centre(fg, shape, class_voxels, inside=lambda p: bool(_plane(lab_r, p, None) > 0))
    centre_from = "label centroid" if at is not None else "volume centre"
    if at is None:
        at = tuple(n // 2 for n in shape)
    z, y, x = at
    ch = min(max(channel, 0), n_channels - 1)
    img = tuple(_plane(image, (z, y, x), axis, ch) for axis in range(3))
    lab = None
    if lab_r is not None:
        lab = tuple(_plane(lab_r, (z, y, x), axis) for axis in range(3))
    spacing = tuple(float(s) for s in
                    (node_meta(store, store_path, required=True).get("attributes") or {}).get("spacing",
                                                                                               (1.0, 1.0, 1.0)))
    return CasePlanes(store_path=store_path, centre=(int(z), int(y), int(x)), centre_from=centre_from,
                      spacing=spacing,  # type: ignore[arg-type]
                      image=tuple(np.asarray(p, dtype=np.float32) for p in img),  # type: ignore[arg-type]
                      label=lab)  # type: ignore[arg-type]


def _plane(reader, at: Sequence[int], axis: int | None, channel: int | None = None) -> np.ndarray:
    """The plane through ``at`` (z, y, x) normal to ``axis`` (0 axial, 1 coronal, 2 sagittal; None: the one voxel
    at ``at``) of a (Z, Y, X) array, or of ``channel`` of a (C, Z, Y, X) one."""
    starts = [int(a) if axis is None or i == axis else 0 for i, a in enumerate(at)]
    stops = [s + 1 if axis is None or i == axis else n for i, (s, n) in enumerate(zip(starts, reader.shape[-3:]))]
    if channel is None:
        box = reader.read(starts, stops)
    else:
        box = reader.read([channel, *starts], [channel + 1, *stops])[0]
    return box.reshape(()) if axis is None else np.take(box, 0, axis=axis)


def overlay_rgba(label_plane: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The RGBA overlay drawn over an image plane: (H, W, 4) float, each class in its :data:`PALETTE` colour,
    fully transparent where the label is 0. Its opaque pixels are exactly ``label_plane > 0``."""
    from matplotlib.colors import to_rgb

    lab = np.asarray(label_plane)
    out = np.zeros((*lab.shape, 4), dtype=np.float32)
    for value in np.unique(lab):
        if value == 0:
            continue
        out[lab == value] = (*to_rgb(PALETTE[(int(value) - 1) % len(PALETTE)]), alpha)
    return out


def _display_range(planes: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([p.ravel() for p in planes])
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def draw_case(axes: Sequence, planes: CasePlanes, title: str = "") -> None:
    """Draw a case's three planes on three axes: grey image, label overlay (:func:`overlay_rgba`) on the same
    pixel grid, crosshair at the centre. Planes holding z are drawn with z upwards (head at the top); pixel
    aspect follows the stored spacing."""
    sz, sy, sx = planes.spacing
    z, y, x = planes.centre
    vmin, vmax = _display_range(planes.image)
    # (row spacing / column spacing, origin, crosshair (col, row)) per plane
    layout = ((sy / sx, "upper", (x, y)), (sz / sx, "lower", (x, z)), (sz / sy, "lower", (y, z)))
    for i, (ax, (aspect, origin, (cx, cy))) in enumerate(zip(axes, layout)):
        ax.imshow(planes.image[i], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, origin=origin,
                  interpolation="nearest")
        if planes.label is not None:
            ax.imshow(overlay_rgba(planes.label[i]), aspect=aspect, origin=origin, interpolation="nearest")
        ax.axhline(cy, color="cyan", lw=0.4, alpha=0.5)
        ax.axvline(cx, color="cyan", lw=0.4, alpha=0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title((title + "\n" if title and i == 0 else "") + f"{PLANES[i]} = {planes.centre[i]}", fontsize=8,
                     loc="left")


def montage_figure(cases: Sequence[tuple[CasePlanes, str]], label_names: Sequence[str] = ()) -> Figure:
    """One row per case (its three planes, titled with the given text), a legend of the label colours."""
    row_h, title_h, legend_h = 2.5, 0.5, 0.35  # inches; fixed, as in figures.margins (no constrained layout)
    height = (row_h + title_h) * max(1, len(cases)) + legend_h
    fig = Figure(figsize=(9.5, height))
    if not cases:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no case to show", ha="center", va="center", color="0.4")
        ax.set_axis_off()
        return fig
    grid = fig.subplots(len(cases), 3, squeeze=False, gridspec_kw={
        "left": 0.01, "right": 0.99, "top": 1 - title_h / height, "bottom": legend_h / height,
        "wspace": 0.04, "hspace": title_h / row_h})
    for row, (planes, title) in zip(grid, cases):
        draw_case(row, planes, title)
    handles = [Patch(color=PALETTE[(v - 1) % len(PALETTE)], label=f"{v}: {name or 'class'}")
               for v, name in enumerate(label_names) if v > 0]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    return fig


def sample_cases(rows: pd.DataFrame, n: int, seed: int, key: str = "") -> pd.DataFrame:
    """Up to ``n`` cases drawn without replacement, labelled ones first, reproducibly from ``seed`` and ``key``
    (the domain name, so each domain gets its own draw); returned sorted by case id."""
    if n <= 0 or rows.empty:
        return rows.iloc[:0]
    rng = np.random.default_rng([seed, *key.encode()])
    labelled = rows["has_label"].to_numpy(bool) if "has_label" in rows else np.ones(len(rows), bool)
    order = np.concatenate([rng.permutation(np.flatnonzero(labelled)), rng.permutation(np.flatnonzero(~labelled))])
    return rows.iloc[np.sort(order[:n])].sort_values("case_id")
