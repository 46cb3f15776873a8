"""The paper's comparison table (task x encoder x initialisation -> metric) from finished fine-tuning runs.

Run folder contract (written by the fine-tuning recipes and ``med3d-train evaluate``):

- ``RUN/finetune.json`` (required; marks a fine-tuning run): ``{"task": a task name ("liver", "lung", "nodule", "seg", ...),
  "encoder": a registry name ("resnet10", "resnet50", "resenc_m", ...), "init": "scratch" | PATH, "init_kind": "scratch" | "kinetics" |
  "medicalnet" | "med3d", "metric": "dice" | "accuracy", ...}``.
- ``RUN/metrics.jsonl`` (``RUN/<last stage>/metrics.jsonl`` when finetune.json lists ``stages`` other than
  ``main``, as the liver's ``coarse``, ``fine``): JSON lines ``{"kind": "train" | "val", "step": int, ...}``; ``"val"`` rows carry the
  task's main metric under ``"metric"`` (a fraction in [0, 1], higher is better; ``null`` when undefined) and
  ``"split"``. When val rows of several splits exist, the ``"val"`` split makes the curve.
- ``RUN/eval/<split>/summary.json``: ``{"task", "split": "test" | "val", "metric_name", "metric": float, ...}``;
  the ``test`` summary is used when present, else ``val``.

Metrics are fractions and shown as percent with 2 decimals, as the paper does. "Steps to reach" a cell is the
first step at which the run's val metric is >= the last val metric of the row's scratch run (the from-scratch
run's final quality): how much sooner a pretrained encoder gets there.

>>> runs = collect_runs(["runs/lung_r10_scratch", "runs/lung_r10_med3d"])
>>> compare_table(runs)          # index (task, encoder), columns scratch / Kinetics / MedicalNet / Med3D (ours)
>>> write_compare(runs, "runs/compare")      # compare.md, compare.csv
"""
from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from runlog.tables import spreadsheet_safe

__all__ = ["INIT_KINDS", "PAPER_REFERENCE", "collect_runs", "compare_cells", "compare_table", "encoder_label",
           "missing_runs", "write_compare"]

INIT_KINDS: dict[str, str] = {"scratch": "scratch", "kinetics": "Kinetics", "medicalnet": "MedicalNet",
                              "med3d": "Med3D (ours)", "nnunet": "nnU-Net"}
"""``init_kind`` -> column name of the table, in column order."""

PAPER_REFERENCE = """\
Reference figures (from scratch -> Med3D, MedicalNet README; the paper's splits and full datasets):

| task | metric | depth | scratch | Med3D |
| --- | --- | --- | --- | --- |
| lung segmentation (VISCERAL) | Dice | 10 | 71.30 | 87.16 |
| lung segmentation (VISCERAL) | Dice | 50 | 71.75 | 93.31 |
| nodule classification (LIDC-IDRI) | accuracy | 10 | 79.80 | 86.87 |
| nodule classification (LIDC-IDRI) | accuracy | 50 | 84.85 | 89.90 |

LiTS liver segmentation: Dice 94.6 (paper abstract; ResNet-152 encoder in a 3D DenseASPP).
"""

_RUN_COLUMNS = ["run", "task", "encoder", "depth", "init_kind", "metric_name", "metric", "split", "final_step",
                "curve", "note", "mtime", "store"]


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: cannot read {path.name}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{folder}: {path.name} must hold a JSON object, got {type(data).__name__}")
    return data


def _depth(encoder: str) -> int | None:
    """A ResNet's depth from its registry name (``resnet50`` -> 50); None for other encoders."""
    found = re.fullmatch(r"resnet(\d+)", encoder)
    return int(found.group(1)) if found else None


def encoder_label(encoder: str) -> str:
    """How the table names an encoder: ``ResNet-50`` for ``resnet50``, the registry name otherwise."""
    depth = _depth(encoder)
    return f"ResNet-{depth}" if depth is not None else encoder


def _read_curve(path: Path, folder: Path) -> tuple[list[tuple[int, float]], int | None]:
    """(step, val metric) pairs sorted by step, and the last step of any record (None without records)."""
    if not path.exists():
        return [], None
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{folder}: metrics.jsonl line {n} is not JSON: {e}") from e
    final = max((int(r["step"]) for r in rows if "step" in r), default=None)
    val = [r for r in rows if r.get("kind") == "val" and r.get("metric") is not None and "step" in r]
    if len({r.get("split") for r in val}) > 1:
        val = [r for r in val if r.get("split") == "val"]
    points = {int(r["step"]): float(r["metric"]) for r in val if math.isfinite(float(r["metric"]))}
    return sorted(points.items()), final


