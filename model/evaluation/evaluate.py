"""``med3d-train evaluate``: a fine-tuned run measured on a split of a store, with predictions written.

:func:`evaluate` reads the run, checks the store and the split, and asks the run's task (a
:class:`~model.task_api.Task` the caller gives; the command line finds it by the run's name for it) to measure:
:meth:`~model.task_api.Task.evaluate` returns the summary and the per-case table, which are written here. What
segmentation tasks share is here too: :func:`segment_cases` segments every case on the stored grid, pastes the
label map back onto its source file's grid (:func:`volume.original_grid.to_original_grid`) and writes it under
``pred/`` (named by the task: LiTS test volumes as a LiTS submission); :func:`ground_truth` reads the source label;
:func:`evaluate_binary` measures one foreground class with the LiTS set (Dice, VOE, RVD, ASSD, MSD in mm) per
case and the global Dice. Each task's module says what its summary holds (seg: Dice, HD95, ASSD per class;
nodule, classify: accuracy, AUC, the confusion matrix).

Output in ``RUN/eval/<split>/``: ``cases.csv``, ``summary.json``, and ``pred/`` or ``predictions.csv``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from catalog.store_format import CaseAttrs
from model.evaluation.inference import Segmenter
from model.evaluation.metrics import _json_safe
from model.task_api import Task
from runlog.tables import spreadsheet_safe

__all__ = ["evaluate", "evaluate_binary", "ground_truth", "segment_cases", "segmenter_for_run"]


def segmenter_for_run(run: str | Path, *, task: Task, device: str | torch.device = "cpu", amp: bool = False,
                      batch: int = 2, overlap: float | None = None) -> Segmenter:
    """The segmenter of a finished segmentation run of ``task`` (the liver chain, a sliding-window network)."""
    from model.run_folder import read_run

    spec = read_run(run, task)
    return task.segmenter(run, spec, device=device, amp=amp, batch=batch, overlap=overlap)


def source_files(store: str, row: Any, attrs: CaseAttrs) -> None:
    """Check that the source label files of a labelled case (catalog ``source_label``, or the case attrs'
    ``label_parts``) can be opened from here, before anything is written; a ValueError naming the store's catalog,
    the column and the fix otherwise. A store built before source paths were recorded absolute holds them as
    given (``raw/lits/segmentation-0.nii``): relative to the folder it was built in, which it does not record."""
    if not row.has_label:
        return
    paths = [("source_label", p) for p in str(row.source_label or "").split(";") if p]
    if attrs.label_parts:
        paths = [("label_parts (case attrs)", str(p)) for p, _ in attrs.label_parts]
    where = f"{store.rstrip('/')}/catalog.parquet"
    for column, path in paths:
        if os.path.exists(path):
            continue
        if not os.path.isabs(path):
            raise ValueError(f"{where}: {column} of {row.case_id} is the relative path {path!r}, not found from "
                             f"{os.getcwd()}: the store was built before source paths were recorded absolute; "
                             "rebuild it (the same med3d-prep build-* command, from the folder it was built in: it "
                             "converts nothing again and records absolute paths), or run this command from that "
                             "folder")
        raise ValueError(f"{where}: {column} of {row.case_id}: {path} does not exist (the source files moved or "
                         "were deleted); evaluate measures against them: put them back, or rebuild the store from "
                         "where they are now")


def ground_truth(row: Any, attrs: CaseAttrs) -> sitk.Image | None:
    """A case's source label on its source grid (composed from its masks where it has several: VISCERAL), or
    None when the case has no label."""
    from volume.labels import compose_masks

    if attrs.label_parts:
        return compose_masks(attrs.label_parts, sitk.ReadImage)[0]
    if row.source_label:
        return sitk.ReadImage(str(row.source_label))
    return None


def evaluate(run: str | Path, store: str, *, task: Task, split: str | None = None,
             segmenter: Segmenter | None = None, device: str | torch.device = "cpu", amp: bool = False,
             limit: int | None = None, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``run`` (a run of ``task``) on ``split`` of ``store`` (default: the run's evaluation split) and
    write ``RUN/eval/<split>/``; returns the summary. ``segmenter`` replaces the run's networks (tests use an
    oracle to check the geometry alone). A store of the wrong kind for the run's task is refused before anything
    is written."""
    from catalog import load_catalog
    from catalog.names import path_component
    from model.data.store_index import SPLITS
    from model.run_folder import RUN_FILE, read_run, stage_steps

    spec = read_run(run, task)
    # The split names the output folder: from finetune.json (a file anyone can hand over) it must not steer
    # the writes elsewhere (``../../x``, an absolute path), so it is checked before anything else.
    source, what = (Path(run) / RUN_FILE, "eval_split") if split is None else ("evaluate", "split")
    split = spec.get("eval_split") if split is None else split
    if split not in SPLITS:
        raise ValueError(f"{source}: {what} {split!r} is not one of {', '.join(SPLITS)}; give --split "
                         f"{'|'.join(SPLITS)}")
    out = Path(run) / "eval" / path_component(split, what, source)
    task.check_store(store, spec)
    rows = task.eval_rows(run, store, spec, split)
    if limit:
        rows = rows.head(limit)
    if rows.empty:
        raise ValueError(f"{store}: no ok case in split {split!r}; splits there: "
                         f"{sorted(set(load_catalog(store)['split']))}")
    steps = None if segmenter is not None else stage_steps(run, spec, log)
    summary, table = task.evaluate(run, spec, store, split, rows, out, segmenter=segmenter, device=device, amp=amp,
                                   progress=progress)
    if steps is not None:
        summary["checkpoint_steps"] = steps  # which weights were measured: compare pairs them with the curves
    out.mkdir(parents=True, exist_ok=True)
    spreadsheet_safe(table).to_csv(out / "cases.csv", index=False)
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    written = ["cases.csv", "summary.json"] + [n for n in ("predictions.csv", "pred/") if (out / n).exists()]
    log(f"wrote {out}/: {', '.join(written)}")
    return summary


