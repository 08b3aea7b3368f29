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


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(logits / T) (a 1-D search)."""
    y, logits = np.asarray(y, float), np.asarray(logits, float)
    if len(np.unique(y)) < 2:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    losses = [log_loss(y, sigmoid(logits / t)) for t in grid]
    return float(grid[int(np.argmin(losses))])
