"""Binary classification measures (accuracy, ROC AUC, sensitivity, specificity, confusion matrix), pure numpy.

Used for the LIDC-IDRI nodule malignancy transfer task: one probability of the positive class per case.
"""

from __future__ import annotations

import numpy as np

__all__ = ["binary_classification_metrics", "roc_auc"]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,), tied values sharing the mean of the ranks they span (float64, (N,))."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    # A group of c equal values occupying ranks s+1 .. s+c gets s + (c + 1) / 2.
    start = np.cumsum(counts) - counts
    return (start + (counts + 1) / 2.0)[inverse.reshape(-1)]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve as the Mann–Whitney statistic: the probability that a random positive scores
    higher than a random negative, ties counting one half.

    Args:
        scores: (N,) real scores, higher meaning more likely positive.
        labels: (N,) booleans or 0/1, True/1 positive.

    Returns:
        AUC in [0, 1]; nan when either class is absent.
    """
    scores, pos = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(labels).reshape(-1).astype(bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # U = (sum of the positives' ranks) - n_pos (n_pos + 1) / 2 counts (positive, negative) pairs won, ties 1/2.
    u = _average_ranks(scores)[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def binary_classification_metrics(prob_positive: np.ndarray, labels: np.ndarray,
                                  threshold: float = 0.5) -> dict[str, object]:
    """Accuracy, ROC AUC, sensitivity, specificity and the confusion matrix of a binary classifier.

    Args:
        prob_positive: (N,) probability (or any score) of the positive class per case; finite.
        labels: (N,) true classes, booleans or integers in {0, 1} (1 positive).
        threshold: a case is predicted positive when ``prob_positive >= threshold``.

    Returns:
        ``accuracy`` (float), ``auc`` (float, threshold-free; nan when one class is absent), ``sensitivity`` =
        TP / (TP + FN) (nan without positives), ``specificity`` = TN / (TN + FP) (nan without negatives),
        ``confusion`` as ``[[tn, fp], [fn, tp]]`` (ints; rows are the true class, columns the predicted one),
        ``n`` and ``n_positive`` (ints).
    """
    prob = np.asarray(prob_positive, dtype=np.float64)
    lab = np.asarray(labels)
    if prob.ndim != 1 or lab.shape != prob.shape:
        raise ValueError(f"prob_positive {prob.shape} and labels {lab.shape} must be 1-D of the same length")
    if prob.size == 0:
        raise ValueError("no cases: prob_positive and labels are empty")
    if not np.isfinite(prob).all():
        raise ValueError(f"prob_positive holds {int((~np.isfinite(prob)).sum())} non-finite values (nan/inf)")
    if lab.dtype != bool and not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 or booleans; found values {np.unique(lab)[:10].tolist()}")
    pos = lab.astype(bool)
    pred = prob >= threshold
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))
    tn = int(np.count_nonzero(~pred & ~pos))
    return {
        "accuracy": (tp + tn) / prob.size,
        "auc": roc_auc(prob, pos),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "confusion": [[tn, fp], [fn, tp]],
        "n": int(prob.size),
        "n_positive": tp + fn,
    }