def segment_cases(task: Task, store: str, split: str, rows: pd.DataFrame, seg: Segmenter, out: Path,
                  progress: bool) -> Iterator[tuple[Any, CaseAttrs, sitk.Image, sitk.Image | None, Path]]:
    """Segment every case of ``rows`` on the stored grid, paste the label map onto the source file's grid and
    write it to ``out/pred/<task.pred_name>``; yields (row, stored attrs, prediction, source label or None,
    written path). Every path is checked to stay inside ``out/pred``. A segmenter with ``in_chans`` above 1 is
    given every stored channel."""
    from tqdm.auto import tqdm

    from model.data.patches import read_volume
    from model.run_folder import inside
    from volume.original_grid import to_original_grid

    folder = out / "pred"
    names = {row.case_id: inside(folder, task.pred_name(row.case_id, bool(row.has_label)), what="case_id",
                                 source=f"the catalog of {store}")
             for row in rows.itertuples(index=False)}  # all checked before the first write
    for row in rows.itertuples(index=False):
        source_files(store, row, CaseAttrs.read(store, row.store_path))
    folder.mkdir(parents=True, exist_ok=True)
    n_chans = getattr(seg, "in_chans", 1)
    for row in tqdm(list(rows.itertuples(index=False)), desc=f"evaluate {split}", unit="case",
                    disable=not progress):
        attrs = CaseAttrs.read(store, row.store_path)
        image, _ = read_volume(store, row.store_path, None if n_chans > 1 else 0)
        if n_chans > 1 and image.shape[0] != n_chans:
            raise ValueError(f"{store}/{row.store_path}: {image.shape[0]} channel(s); the run reads {n_chans} "
                             "(trained with --channels all on another kind of store)")
        label = seg(image)
        if label.shape != image.shape[-3:]:
            raise ValueError(f"{row.store_path}: the segmenter returned {label.shape} for an image of {image.shape}")
        pred = to_original_grid(label.astype(np.uint8), attrs)
        truth = ground_truth(row, attrs)
        path = names[row.case_id]
        sitk.WriteImage(pred, str(path))
        if truth is not None and tuple(truth.GetSize()) != tuple(pred.GetSize()):
            raise ValueError(f"{row.source_label}: label grid {truth.GetSize()} differs from its image's "
                             f"{pred.GetSize()}")
        yield row, attrs, pred, truth, path


def evaluate_binary(task: Task, store: str, split: str, rows: pd.DataFrame, seg: Segmenter, out: Path,
                    progress: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    """The LiTS set (Dice, VOE, RVD, ASSD, MSD in mm) of foreground (any label > 0) per case on the source grid,
    their means and the global Dice in the summary."""
    from model.evaluation.seg_metrics import global_dice, lits_metrics, overlap_counts

    records, counts = [], []
    for row, attrs, pred, truth, path in segment_cases(task, store, split, rows, seg, out, progress):
        rec: dict[str, Any] = {"case_id": row.case_id, "source_image": row.source_image,
                               "modality": row.source_modality or row.modality, "prediction": str(path)}
        if truth is not None:
            p = sitk.GetArrayViewFromImage(pred) > 0
            t = sitk.GetArrayViewFromImage(truth) > 0
            spacing = attrs.original_spacing_zyx
            rec.update(lits_metrics(p, t, spacing))
            counts.append(overlap_counts(p, t))
        records.append(rec)
    table = pd.DataFrame(records)
    summary: dict[str, Any] = {"task": task.name, "split": split, "metric_name": "dice", "cases": len(table),
                               "labelled_cases": len(counts)}
    if counts:
        for key in ("dice", "voe", "rvd", "assd_mm", "msd_mm"):
            values = table[key].to_numpy(dtype=float)
            values = values[~np.isnan(values)]  # distances are undefined where a mask is empty
            summary[f"{key}_mean"] = float(values.mean()) if values.size else float("nan")
        summary["metric"] = summary["dice_mean"]
        summary["dice_global"] = global_dice(counts)
    else:
        summary["metric"] = float("nan")
        summary["note"] = f"split {split!r} has no labels: predictions only"
    return summary, table
