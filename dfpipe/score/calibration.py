"""From window logits to one calibrated probability per video: the aggregation over tracks, the
temperature, the prior shift and the clip. numpy only; scoring and training use the same functions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dfpipe.score import metrics as M

Aggregation = Literal["max_track_mean", "mean", "confident"]


def aggregate(probs: np.ndarray, tracks: np.ndarray, how: Aggregation = "max_track_mean") -> float:
    """One video probability from its windows' probabilities.

    - ``max_track_mean`` (default): mean over each track's windows, then the most suspicious track.
      A video is FAKE if any person in it is; averaging over tracks would let a real bystander
      dilute a swapped face.
    - ``mean``: mean over all windows.
    - ``confident``: the DFDC winner's rule: if over a third of the windows are confidently FAKE
      (> 0.8), their mean; else if over 90% are confidently REAL (< 0.2), their mean; else the mean.
    """
    probs = np.asarray(probs, float)
    if len(probs) == 0:
        raise ValueError("no windows to aggregate")
    if how == "mean":
        return float(probs.mean())
    if how == "confident":
        fake, real = probs[probs > 0.8], probs[probs < 0.2]
        if len(fake) > len(probs) / 3:
            return float(fake.mean())
        if len(real) > 0.9 * len(probs):
            return float(real.mean())
        return float(probs.mean())
    if how == "max_track_mean":
        tracks = np.asarray(tracks)
        return float(max(probs[tracks == t].mean() for t in np.unique(tracks)))
    raise ValueError(f"unknown aggregation {how!r}")


CALIBRATED_PRIOR = 0.5  # the share of FAKE a trained classifier's probabilities assume (see below)


def prior_shift(prior_fake: float, calibrated_prior: float = CALIBRATED_PRIOR) -> float:
    """What to add to a calibrated logit so its probability assumes ``prior_fake`` FAKE videos
    instead of ``calibrated_prior`` (Bayes' rule on the odds); 0 when they are equal.

    One prior runs through training and scoring: the classifier's loss weighs FAKE by REAL/FAKE
    (``pos_weight``), so it learns as if the classes were balanced; its temperature is fitted on
    the *balanced* validation log loss, so its probabilities are calibrated for a prior of 0.5; a
    video without a usable window gets that same prior by default (DFDC practice: 0.5). A user who
    knows the share of FAKE videos in what they score (``score prior_fake=0.84``) shifts every
    probability and the fallback to it together.
    """
    return float(_logit(prior_fake) - _logit(calibrated_prior))


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def window_probs(logits: np.ndarray, temperature: float, shift: float = 0.0) -> np.ndarray:
    """Calibrated window probabilities: sigmoid(logit / T + shift), T fitted on the val split at
    training, ``shift`` from :func:`prior_shift`."""
    return M.sigmoid(np.asarray(logits, float) / max(temperature, 1e-6) + shift)


def video_probs(
    probs: np.ndarray, labels: np.ndarray, videos: np.ndarray, tracks: np.ndarray, how: Aggregation
) -> tuple[np.ndarray, np.ndarray]:
    """Each video's probability by the scoring rule ``how`` (:func:`aggregate`) and its label, from
    arrays of windows. Validation picks checkpoints and fits the temperature with the rule scoring
    uses, so the numbers it reports are the numbers a scored video gets."""
    return VideoGroups(labels, videos, tracks).probs(probs, how)


class VideoGroups:
    """Windows grouped by video once, for many evaluations (a temperature search)."""

    def __init__(self, labels: np.ndarray, videos: np.ndarray, tracks: np.ndarray):
        videos = np.asarray(videos)
        self.order = np.argsort(videos, kind="stable")
        videos = videos[self.order]
        self.tracks = np.asarray(tracks)[self.order]
        starts = np.r_[0, np.nonzero(videos[1:] != videos[:-1])[0] + 1, len(videos)]
        self.groups = [slice(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a]
        labels = np.asarray(labels)[self.order]
        self.labels = np.asarray([float(labels[g][0]) for g in self.groups])

    def probs(self, window_probs: np.ndarray, how: Aggregation) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(window_probs, float)[self.order]
        return np.asarray([aggregate(p[g], self.tracks[g], how) for g in self.groups]), self.labels


def video_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    videos: np.ndarray,
    tracks: np.ndarray,
    how: Aggregation,
    shift: float = 0.0,
    balanced: bool = True,
    current: float = 1.0,
) -> tuple[float, float, float]:
    """The temperature of window logits that minimises the log loss of the *video* probabilities
    (windows aggregated by ``how``), so calibration holds for what is reported; with ``balanced``
    the mean of the per-class losses (calibration for a prior of 0.5 whatever the class ratio).

    Returns ``(temperature, loss at T=current, loss at the temperature)``; ``current`` when one class
    is missing.
    """
    loss = M.balanced_log_loss if balanced else M.log_loss
    groups = VideoGroups(labels, videos, tracks)

    def video_loss(t: float) -> float:
        p, y = groups.probs(window_probs(logits, t, shift), how)
        return loss(y, p)

    if len(np.unique(groups.labels)) < 2:
        return current, video_loss(current), video_loss(current)
    t = M.best_temperature(video_loss)
    return t, video_loss(current), video_loss(t)


def clip(p: float, low: float, high: float) -> float:
    """Keep a confident mistake from dominating log loss."""
    return float(min(max(p, low), high))
