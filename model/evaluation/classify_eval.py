"""``evaluate`` and ``predict`` of ``classify`` runs: class probabilities per case, and what is measured on them.

``evaluate`` writes ``RUN/eval/<split>/predictions.csv``: ``case_id``, ``label`` (the true class), ``pred`` (the
most probable class), one ``prob_<class>`` column per class in the run's class order (they sum to 1); its summary
holds ``accuracy``, ``balanced_accuracy``, ``auc_macro`` (binary: the ROC AUC of the second class; more classes:
the mean one-vs-rest AUC) and ``confusion`` (rows the true class, columns the predicted one, in class order) of
:func:`~model.evaluation.classification.multiclass_metrics`.

``predict`` preprocesses each raw scan as the store was built (:func:`volume.preprocess.preprocess_scan`
with the run's recorded recipe), resizes it as in training, and writes ``OUT/predictions.csv``: ``case_id`` (the
file name without its ending and nnU-Net channel suffix), ``scan`` (the path), ``pred`` and the ``prob_<class>``
columns, one row per scan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from runlog.tables import spreadsheet_safe

if TYPE_CHECKING:
    from model.data.classify_table import LabelTable

__all__ = ["PREDICTIONS_FILE", "evaluate_classifier", "predict_classes", "probabilities"]

PREDICTIONS_FILE = "predictions.csv"


@torch.no_grad()
def probabilities(net: torch.nn.Module, inputs: np.ndarray, *, device: Any = "cpu", amp: bool = False
                  ) -> np.ndarray:
    """Softmax of ``net`` on one input (1, Z, Y, X) float32: (classes,) float64."""
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(inputs))[None].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    return logits.float().softmax(dim=1)[0].double().cpu().numpy()


def _prob_columns(classes: Sequence[Any]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def evaluate_classifier(run: str | Path, spec: dict[str, Any], table: LabelTable, split: str, rows: pd.DataFrame,
                        out: Path, *, network: tuple[Any, Any], device: Any = "cpu", amp: bool = False,
                        progress: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Classify the stored cases of ``rows`` (catalog rows of ``split``, all in ``table``) with ``run``'s
    ``network`` (the network and its config: :func:`model.run_folder.load_stage`), write ``out/predictions.csv``
    and return (summary, that table)."""
    from tqdm.auto import tqdm

    from model.data.classify_stream import store_input
    from model.data.store_index import CaseEntry
    from model.evaluation.classification import multiclass_metrics
    from model.run_folder import inside

    net, cfg = network
    classes = list(spec["classes"])
    targets, spacings = table.targets, table.spacings
    probs, truth = [], []
    for r in tqdm(list(rows.itertuples(index=False)), desc="evaluate", unit="case", disable=not progress):
        case = CaseEntry(r.store_path, r.scan_id, tuple(int(s) for s in r.shape), int(r.n_channels))
        x = store_input(table.store, case, cfg.shape, crop=cfg.crop, margin_mm=cfg.crop_margin_mm,
                        spacing=spacings[r.store_path], channels=cfg.channels)
        probs.append(probabilities(net, x, device=device, amp=amp))
        truth.append(targets[r.store_path])
    p, t = np.stack(probs), np.asarray(truth, dtype=np.int64)
    metrics = multiclass_metrics(p, t)
    records = pd.DataFrame({"case_id": rows["case_id"].to_numpy(), "label": [classes[i] for i in t],
                            "pred": [classes[i] for i in metrics.pop("pred")]})
    records[_prob_columns(classes)] = p
    path = inside(out, PREDICTIONS_FILE)
    out.mkdir(parents=True, exist_ok=True)
    spreadsheet_safe(records).to_csv(path, index=False)
    per_class = metrics.pop("auc_per_class")
    summary = {"task": spec["task"], "split": split, "metric_name": "accuracy",
               "metric": metrics["accuracy"], **metrics, "classes": classes,
               "auc_per_class": {str(c): a for c, a in zip(classes, per_class)},
               "class_counts": {str(c): int((t == i).sum()) for i, c in enumerate(classes)}}
    return summary, records