def _read_run(folder: Path) -> dict[str, Any]:
    spec_path = folder / "finetune.json"
    if not spec_path.is_file():
        raise ValueError(f"{folder} is not a fine-tuning run: it has no finetune.json (pass the folder given to "
                         f"`med3d-train finetune --out`)")
    spec = _read_json(spec_path, folder)
    missing = [k for k in ("task", "encoder", "init_kind", "metric") if k not in spec]
    if missing:
        raise ValueError(f"{folder}: finetune.json lacks {', '.join(missing)}")
    if spec["init_kind"] not in INIT_KINDS:
        raise ValueError(f"{folder}: init_kind {spec['init_kind']!r} is not one of {', '.join(INIT_KINDS)}")
    # A run of several stages (liver: coarse, fine) is measured by its last stage's curve.
    stages = [s for s in spec.get("stages", []) if s != "main"]
    metrics_path = folder / stages[-1] / "metrics.jsonl" if stages else folder / "metrics.jsonl"
    curve, final_step = _read_curve(metrics_path, folder)
    notes, metric, split, metric_name = [], math.nan, None, str(spec["metric"])
    files = [spec_path, metrics_path]
    # The run's own evaluation split first (liver: val; LiTS test volumes have no labels, so an eval/test
    # folder there holds predictions, not a metric), then test, then val for runs that do not record one.
    order = [s for s in dict.fromkeys([spec.get("eval_split"), "test", "val"]) if s]
    for candidate in order:
        summary_path = folder / "eval" / candidate / "summary.json"
        if not summary_path.is_file():
            continue
        summary = _read_json(summary_path, folder)
        files.append(summary_path)
        if summary.get("metric") is None:
            notes.append(f"eval/{candidate}/summary.json has no metric")
            continue
        metric = float(summary["metric"])
        split = str(summary.get("split", candidate))
        metric_name = str(summary.get("metric_name", metric_name))
        break
    else:
        notes.append(f"no evaluation yet (run `med3d-train evaluate RUN STORE --split {order[0]}`)")
    if not curve:
        notes.append("no val metric in metrics.jsonl")
    return {"run": str(folder), "task": str(spec["task"]), "encoder": str(spec["encoder"]),
            "depth": _depth(str(spec["encoder"])), "init_kind": spec["init_kind"], "metric_name": metric_name,
            "metric": metric, "split": split, "final_step": final_step, "curve": curve, "note": "; ".join(notes),
            "mtime": max(f.stat().st_mtime for f in files if f.exists()), "store": str(spec.get("store") or "STORE")}


