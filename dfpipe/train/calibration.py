"""From window logits to one calibrated probability per video: the aggregation over tracks, the
temperature, the prior shift and the clip. numpy only; scoring and training use the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dfpipe.train import metrics as M

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


def window_probs(
    logits: np.ndarray, temperature: float, shift: float = 0.0, offset: float = 0.0
) -> np.ndarray:
    """Calibrated window probabilities: sigmoid(logit / T + offset + shift); T and the offset fitted
    on the val split at training (:func:`fit_calibration`), ``shift`` from :func:`prior_shift`."""
    return M.sigmoid(np.asarray(logits, float) / max(temperature, 1e-6) + offset + shift)


def model_probs(logits: np.ndarray, meta: dict, shift: float = 0.0) -> np.ndarray:
    """:func:`window_probs` with a model's calibration (``model.json``: ``temperature``, ``offset``;
    models from before the offset have none)."""
    return window_probs(logits, meta.get("temperature", 1.0), shift, meta.get("offset", 0.0))


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


# Where the calibration searches the temperature (the threshold: around the val logits). A fit
# that ends on a bound of its search is said (Fit.at_bound).
TEMPERATURE_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class Fit:
    """A fitted calibration: window logits -> sigmoid(logit / temperature + offset)."""

    temperature: float
    offset: float
    before: float  # the video log loss (balanced if asked) at the calibration it started from
    after: float  # the same at the fitted one
    videos: int
    smoothing: float  # the targets were 1 - smoothing (FAKE) and smoothing (REAL)
    objective: tuple[float, float] = (float("nan"), float("nan"))  # what the fit minimised, before and after
    at_bound: tuple[str, ...] = ()  # which parameters ended on their search range's bound

    def as_meta(self) -> dict:
        """What a model records (``model.json``: ``temperature``, ``offset``, ``calibration``)."""
        return {
            "temperature": self.temperature,
            "offset": self.offset,
            "calibration": {
                "method": "temperature and offset on val videos, smoothed targets",
                "videos": self.videos,
                "smoothing": self.smoothing,
                "video_log_loss_before": self.before,
                "video_log_loss_after": self.after,
                "at_bound": list(self.at_bound),
            },
        }

    def describe(self) -> str:
        text = (
            f"temperature {self.temperature:.3f}, offset {self.offset:+.3f} (targets {1 - self.smoothing:.3f}/"
            f"{self.smoothing:.3f} over {self.videos} videos: a small validation set cannot justify certainty); "
            f"video log loss {self.before:.4f} -> {self.after:.4f}"
        )
        if self.at_bound:
            text += (
                f". The optimum sits at a bound of the search ({', '.join(self.at_bound)}): the val videos do not "
                "pin the calibration down (too few, or logits that barely vary)"
            )
        return text


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    videos: np.ndarray,
    tracks: np.ndarray,
    how: Aggregation,
    shift: float = 0.0,
    balanced: bool = True,
    current: tuple[float, float] = (1.0, 0.0),
    offset: bool = True,
) -> Fit:
    """The temperature and (with ``offset``) the offset of window logits that minimise the log loss
    of the *video* probabilities (windows aggregated by ``how``, as scoring does), so calibration
    holds for what is reported; with ``balanced`` the mean of the per-class losses (calibration for
    a prior of 0.5 whatever the class ratio).

    - The offset (Platt scaling's intercept) moves the threshold: a model that ranks videos right
      but puts them all on one side of 0.5 gets them back across it; a temperature alone cannot.
    - The targets are smoothed as Platt proposed: 1 - e for FAKE and e for REAL, e = 1 / (N + 2)
      over the N val videos. A perfectly separated val set would otherwise ask for T -> 0 (every
      probability 0 or 1); e caps the confidence deliberately, by what N videos can show, and
      vanishes as N grows.

    ``before`` and ``after`` are the plain (hard-label) video log losses at ``current`` and at the
    fit (on separated videos the smoothed fit may raise it: that is the cap); ``objective`` is the
    smoothed loss the fit minimised, before and after. With one class only, ``current`` is returned
    unfitted.
    """
    groups = VideoGroups(labels, videos, tracks)
    n = len(groups.labels)
    eps = 1.0 / (n + 2)
    loss = M.balanced_log_loss if balanced else M.log_loss

    def probs(t: float, b: float) -> np.ndarray:
        return groups.probs(window_probs(logits, t, shift, b), how)[0]

    def smoothed(t: float, b: float) -> float:
        p = np.clip(probs(t, b), 1e-12, 1 - 1e-12)
        y = groups.labels
        target = np.where(y == 1, 1 - eps, eps)
        per_video = -(target * np.log(p) + (1 - target) * np.log(1 - p))
        if not balanced:
            return float(per_video.mean())
        return float(np.mean([per_video[y == c].mean() for c in (0, 1) if (y == c).any()]))

    def hard(t: float, b: float) -> float:
        return loss(groups.labels, probs(t, b))

    t, b = current
    if len(np.unique(groups.labels)) < 2:
        return Fit(t, b, hard(t, b), hard(t, b), n, eps, (smoothed(t, b), smoothed(t, b)))
    # Searched as a temperature and a threshold c in logit units (offset = -c / T): the two barely
    # interact that way, where T and the offset move together and a search one at a time crawls.
    log_t = (np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1]))
    low, high = np.percentile(logits, [0, 100]) if len(logits) else (0.0, 0.0)
    span = max(high - low, 1e-6)
    c_range = (low - span, high + span) if offset else (-b * t, -b * t)
    c = float(np.clip(-b * t, *c_range))

    def best_t(c: float) -> float:
        return float(np.exp(_argmin(lambda x: smoothed(float(np.exp(x)), -c / float(np.exp(x))), *log_t)))

    def best_c(t: float) -> float:
        return _argmin(lambda x: smoothed(t, -x / t), *c_range)

    for _ in range(6):  # the temperature, then the threshold, until they settle
        t_new = best_t(c)
        c_new = best_c(t_new) if offset else c
        settled = abs(np.log(t_new / t)) < 1e-3 and abs(c_new - c) < 1e-3 * span
        t, c = t_new, c_new
        if settled:
            break
    b = -c / t
    bounds = []
    if t <= TEMPERATURE_RANGE[0] * 1.01 or t >= TEMPERATURE_RANGE[1] / 1.01:
        bounds.append(f"temperature {t:.3g} in [{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}]")
    if offset and (c <= c_range[0] + 0.01 * span or c >= c_range[1] - 0.01 * span):
        bounds.append(f"threshold {c:.3g} beyond the val logits [{low:.3g}, {high:.3g}]")
    objective = (smoothed(*current), smoothed(t, b))
    return Fit(t, b, hard(*current), hard(t, b), n, eps, objective, tuple(bounds))


def _argmin(loss_of, lo: float, hi: float) -> float:
    """The x in [lo, hi] with the lowest ``loss_of(x)``: 41 even steps, then 41 between the best
    one's neighbours (82 evaluations; a video-level loss over a corpus costs a little each)."""
    grid = np.linspace(lo, hi, 41)
    i = int(np.argmin([loss_of(float(x)) for x in grid]))
    fine = np.linspace(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)], 41)
    return float(fine[int(np.argmin([loss_of(float(x)) for x in fine]))])


def clip(p: float, low: float, high: float) -> float:
    """Keep a confident mistake from dominating log loss."""
    return float(min(max(p, low), high))
