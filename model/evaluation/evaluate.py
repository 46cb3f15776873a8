"""``med3d-train evaluate``: a fine-tuned run measured on a split of its store, with predictions written.

Segmentation (liver, lung): every case of the split is segmented on the stored grid, pasted back onto its
source file's grid (:func:`pipeline.geometry.to_original_grid`), written as ``pred/<case_id>.nii.gz`` and, when
the case has a label, measured there against the source label with the file's own spacing: the LiTS set
(Dice, VOE, RVD, ASSD, MSD in mm) per case, global Dice in the summary. LiTS test volumes (labels not public)
get predictions only, named as a LiTS submission (``test-segmentation-N.nii``, the geometry of
``test-volume-N.nii``). Nodules: accuracy, AUC, sensitivity, specificity and the confusion matrix.

Output in ``RUN/eval/<split>/``: ``cases.csv``, ``summary.json``, ``pred/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from model.evaluation.inference import LiverSegmenter, PatchSegmenter, Segmenter
from model.evaluation.metrics import _json_safe

__all__ = ["evaluate", "ground_truth", "segmenter_for_run"]


def segmenter_for_run(run: str | Path, *, device: str | torch.device = "cpu", amp: bool = False,
                      batch: int = 2, overlap: float | None = None) -> Segmenter:
    """The segmenter of a finished liver or lung run: the liver chain (coarse, then fine when that stage
    exists) or the lung network by sliding window."""
    from model.training.finetune import read_run, load_stage

    spec = read_run(run)
    if spec["task"] == "lung":
        net, cfg = load_stage(run, "main", device)
        return PatchSegmenter(net, cfg.patch, int(net.head.classifier.out_channels),
                              overlap=cfg.overlap if overlap is None else overlap, batch=batch, device=device,
                              amp=amp)
    if spec["task"] == "liver":
        coarse, ccfg = load_stage(run, "coarse", device)
        fine, fcfg = (load_stage(run, "fine", device) if (Path(run) / "fine" / "checkpoint.pt").is_file()
                      else (None, ccfg))
        return LiverSegmenter(coarse, fine, coarse_shape=ccfg.coarse_shape, patch=fcfg.patch,
                              spacing=spec["preprocessing"]["target_spacing"],
                              margin_mm=sum(fcfg.roi_margin_mm) / 2,
                              overlap=fcfg.overlap if overlap is None else overlap, batch=batch, device=device,
                              amp=amp)
    raise ValueError(f"{run}: a {spec['task']} run classifies nodule crops; it has no segmenter")


def _case_attrs(store: str, store_path: str) -> dict[str, Any]:
    from catalog.io import store_join

    with open(store_join(store, store_path, "zarr.json"), "rb") as fh:
        return json.load(fh)["attributes"]


def ground_truth(row: Any, attrs: dict[str, Any]) -> sitk.Image | None:
    """A case's source label on its source grid (composed from its masks where it has several: VISCERAL), or
    None when the case has no label."""
    parts = attrs.get("label_parts") or []
    if parts:
        out = None
        for path, value in parts:
            mask = sitk.ReadImage(str(path))
            arr = sitk.GetArrayFromImage(mask) > 0
            if out is None:
                out, ref = np.zeros(arr.shape, np.uint8), mask
            out[arr] = int(value)
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(ref)
        return img
    if row.source_label:
        return sitk.ReadImage(str(row.source_label))
    return None


def _pred_name(case_id: str, task: str, labelled: bool) -> str:
    m = re.fullmatch(r"test-volume-(\d+)", case_id)
    if task == "liver" and not labelled and m:
        return f"test-segmentation-{m.group(1)}.nii"
    return f"{case_id}.nii.gz"


def evaluate(run: str | Path, store: str, *, split: str | None = None, segmenter: Segmenter | None = None,
             device: str | torch.device = "cpu", amp: bool = False, limit: int | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``run`` on ``split`` of ``store`` (default: the task's evaluation split) and write
    ``RUN/eval/<split>/``; returns the summary. ``segmenter`` replaces the run's networks (tests use an oracle
    to check the geometry alone)."""
    from catalog import load_catalog, select
    from model.training.finetune import read_run

    spec = read_run(run)
    split = split or spec["eval_split"]
    rows = select(load_catalog(store), split=split)
    if limit:
        rows = rows.head(limit)
    if rows.empty:
        raise ValueError(f"{store}: no ok case in split {split!r}; splits there: "
                         f"{sorted(set(load_catalog(store)['split']))}")
    out = Path(run) / "eval" / split
    (out / "pred").mkdir(parents=True, exist_ok=True)
    if spec["task"] == "nodule":
        summary, table = _evaluate_nodules(run, store, split, rows, device, amp)
    else:
        seg = segmenter or segmenter_for_run(run, device=device, amp=amp)
        summary, table = _evaluate_segmentation(spec["task"], store, split, rows, seg, out, progress)
    table.to_csv(out / "cases.csv", index=False)
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    log(f"wrote {out}/cases.csv, summary.json" + ("" if spec["task"] == "nodule" else " and pred/"))
    return summary