def collect_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per fine-tuning run folder (see the module docstring for the folder contract).

    Columns: ``run`` (folder), ``task``, ``encoder`` (registry name), ``depth`` (Int64: a ResNet's depth, NA for
    other encoders), ``init_kind``,
    ``metric_name``, ``metric`` (fraction from the eval summary; NaN without one), ``split`` (of that summary;
    NaN without one), ``final_step`` (last step logged, Int64, NA without metrics), ``curve`` (list of
    (step, val metric)), ``note`` (why a value is missing, "" when nothing is), ``mtime`` (Unix seconds, newest
    of the run's files), ``store`` (the store it was trained on, from finetune.json; "STORE" when not recorded).

    Raises ValueError naming the folder when it is not a fine-tuning run or its files are malformed.
    """
    rows = [_read_run(Path(p)) for p in paths]
    df = pd.DataFrame(rows, columns=_RUN_COLUMNS)
    df["depth"] = df["depth"].astype("Int64")
    df["metric"] = df["metric"].astype("float64")
    df["final_step"] = df["final_step"].astype("Int64")
    return df


def _steps_to_reach(curve: Sequence[tuple[int, float]], target: float | None) -> int | None:
    # A scratch run that ended at 0 (or learned nothing measurable) sets no target worth reaching: every run
    # would "reach" it at its first validation.
    if target is None or not target > 0:
        return None
    return next((int(step) for step, value in curve if value >= target), None)


def compare_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per filled cell of the table (task, encoder, init_kind), sorted by task, encoder and column order.

    Columns: ``task``, ``encoder``, ``depth`` (Int64, NA for non-ResNets), ``init_kind``, ``column`` (display
    name), ``metric_name``, ``metric``
    (fraction), ``split``, ``steps_to_reach`` (Int64; NA when never reached or without a scratch run),
    ``scratch_target`` (the scratch run's last val metric; NaN without one), ``final_step``, ``run``, ``n_runs``
    (runs that shared the cell). When several runs share a cell the last-modified one is kept, with a warning.
    """
    kept = []
    for (task, encoder, kind), group in runs.groupby(["task", "encoder", "init_kind"], sort=False):
        group = group.sort_values("mtime", kind="stable")
        if len(group) > 1:
            warnings.warn(f"{len(group)} runs for {task} / {encoder} / {kind}: using the last modified, "
                          f"{group['run'].iloc[-1]} (ignoring {', '.join(group['run'].iloc[:-1])})", stacklevel=2)
        kept.append(group.iloc[-1].to_dict() | {"n_runs": len(group)})
    order = list(INIT_KINDS)
    cells = []
    for run in kept:
        scratch = next((r for r in kept if r["task"] == run["task"] and r["encoder"] == run["encoder"]
                        and r["init_kind"] == "scratch"), None)
        target = scratch["curve"][-1][1] if scratch is not None and scratch["curve"] else None
        cells.append({"task": run["task"], "encoder": run["encoder"], "depth": run["depth"],
                      "init_kind": run["init_kind"],
                      "column": INIT_KINDS[run["init_kind"]], "metric_name": run["metric_name"],
                      "metric": run["metric"], "split": run["split"],
                      "steps_to_reach": _steps_to_reach(run["curve"], target),
                      "scratch_target": math.nan if target is None else target, "final_step": run["final_step"],
                      "run": run["run"], "n_runs": run["n_runs"]})
    columns = ["task", "encoder", "depth", "init_kind", "column", "metric_name", "metric", "split", "steps_to_reach",
               "scratch_target", "final_step", "run", "n_runs"]
    df = pd.DataFrame(cells, columns=columns)
    df["order"] = df["init_kind"].map(order.index)
    df["sort_depth"] = df["depth"].map(lambda d: -1 if pd.isna(d) else int(d))
    df = df.sort_values(["task", "sort_depth", "encoder", "order"], kind="stable")
    df = df.drop(columns=["order", "sort_depth"]).reset_index(drop=True)
    df["depth"] = df["depth"].astype("Int64")
    df["metric"] = df["metric"].astype("float64")
    df["scratch_target"] = df["scratch_target"].astype("float64")
    for col in ("steps_to_reach", "final_step"):
        df[col] = df[col].astype("Int64")
    return df


def _format_cell(metric: float, steps: Any, target: float) -> str:
    value = "n/a" if pd.isna(metric) else f"{100 * metric:.2f}"
    if pd.isna(target) or not target > 0:  # no scratch run's final val metric to reach: nothing to count
        return value
    return f"{value} (step {'-' if pd.isna(steps) else int(steps)})"


def compare_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's table from :func:`collect_runs` output: index (task, encoder), columns "scratch", "Kinetics",
    "MedicalNet", "Med3D (ours)"; each cell "87.16 (step 300)": the metric in percent (2 decimals; "n/a" before
    evaluation) and the steps to reach the scratch run's final val metric ("-" if never), left out when the row
    has no scratch run with a val metric; "" where no run exists (:func:`missing_runs` says how to fill it)."""
    return _table(compare_cells(runs))


def _table(cells: pd.DataFrame) -> pd.DataFrame:
    index = pd.MultiIndex.from_frame(cells[["task", "encoder"]].drop_duplicates(), names=["task", "encoder"])
    # The nnU-Net column (ResEnc encoders fine-tuned from nnU-Net's own checkpoints) only where such a run exists.
    shown = [v for k, v in INIT_KINDS.items() if k != "nnunet" or (cells["init_kind"] == "nnunet").any()]
    table = pd.DataFrame("", index=index, columns=shown)
    for row in cells.itertuples(index=False):
        table.loc[(row.task, row.encoder), row.column] = _format_cell(row.metric, row.steps_to_reach,
                                                                    row.scratch_target)
    return table


def _markdown(table: pd.DataFrame, cells: pd.DataFrame, runs: pd.DataFrame) -> str:
    header = ["task", "encoder", "metric", *table.columns]
    lines = ["# Transfer comparison", "", "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header)
             + " |"]
    for (task, encoder), row in table.iterrows():
        names = cells.loc[(cells["task"] == task) & (cells["encoder"] == encoder), "metric_name"].unique()
        lines.append("| " + " | ".join([str(task), encoder_label(encoder), "/".join(names), *row.tolist()]) + " |")
    splits = sorted({str(s) for s in cells["split"].dropna()})
    lines += ["", f"Metric in percent on the {'/'.join(splits) or 'evaluation'} split; in brackets, the first step "
              "at which the run's val metric reached the scratch run's final val metric (\"-\": never; no "
              "brackets: the row has no scratch run to reach)."]
    notes = [f"- {r.run}: {r.note}" for r in runs.itertuples(index=False) if r.note]
    duplicates = [f"- {c.task} / {encoder_label(c.encoder)} / {c.column}: {c.n_runs} runs, kept {c.run} (last modified)"
                  for c in cells.itertuples(index=False) if c.n_runs > 1]
    if notes or duplicates:
        lines += ["", "Notes:", "", *notes, *duplicates]
    fill = missing_runs(runs)
    if fill:
        lines += ["", "Empty columns:", "", "```", *fill, "```"]
    return "\n".join(lines + ["", PAPER_REFERENCE])


_INIT_HINT = {"scratch": "scratch", "kinetics": "resnet-{depth}-kinetics.pth",
              "medicalnet": "resnet_{depth}.pth", "med3d": "PRETRAIN_RUN", "nnunet": "checkpoint_final.pth"}
"""What ``--init`` takes for each column, as a placeholder to replace: a Kinetics 3D-ResNet file, MedicalNet's
released file of that depth, a ``med3d-train pretrain`` run folder of ours."""


def missing_runs(runs: pd.DataFrame) -> list[str]:
    """For each (task, encoder) row of the table with empty columns: a line naming them, then the commands that
    fill them (fine-tune beside the row's runs on the same store, evaluate, compare again). Empty when every
    row is full; else the last line compares every run, old and new. ``runs`` is :func:`collect_runs` output."""
    lines: list[str] = []
    every = [str(r) for r in runs["run"]]
    for (task, encoder), group in runs.groupby(["task", "encoder"], sort=False):
        depth = _depth(str(encoder))
        # Kinetics and MedicalNet released ResNets only: other encoders have a scratch and a Med3D column to fill.
        # nnU-Net checkpoints hold ResEnc encoders only: no ResNet row asks for one.
        kinds = {k: v for k, v in INIT_KINDS.items() if k in (("scratch", "kinetics", "medicalnet", "med3d")
                                                               if depth is not None else ("scratch", "med3d"))}
        absent = [kind for kind in kinds if kind not in set(group["init_kind"])]
        if not absent:
            continue
        first = group.iloc[0]
        folder, store = Path(first["run"]).parent, first["store"]
        tag = f"r{depth}" if depth is not None else str(encoder)
        new = {kind: str(folder / f"{task}_{tag}_{kind}") for kind in absent}
        lines.append(f"# {task} / {encoder_label(str(encoder))}: no {', '.join(INIT_KINDS[k] for k in absent)} run; "
                     "to fill "
                     f"{'them' if len(absent) > 1 else 'it'} (replace the --init placeholders with your files):")
        for kind, out in new.items():
            depth_opt = "" if kind != "scratch" else f" --depth {depth}" if depth is not None else \
                f" --encoder {encoder}"
            init = _INIT_HINT[kind].format(depth=depth)
            lines.append(f"med3d-train finetune {task} {store} --out {out} --init {init}{depth_opt}")
            lines.append(f"med3d-train evaluate {out} {store}")
        every += new.values()
    if lines:
        lines.append(f"med3d-train compare {' '.join(every)}")
    return lines


def write_compare(runs: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``OUT_DIR/compare.md`` (the table, notes and the paper's reference figures) and
    ``OUT_DIR/compare.csv`` (:func:`compare_cells`: one row per cell, numeric metric and steps). ``runs`` is
    :func:`collect_runs` output. Returns (md_path, csv_path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = compare_cells(runs)
    table = _table(cells)
    md_path, csv_path = out / "compare.md", out / "compare.csv"
    md_path.write_text(_markdown(table, cells, runs))
    spreadsheet_safe(cells).to_csv(csv_path, index=False)
    return md_path, csv_path
