"""Scoring: window logits from the classifier, then one calibrated, clipped probability per video
(the arithmetic in :mod:`dfpipe.train.calibration`).

Ray-free: the bulk job maps :class:`WindowScoreStage` over cached codes, ``score-video`` calls
the same functions in-process, so both give the same number for the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import records as R
from dfpipe import storage
from dfpipe.outputs import read_batch_rows
from dfpipe.score.embed import codes_array
from dfpipe.stage import Resources
from dfpipe.train.calibration import (
    CALIBRATED_PRIOR,
    Aggregation,
    aggregate,
    clip,
    model_probs,
    prior_shift,
)
from dfpipe.train.modelio import load_model


@dataclass
class WindowScoreStage:
    """Cached code sequences in, one logit per window out, with the classifier in ``model``."""

    reads: ClassVar = (
        "codes",
        "window_id",
        "video_id",
        "track_id",
        "start_frame",
        "label",
        "part",
        "counted",
    )
    writes: ClassVar = None  # the window columns it reads but ``codes``, plus ``logit``

    model: storage.Folder
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=256))

    def setup(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.net, self.meta = load_model(self.model, "window_classifier")

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        shape = (self.meta["n_frames"], self.meta["code_dim"])
        codes = (
            codes_array(batch.column("codes").to_pylist(), *shape)
            if batch.num_rows
            else np.zeros((0, *shape), np.float32)
        )
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(codes)).numpy() if len(codes) else np.zeros(0, np.float32)
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
    fallback: Literal["prior", "half", "train"] = "prior"
    prior_fake: float = CALIBRATED_PRIOR  # the share of FAKE the probabilities assume (prior_shift)

    def __post_init__(self):
        if not 0 <= self.clip_low < self.clip_high <= 1:
            raise ValueError("need 0 <= clip_low < clip_high <= 1")
        if not 0 < self.prior_fake < 1:
            raise ValueError(f"prior_fake must be between 0 and 1 (exclusive), got {self.prior_fake}")

    @classmethod
    def of(cls, options, meta: dict) -> VideoRule:
        """The rule of a scoring run's options (``aggregation``, ``clip_low``/``clip_high``, ``fallback``,
        ``prior_fake``); the model's own aggregation unless one is given."""
        return cls(
            options.aggregation or meta.get("aggregation", "max_track_mean"),
            options.clip_low,
            options.clip_high,
            options.fallback,
            options.prior_fake,
        )

    def fallback_prob(self, meta: dict) -> float:
        """A video with no usable window: the scoring prior (default), 0.5, or the training set's
        share of FAKE windows (``train``; the default before the prior was made one)."""
        return {"prior": self.prior_fake, "half": 0.5, "train": meta.get("prior_fake", 0.5)}[self.fallback]

    def shift(self, meta: dict) -> float:
        return prior_shift(self.prior_fake, meta.get("calibrated_prior", CALIBRATED_PRIOR))


def video_row(
    video: dict, windows: list[dict], meta: dict, rule: VideoRule, model_version: str, scored_at: str
) -> tuple[dict, np.ndarray]:
    """The score row of one video (from its manifest/summary fields and its windows' logits), and
    the calibrated probability of each window.

    Only windows of tracks that count (``counted``, see :class:`dfpipe.segment.windows.TrackRule`) decide
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
    probs = model_probs([w["logit"] for w in windows], meta, rule.shift(meta)) if windows else np.zeros(0)
    prior = rule.fallback_prob(meta)
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


_WINDOW_SCORE_STRUCT = pa.struct(list(R.WINDOW_SCORES_SCHEMA))
# What VideoScoreStage returns: a score row per video, its window scores nested (split by score_tables).
VIDEO_SCORES_SCHEMA = R.SCORES_SCHEMA.append(pa.field("windows", pa.list_(_WINDOW_SCORE_STRUCT)))
# The columns of a video the stage needs: manifest fields, its segmentation and the chunk of its codes.
VIDEO_COLUMNS = ("video_id", "uri", "filename", "part", "label", "status", "error", "n_tracks")


@dataclass
class VideoScoreStage:
    """Videos in (manifest fields, their segmentation's ``seg_split``/``seg_n_tracks``/
    ``n_tracks_counted``/``segment_reason``, the split the model learned them in, and ``chunk``:
    the embedding-cache chunk of their codes, null without windows), one score row per video out
    with its window scores nested. Windows are aggregated per video here, in the worker."""

    reads: ClassVar = (
        *VIDEO_COLUMNS,
        "chunk",
        "seg_split",
        "seg_n_tracks",
        "n_tracks_counted",
        "segment_reason",
        "learned_split",
    )
    writes: ClassVar = VIDEO_SCORES_SCHEMA

    model: storage.Folder
    codes: storage.Folder
    meta: dict
    rule: VideoRule
    model_version: str
    scored_at: str
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=64))

    def setup(self) -> None:
        self.windows = WindowScoreStage(self.model)
        self.windows.setup()

    def window_logits(self, batch: pa.Table) -> pa.Table:
        """The logit of every window of the batch's videos (the classifier over their cached codes)."""
        return self.windows(read_batch_rows(self.codes, batch, R.EMBEDDINGS_SCHEMA))

    def __call__(self, batch: pa.Table) -> pa.Table:
        by_video: dict[str, list[dict]] = {}
        for w in self.window_logits(batch).to_pylist():
            by_video.setdefault(w["video_id"], []).append(w)
        out = []
        for video in batch.to_pylist():
            seg_split = video.get("seg_split")
            video = {
                **video,
                # A split only for videos the model's own segmentation put there; other videos (a new
                # dump, another dataset) are unsplit, whatever the split rule would call them.
                "split": seg_split if video.get("learned_split") == seg_split else None,
                "n_tracks": video["seg_n_tracks"]
                if video.get("seg_n_tracks") is not None
                else video.get("n_tracks"),
            }
            wins = sorted(
                by_video.get(video["video_id"], []), key=lambda w: (w["track_id"], w["start_frame"])
            )
            row, probs = video_row(video, wins, self.meta, self.rule, self.model_version, self.scored_at)
            row["windows"] = [
                {**w, "prob_fake": float(p), "model_version": self.model_version}
                for w, p in zip(wins, probs, strict=True)
            ]
            out.append(row)
        return pa.Table.from_pylist(out, schema=VIDEO_SCORES_SCHEMA)


def score_tables(stage_output: pa.Table, batch: pa.Table | None = None) -> dict[str, pa.Table]:
    """The stage's output as the tables of a scoring chunk: window scores, then scores (the marker)."""
    flat = pc.list_flatten(stage_output.column("windows"))
    windows = (
        pa.Table.from_struct_array(flat.combine_chunks())
        if len(flat)
        else R.WINDOW_SCORES_SCHEMA.empty_table()
    )
    return {
        "window_scores": windows.cast(R.WINDOW_SCORES_SCHEMA),
        "scores": stage_output.select(R.SCORES_SCHEMA.names).cast(R.SCORES_SCHEMA),
    }


@dataclass
class WindowLogitsStage:
    """The window logits of a batch of videos (``VideoScoreStage.window_logits``), for fitting a
    temperature (``score calibrate=true``): compact columns only."""

    reads: ClassVar = VideoScoreStage.reads
    writes: ClassVar = None  # video_id, track_id, counted, label, logit of every window

    scorer: VideoScoreStage

    @property
    def resources(self) -> Resources:
        return self.scorer.resources

    def setup(self) -> None:
        self.scorer.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.scorer.window_logits(batch).select(["video_id", "track_id", "counted", "label", "logit"])
