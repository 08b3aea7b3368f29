"""Scoring: window logits from the classifier, then one calibrated, clipped probability per video.

Ray-free: the bulk job maps :class:`WindowScoreStage` over cached codes, ``score-video`` calls
the same functions in-process, so both give the same number for the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from dfpipe import metrics as M
from dfpipe import records as R
from dfpipe import storage
from dfpipe.embed import codes_array
from dfpipe.extract import Resources

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


def window_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated window probabilities: sigmoid(logit / T), T fitted on the val split at training."""
    return M.sigmoid(np.asarray(logits, float) / max(temperature, 1e-6))


def clip(p: float, low: float, high: float) -> float:
    """Keep a confident mistake from dominating log loss."""
    return float(min(max(p, low), high))


@dataclass
class WindowScoreStage:
    """Cached code sequences in, one logit per window out, with the classifier in ``model_dir``."""

    model_dir: str
    storage_options: storage.StorageOptions = field(default_factory=storage.StorageOptions)
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=256))

    def setup(self) -> None:
        import torch

        from dfpipe.modelio import load_model

        torch.set_num_threads(1)
        self.model, self.meta = load_model(self.model_dir, "window_classifier", self.storage_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if not hasattr(self, "model"):
            self.setup()
        shape = (self.meta["n_frames"], self.meta["code_dim"])
        codes = (
            codes_array(batch.column("codes").to_pylist(), *shape)
            if batch.num_rows
            else np.zeros((0, *shape), np.float32)
        )
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(codes)).numpy() if len(codes) else np.zeros(0, np.float32)
        return pa.table(
            {
                "window_id": batch.column("window_id"),
                "video_id": batch.column("video_id"),
                "track_id": batch.column("track_id"),
                "start_frame": batch.column("start_frame"),
                "label": batch.column("label"),
                "part": batch.column("part"),
                "counted": batch.column("counted"),
                "logit": pa.array(logits, pa.float32()),
            }
        )


@dataclass(frozen=True)
class VideoRule:
    """How window probabilities become a video's reported probability."""

    aggregation: Aggregation = "max_track_mean"
    clip_low: float = 0.01
    clip_high: float = 0.99
    fallback: Literal["prior", "half"] = "prior"


def video_row(
    video: dict, windows: list[dict], meta: dict, rule: VideoRule, model_version: str, scored_at: str
) -> tuple[dict, np.ndarray]:
    """The score row of one video (from its manifest/summary fields and its windows' logits), and
    the calibrated probability of each window.

    Only windows of tracks that count (``counted``, see :class:`dfpipe.windows.TrackRule`) decide
    the video's probability; the others are scored and kept, but a poster or a background face
    never makes a video FAKE.
    """
    row = {k: video.get(k) for k in ("video_id", "uri", "filename", "part", "split", "label")}
    row.update(
        n_windows=len(windows),
        n_tracks=int(video.get("n_tracks") or 0),
        n_tracks_counted=int(video.get("n_tracks_counted") or 0),
        model_version=model_version,
        scored_at=scored_at,
        reason=None,
    )
    probs = (
        window_probs([w["logit"] for w in windows], meta.get("temperature", 1.0)) if windows else np.zeros(0)
    )
    prior = meta.get("prior_fake", 0.5) if rule.fallback == "prior" else 0.5
    if video.get("status") != R.STATUS_OK:
        row.update(prob_fake=prior, reason=f"extract_failed: {video.get('error')}")
    elif not windows:
        row.update(prob_fake=prior, reason=video.get("segment_reason") or "no_window")
    else:
        counted = np.array([w.get("counted") is not False for w in windows])
        if not counted.any():
            row.update(
                prob_fake=prior,
                reason="no_counted_window: every window belongs to a track that does not count",
            )
        else:
            tracks = np.array([w["track_id"] for w in windows])
            row["prob_fake"] = aggregate(probs[counted], tracks[counted], rule.aggregation)
    row["prob_fake"] = clip(row["prob_fake"], rule.clip_low, rule.clip_high)
    return row, probs
