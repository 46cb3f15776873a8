"""Binary classification measures: hand-computed cases, AUC against a brute-force pairwise count, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluation.classification import binary_classification_metrics, multiclass_metrics, roc_auc


def pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(equal), over all (positive, negative) pairs."""
    pos, neg = scores[labels.astype(bool)], scores[~labels.astype(bool)]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_hand_computed_case() -> None:
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.5])
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    m = binary_classification_metrics(prob, labels)
    # Predicted positive (>= 0.5): 0.9 0.8 0.7 0.6 0.5 -> tp 3 (0.9 0.8 0.6), fp 2 (0.7 0.5); fn 1 (0.2), tn 2.
    assert m["confusion"] == [[2, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["n"] == 8 and m["n_positive"] == 4
    # Pairs won by the positives (0.9, 0.8, 0.6, 0.2) over the negatives (0.7, 0.4, 0.3, 0.5): 4+4+3+0 = 11 of 16.
    assert m["auc"] == pytest.approx(11 / 16)
    assert all(type(v) is int for row in m["confusion"] for v in row)
    assert type(m["n"]) is int and type(m["n_positive"]) is int


def test_threshold_is_inclusive_and_moves_the_confusion() -> None:
    prob, labels = np.array([0.2, 0.5, 0.7]), np.array([0, 1, 1])
    assert binary_classification_metrics(prob, labels)["confusion"] == [[1, 0], [0, 2]]
    m = binary_classification_metrics(prob, labels, threshold=0.6)
    assert m["confusion"] == [[1, 0], [1, 1]]
    assert m["auc"] == binary_classification_metrics(prob, labels)["auc"] == 1.0  # threshold-free


@pytest.mark.parametrize("seed", range(8))
def test_auc_equals_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    labels = rng.integers(0, 2, size=n)
    labels[:2] = [0, 1]
    # Coarse scores so that many ties occur, within and across classes.
    scores = np.round(rng.random(n) + 0.3 * labels, 1 if seed % 2 else 2)
    assert roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)
    assert binary_classification_metrics(scores, labels)["auc"] == pytest.approx(pairwise_auc(scores, labels))


def test_auc_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.full(4, 0.5), labels) == 0.5


def test_one_class_absent() -> None:
    only_neg = binary_classification_metrics(np.array([0.1, 0.7, 0.3]), np.array([0, 0, 0]))
    assert math.isnan(only_neg["auc"]) and math.isnan(only_neg["sensitivity"])
    assert only_neg["specificity"] == pytest.approx(2 / 3)
    assert only_neg["confusion"] == [[2, 1], [0, 0]] and only_neg["n_positive"] == 0
    only_pos = binary_classification_metrics(np.array([0.9, 0.2]), np.array([True, True]))
    assert math.isnan(only_pos["auc"]) and math.isnan(only_pos["specificity"])
    assert only_pos["sensitivity"] == 0.5 and only_pos["accuracy"] == 0.5


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="same length"):
        binary_classification_metrics(np.array([0.1, 0.2]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        binary_classification_metrics(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        binary_classification_metrics(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        binary_classification_metrics(np.array([]), np.array([]))


@pytest.mark.parametrize("seed", range(6))
def test_multiclass_metrics_equal_sklearn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(2, 6)), int(rng.integers(12, 80))
    labels = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])  # every class present
    logits = np.round(rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels], 1)  # coarse: ties occur
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = multiclass_metrics(probs, labels)
    pred = probs.argmax(axis=1)
    assert m["pred"] == pred.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred), abs=1e-12)
    ref_auc = (roc_auc_score(labels, probs[:, 1]) if k == 2 else
               roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["auc_macro"] == pytest.approx(ref_auc, abs=1e-12)
    assert m["confusion"] == confusion_matrix(labels, pred, labels=range(k)).tolist()
    assert all(type(v) is int for row in m["confusion"] for v in row)


def test_multiclass_hand_computed_and_a_class_missing_from_the_truth() -> None:
    # class 2 is never the truth: it is left out of balanced accuracy and of the AUC mean, kept in the confusion
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1, 0])
    m = multiclass_metrics(probs, labels)
    assert m["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    # class 0 vs rest: the 0s' scores (0.7, 0.5) beat the others' (0.2, 0.1): 1. Class 1 vs rest: (0.5, 0.3)
    # against (0.2, 0.4): 3 of 4 pairs won. Class 2 has no positive: nan, left out of the mean.
    assert m["auc_per_class"][:2] == [1.0, 0.75] and math.isnan(m["auc_per_class"][2])
    assert m["auc_macro"] == 0.875


def test_multiclass_input_validation() -> None:
    with pytest.raises(ValueError, match="must be"):
        multiclass_metrics(np.array([0.1, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="class indices"):
        multiclass_metrics(np.array([[0.1, 0.9]]), np.array([2]))
    with pytest.raises(ValueError, match="non-finite"):
        multiclass_metrics(np.array([[np.nan, 0.9]]), np.array([1]))