def _evaluate_segmentation(task: str, store: str, split: str, rows: pd.DataFrame, seg: Segmenter, out: Path,
                           progress: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    from tqdm.auto import tqdm

    from model.data.patches import read_volume
    from model.evaluation.seg_metrics import global_dice, lits_metrics, overlap_counts
    from pipeline.geometry import to_original_grid

    records, counts = [], []
    for row in tqdm(list(rows.itertuples(index=False)), desc=f"evaluate {split}", unit="case",
                    disable=not progress):
        attrs = _case_attrs(store, row.store_path)
        image, _ = read_volume(store, row.store_path)
        label = seg(image)
        if label.shape != image.shape:
            raise ValueError(f"{row.store_path}: the segmenter returned {label.shape} for an image of {image.shape}")
        pred = to_original_grid(label.astype(np.uint8), attrs)
        truth = ground_truth(row, attrs)
        pred_path = out / "pred" / _pred_name(row.case_id, task, truth is not None)
        sitk.WriteImage(pred, str(pred_path))
        rec: dict[str, Any] = {"case_id": row.case_id, "source_image": row.source_image,
                               "modality": row.source_modality or row.modality, "prediction": str(pred_path)}
        if truth is not None:
            p = sitk.GetArrayViewFromImage(pred) > 0
            t = sitk.GetArrayViewFromImage(truth) > 0
            if p.shape != t.shape:
                raise ValueError(f"{row.source_label}: label grid {t.shape} differs from its image's {p.shape}")
            spacing = tuple(float(s) for s in reversed(attrs["original"]["spacing_xyz"]))
            rec.update(lits_metrics(p, t, spacing))
            counts.append(overlap_counts(p, t))
        records.append(rec)
    table = pd.DataFrame(records)
    summary: dict[str, Any] = {"task": task, "split": split, "metric_name": "dice", "cases": len(table),
                               "labelled_cases": len(counts)}
    if counts:
        for key in ("dice", "voe", "rvd", "assd_mm", "msd_mm"):
            values = table[key].to_numpy(dtype=float)
            values = values[~np.isnan(values)]  # distances are undefined where a mask is empty
            summary[f"{key}_mean"] = float(values.mean()) if values.size else float("nan")
        summary["metric"] = summary["dice_mean"]
        summary["dice_global"] = global_dice(counts)
        if task == "lung":
            summary["dice_per_modality"] = {str(k): float(v) for k, v in
                                            table.groupby("modality")["dice"].mean().items()}
    else:
        summary["metric"] = float("nan")
        summary["note"] = f"split {split!r} has no labels: predictions only"
    return summary, table


def _evaluate_nodules(run: str | Path, store: str, split: str, rows: pd.DataFrame, device: Any,
                      amp: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    from model.data.store_index import CaseEntry
    from model.data.transfer import NoduleStream, nodule_labels
    from model.evaluation.classification import binary_classification_metrics
    from model.training.finetune import load_stage

    net, _ = load_stage(run, "main", device)
    cases = [CaseEntry(r.store_path, r.scan_id, tuple(int(s) for s in r.shape), int(r.n_channels))
             for r in rows.itertuples(index=False)]
    labels = nodule_labels(store, cases)
    if not labels:
        raise ValueError(f"{store}: no rated nodule crop in split {split!r}")
    stream = NoduleStream(store, cases, labels, crop=cases[0].shape, batch=1, seed=0)
    device = torch.device(device)
    records = []
    with torch.no_grad():
        for case in stream.cases:
            x = torch.from_numpy(stream.read_crop(case))[None].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                prob = float(net(x).float().softmax(dim=1)[0, 1].item())
            row = rows[rows["store_path"] == case.store_path].iloc[0]
            records.append({"case_id": row["case_id"], "source_image": row["source_image"],
                            "label": labels[case.store_path], "prob_malignant": prob, "pred": int(prob >= 0.5)})
    table = pd.DataFrame(records)
    metrics = binary_classification_metrics(table["prob_malignant"].to_numpy(), table["label"].to_numpy())
    summary = {"task": "nodule", "split": split, "metric_name": "accuracy", "metric": metrics["accuracy"],
               **metrics}
    return summary, table
