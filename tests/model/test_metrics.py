"""Dice on hand-made arrays (exact values) and the JSON-lines metrics log."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model.evaluation.metrics import METRICS_FILE, MetricsLogger, dice_per_class, mean_foreground_dice, read_metrics


def test_dice_per_class_exact_values():
    target = np.array([[0, 0, 1, 1],
                       [0, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 0]])
    dice = dice_per_class(pred, target, num_classes=4)
    # class 0: pred {0,4,6,7} target {0,1,4} -> 2·2/(4+3); class 1: pred {1,2,3} target {2,3,7} -> 2·2/6;
    # class 2: pred {5} target {5,6} -> 2·1/3; class 3: in neither -> nan.
    assert dice.dtype == torch.float64
    assert dice[:3].tolist() == [4 / 7, 4 / 6, 2 / 3]
    assert math.isnan(dice[3])
    assert mean_foreground_dice(dice) == pytest.approx((4 / 6 + 2 / 3) / 2, abs=0)


def test_dice_from_logits_equals_dice_from_labels():
    target = torch.tensor([[[0, 1], [2, 2]]])  # (N=1, 2, 2)
    logits = torch.zeros(1, 3, 2, 2)
    pred = torch.tensor([[[0, 1], [1, 2]]])
    logits.scatter_(1, pred[:, None], 5.0)
    from_logits = dice_per_class(logits, target)
    assert from_logits.tolist() == dice_per_class(pred, target, 3).tolist() == [1.0, 2 / 3, 2 / 3]


def test_dice_edge_cases():
    full = dice_per_class(np.ones((3, 3), np.int64), np.ones((3, 3), np.int64), 2)
    assert math.isnan(full[0]) and full[1] == 1.0
    empty = dice_per_class(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64), 2)
    assert empty[0] == 1.0 and math.isnan(empty[1])
    assert math.isnan(mean_foreground_dice(empty))
    missed = dice_per_class(np.zeros((2, 2), np.int64), np.eye(2, dtype=np.int64), 2)
    assert missed[1] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_class(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64))


def test_metrics_logger_writes_json_lines(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log("train", 1, domain="heart", loss=0.5, lr=1e-3)
        log.log("val", 1, dice={"heart": 0.8, "liver": float("nan")}, mean_dice=0.8)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # strict JSON: nan was written as null
    assert rows[0]["kind"] == "train" and rows[0]["step"] == 1 and rows[0]["loss"] == 0.5
    assert rows[1]["dice"] == {"heart": 0.8, "liver": None}
    assert [r["kind"] for r in read_metrics(tmp_path, "val")] == ["val"]
    with MetricsLogger(tmp_path) as log:  # appends (a resumed run continues the same file)
        log.log("train", 2, loss=0.4)
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]


def test_disabled_logger_writes_nothing(tmp_path):
    with MetricsLogger(tmp_path / "rank1", enabled=False) as log:
        log.log("train", 1, loss=1.0)
    assert not (tmp_path / "rank1").exists()


def test_tensorboard_mirror_when_installed(tmp_path, monkeypatch):
    import sys
    import types

    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, global_step: int) -> None:
            scalars.append((tag, value, global_step))

        def close(self) -> None:
            scalars.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with MetricsLogger(tmp_path) as log:
        assert log.tensorboard
        log.log("val", 5, dice={"heart": 0.75, "liver": float("nan")}, domain="heart", mean_dice=0.75)
    assert scalars == [("val/dice/heart", 0.75, 5), ("val/mean_dice", 0.75, 5), ("closed", 0.0, 0)]
    assert not MetricsLogger(tmp_path / "b", tensorboard=False).tensorboard


def test_dice_rejects_labels_outside_the_classes():
    # Label 2 with 2 classes used to alias the (pred 1, target 0) cell: class 1 got Dice 0 instead of nan.
    with pytest.raises(ValueError, match=r"labels hold values in \[0, 2\].*2 classes"):
        dice_per_class(np.array([0, 0]), np.array([2, 0]), 2)
    with pytest.raises(ValueError, match="labels hold values in"):
        dice_per_class(np.array([1, 1]), np.array([1, -1]), 2)
    logits = torch.zeros(1, 2, 2)
    logits[0, 1] = 1.0
    with pytest.raises(ValueError, match="labels hold values in"):  # was a silent Dice of 1.0 for class 1
        dice_per_class(logits, torch.tensor([[1, 3]]))
    with pytest.raises(ValueError, match="predicted labels hold values in"):
        dice_per_class(np.array([0, 5]), np.array([0, 1]), 2)
