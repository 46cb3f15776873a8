"""Classification measures, numpy (ranks from scipy).

- :func:`binary_classification_metrics` (accuracy, ROC AUC, sensitivity, specificity, confusion matrix): the
  LIDC-IDRI nodule malignancy transfer task, one probability of the positive class per case.
- :func:`multiclass_metrics` (accuracy, balanced accuracy, macro one-vs-rest AUC, confusion matrix): the
  ``classify`` task, one probability per class and case.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["binary_classification_metrics", "multiclass_metrics", "roc_auc"]


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
    u = rankdata(scores)[pos].sum() - n_pos * (n_pos + 1) / 2.0
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


def multiclass_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Accuracy, balanced accuracy, macro AUC and the confusion matrix of a K-class classifier (K >= 2).

    Args:
        probs: (N, K) probability (or any score) of each class per case; finite. The prediction is the argmax
            (the lowest class index on a tie).
        labels: (N,) true class indices in 0..K-1.

    Returns:
        ``accuracy``; ``balanced_accuracy``: the mean over the classes present in ``labels`` of their recall;
        ``auc_macro``: for K = 2 the ROC AUC of column 1, for K > 2 the mean over classes of the one-vs-rest
        ROC AUC (class k's column as the score of "k against the rest"), over the classes that have both
        positives and negatives in ``labels`` (nan when none has); ``auc_per_class`` (K floats, nan where
        undefined); ``confusion``: K x K ints, rows the true class, columns the predicted one; ``n``; ``pred``
        (N ints, the predicted classes).
    """
    p = np.asarray(probs, dtype=np.float64)
    lab = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 2 or lab.shape != (p.shape[0],):
        raise ValueError(f"probs {p.shape} must be (N, K >= 2) and labels {lab.shape} (N,)")
    if p.shape[0] == 0:
        raise ValueError("no cases: probs and labels are empty")
    if not np.isfinite(p).all():
        raise ValueError(f"probs hold {int((~np.isfinite(p)).sum())} non-finite values (nan/inf)")
    k = p.shape[1]
    if not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= k:
        raise ValueError(f"labels must be class indices in 0..{k - 1}; found {np.unique(lab)[:10].tolist()}")
    pred = p.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (lab, pred), 1)
    present = confusion.sum(axis=1) > 0
    recall = np.diag(confusion)[present] / confusion.sum(axis=1)[present]
    per_class = [roc_auc(p[:, c], lab == c) for c in range(k)]
    if k == 2:
        auc = per_class[1]
    else:
        defined = [a for a in per_class if not np.isnan(a)]
        auc = float(np.mean(defined)) if defined else float("nan")
    return {
        "accuracy": float(np.trace(confusion) / lab.size),
        "balanced_accuracy": float(recall.mean()),
        "auc_macro": float(auc),
        "auc_per_class": [float(a) for a in per_class],
        "confusion": confusion.tolist(),
        "n": int(lab.size),
        "pred": pred.tolist(),
    }
