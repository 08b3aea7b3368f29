"""Evaluation metrics on numpy arrays (labels 1 = FAKE), with no sklearn dependency."""

from __future__ import annotations

import numpy as np


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    y, p = np.asarray(y, float), np.clip(np.asarray(p, float), eps, 1 - eps)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def balanced_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of the per-class log losses, so a 5:1 class ratio cannot hide a bad minority class."""
    y, p = np.asarray(y), np.asarray(p)
    parts = [log_loss(y[y == c], p[y == c]) for c in (0, 1) if (y == c).any()]
    return float(np.mean(parts)) if parts else float("nan")


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    y = np.asarray(y)
    return float(np.mean((np.asarray(p) >= threshold) == (y == 1))) if len(y) else float("nan")


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random FAKE scores above a random REAL (ties count half)."""
    y, score = np.asarray(y), np.asarray(score, float)
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1)."""
    y, score = np.asarray(y), np.asarray(score, float)
    order = np.argsort(-score, kind="mergesort")
    y, score = y[order], score[order]
    distinct = np.r_[np.nonzero(np.diff(score))[0], len(y) - 1]
    tps = np.cumsum(y == 1)[distinct]
    fps = np.cumsum(y == 0)[distinct]
    p, n = max(1, (y == 1).sum()), max(1, (y == 0).sum())
    return np.r_[0.0, fps / n], np.r_[0.0, tps / p]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum (as scikit-learn computes it)."""
    y, score = np.asarray(y), np.asarray(score, float)
    if (y == 1).sum() == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    y, score = y[order], score[order]
    distinct = np.r_[np.nonzero(np.diff(score))[0], len(y) - 1]
    tps = np.cumsum(y == 1)[distinct]
    fps = np.cumsum(y == 0)[distinct]
    precision = tps / (tps + fps)
    recall = tps / (y == 1).sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def equal_error_rate(y: np.ndarray, score: np.ndarray) -> float:
    """The error rate where false positives and false negatives are equally likely."""
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr = roc_curve(y, score)
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fpr - fnr)))
    return float((fpr[i] + fnr[i]) / 2)


def confusion(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    y, pred = np.asarray(y), np.asarray(p) >= threshold
    return {
        "true_real": int(((y == 0) & ~pred).sum()),
        "false_fake": int(((y == 0) & pred).sum()),
        "false_real": int(((y == 1) & ~pred).sum()),
        "true_fake": int(((y == 1) & pred).sum()),
    }


def summary(y: np.ndarray, p: np.ndarray) -> dict:
    """Every headline metric of probabilities ``p`` against labels ``y``."""
    y, p = np.asarray(y), np.asarray(p, float)
    return {
        "n": int(len(y)),
        "n_fake": int((y == 1).sum()),
        "n_real": int((y == 0).sum()),
        "log_loss": log_loss(y, p),
        "balanced_log_loss": balanced_log_loss(y, p),
        "accuracy": accuracy(y, p),
        "roc_auc": roc_auc(y, p),
        "average_precision": average_precision(y, p),
        "eer": equal_error_rate(y, p),
        "confusion": confusion(y, p),
    }
