"""Segmentation metrics (Dice per class) and the run's metrics log (JSON lines, plus TensorBoard when installed).

Dice of class c: 2·|P_c ∩ G_c| / (|P_c| + |G_c|) over all voxels of the batch. A class absent from both the
prediction and the ground truth has no defined Dice: it is ``nan`` and left out of means (nnU-Net's convention),
rather than counted as a perfect 1 that would flatter empty volumes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runlog.records import METRICS_FILE, json_safe, read_metrics

__all__ = ["METRICS_FILE", "MetricsLogger", "dice_per_class", "mean_foreground_dice", "read_metrics"]

_json_safe = json_safe  # the name evaluate.py imports



def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def dice_per_class(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int | None = None
) -> torch.Tensor:
    """Dice of every class, background included: a float64 tensor of shape (num_classes,), ``nan`` where a class
    is in neither ``pred`` nor ``target``.

    Args:
        pred: logits or probabilities (N, C, *spatial) (argmax over C is taken; ``num_classes`` defaults to C),
            or integer labels (N, *spatial) / (*spatial).
        target: integer labels with the spatial shape of ``pred`` ((N, *spatial) or (*spatial)).
        num_classes: number of classes; for integer ``pred`` it defaults to 1 + the largest label seen.
    """
    pred, target = _as_tensor(pred), _as_tensor(target).long()
    if pred.is_floating_point():
        if pred.dim() != target.dim() + 1:
            raise ValueError(f"logits {tuple(pred.shape)} must have one more dim (classes) than labels "
                             f"{tuple(target.shape)}")
        num_classes = num_classes or pred.shape[1]
        pred = pred.argmax(dim=1)
    pred = pred.long()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and labels {tuple(target.shape)} differ in shape")
    if num_classes is None:
        num_classes = int(max(pred.max().item(), target.max().item())) + 1 if pred.numel() else 1
    pred, target = pred.reshape(-1), target.reshape(-1)
    # An out-of-range label would alias another (pred, target) cell of the flattened confusion matrix and
    # silently change the Dice of an unrelated class.
    for name, t in (("predicted labels", pred), ("labels", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} hold values in [{int(t.min())}, {int(t.max())}], outside the "
                             f"{num_classes} classes [0, {num_classes - 1}]; pass the right num_classes")
    # One bincount over (pred, target) pairs gives the confusion matrix: intersections on its diagonal.
    conf = torch.bincount(pred * num_classes + target, minlength=num_classes * num_classes)
    conf = conf[: num_classes * num_classes].reshape(num_classes, num_classes).to(torch.float64)
    inter = conf.diagonal()
    denom = conf.sum(dim=1) + conf.sum(dim=0)
    dice = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    ok = denom > 0
    dice[ok] = 2 * inter[ok] / denom[ok]
    return dice


def mean_foreground_dice(dice: torch.Tensor | np.ndarray) -> float:
    """Mean of a :func:`dice_per_class` vector over classes 1..C-1, ignoring ``nan``; ``nan`` if all are."""
    fg = _as_tensor(dice)[1:].to(torch.float64)
    fg = fg[~torch.isnan(fg)]
    return float(fg.mean()) if fg.numel() else float("nan")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


class MetricsLogger:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl`` and mirrors numbers to TensorBoard.

    Every record has ``kind`` (``"train"``, ``"val"``, ...), ``step`` and ``time`` (Unix seconds); nested dicts
    become TensorBoard tags ``kind/key/subkey``. ``nan``/``inf`` are written as ``null``. TensorBoard is used when
    ``torch.utils.tensorboard`` imports (the ``tensorboard`` package is installed) and ``tensorboard`` is true.
    A disabled logger (non-zero DDP ranks) writes nothing.

    ``resume_step`` (a run resumed from the checkpoint of that step): records of later steps, written before an
    interruption and about to be repeated, are removed from the file (and purged from TensorBoard), so every
    step appears once.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _drop_records_after(self.path, resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSON lines only
                SummaryWriter = None
            if SummaryWriter is not None:
                kw = {} if resume_step is None else {"purge_step": int(resume_step) + 1}
                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), **kw)

    @property
    def tensorboard(self) -> bool:
        return self._writer is not None

    def log(self, kind: str, step: int, **values: Any) -> dict[str, Any]:
        """Write ``{"kind", "step", "time", **values}``; returns the record."""
        record = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **values}
        if self._file is not None:
            self._file.write(json.dumps(json_safe(record), sort_keys=False) + "\n")
            self._file.flush()
        if self._writer is not None:
            for tag, v in _flatten(values).items():
                self._writer.add_scalar(f"{kind}/{tag}", v, global_step=int(step))
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_records_after(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically) without the records whose step is greater than ``step``."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = [line for line in lines if not line.strip() or int(json.loads(line).get("step", 0)) <= step]
    if len(keep) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)