_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def scan_name(scan: str | Path) -> str:
    """A raw scan's case name: its file name without the ending and an nnU-Net channel suffix (``_0000``)."""
    name = Path(scan).name
    for end in _ENDINGS:
        if name.lower().endswith(end):
            name = name[: -len(end)]
            break
    return re.sub(r"_\d{4}$", "", name)


def predict_classes(run: str | Path, spec: dict[str, Any], scans: Sequence[str | Path], out: str | Path, *,
                    modality: str | None = None, spacing_xyz: tuple[float, float, float] | None = None,
                    device: Any = "cpu", amp: bool = False, max_voxels: int | None = None,
                    overwrite: bool = False, log: Callable[[str], None] = print,
                    network: tuple[Any, Any] | Callable[[], tuple[Any, Any]]) -> Path:
    """Class probabilities of raw ``scans`` (files or folders, as segmentation ``predict`` takes them) with the
    whole-volume classify ``run``; writes and returns ``out/predictions.csv``.

    A mask-crop run is refused (a raw scan has no mask to crop around). Every case first passes the build's
    header checks (:func:`model.evaluation.predict.check_case`, ``max_voxels`` as there); a case that fails is
    skipped with a ``skipped:`` line, the others are written, then
    :class:`~model.evaluation.predict.ScansSkippedError` names the skipped ones. Nothing is written when every
    case fails. ``out/predictions.csv`` is never an input, nor, unless ``overwrite``, a file that exists already
    (:func:`~model.evaluation.predict.check_outputs`, before anything is read). ``network``: the run's network and
    config (:func:`model.run_folder.load_stage`; ``predict --engine onnx``: :mod:`model.export.onnx_engine`), or a
    function returning them, called once a case has passed the checks."""
    from model.data.classify_stream import classify_input
    from model.evaluation.predict import ScansSkippedError, check_case, check_outputs, collect_cases, preprocess_case
    from model.run_folder import inside
    from model.task_api import FinetuneError
    from volume.integrity import DEFAULT_MAX_VOXELS

    if spec.get("crop") == "mask":
        raise FinetuneError(f"{run} was trained on crops around the mask (--crop mask) and a raw scan has no mask: "
                            "build the scans into a store with their masks and `med3d-train evaluate` it, or "
                            "train with --crop none to predict raw scans")
    path = inside(out, PREDICTIONS_FILE)
    recipe, classes = spec["preprocessing"], list(spec["classes"])
    good, skipped = [], []
    cases = collect_cases(scans)
    check_outputs([path], [f for case in cases for f in case.files], overwrite=overwrite)
    for case in cases:
        try:
            check_case(case, recipe, modality=modality, spacing_xyz=spacing_xyz,
                       max_voxels=DEFAULT_MAX_VOXELS if max_voxels is None else max_voxels)
            good.append(case)
        except ValueError as exc:
            log(f"skipped: {exc}")
            skipped.append((case.scan, str(exc)))
    rows = []
    if good:
        net, cfg = network() if callable(network) else network
        n_chans = int(net.encoder.in_chans)
    for case in good:
        scan = case.scan
        try:
            image, _ = preprocess_case(case, recipe, in_chans=n_chans, modality=modality, spacing_xyz=spacing_xyz)
        except ValueError as exc:  # what the header could not tell: the voxels, the channel files
            log(f"skipped: {exc}")
            skipped.append((scan, str(exc)))
            continue
        p = probabilities(net, classify_input(image, None, cfg.shape), device=device, amp=amp)
        rows.append({"case_id": scan_name(scan), "scan": str(scan), "pred": classes[int(p.argmax())],
                     **dict(zip(_prob_columns(classes), p.tolist()))})
        log(f"{scan}: {classes[int(p.argmax())]} (p = {p.max():.3f})")
    if rows:
        Path(out).mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(rows, columns=["case_id", "scan", "pred", *_prob_columns(classes)])
        spreadsheet_safe(table).to_csv(path, index=False)
        log(f"wrote {path} ({len(rows)} scan(s))")
    if skipped:
        raise ScansSkippedError(f"{len(skipped)} of {len(cases)} scan(s) skipped (see the 'skipped:' "
                                f"lines); {len(rows)} row(s) written{f' to {path}' if rows else ''}",
                                [path] if rows else [], skipped)
    return path
