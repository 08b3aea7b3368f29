"""The extraction's options, grouped by the part of the stage that reads them: one option, one edit.

Each group is a small frozen dataclass whose fields carry their help text, default and check. The
extract job's config is made of these groups (:class:`dfpipe.jobs.extract.ExtractConfig` inherits
them), and :class:`dfpipe.extract.stage.FaceExtractStage` takes one instance of each, so a new
option is one field here: it becomes a YAML and ``key=value`` option, appears in ``--help`` and
reaches the stage. An option that changes the rows says so, ``rows=True``: it joins the rows' hash
and the models' recipe (:mod:`dfpipe.jobs.recipe`); one added later also gives ``before=``, its value
that makes the rows as they were made before it existed.

The groups are mixed into the job config rather than nested in it because the keys are flat
everywhere users and files see them: ``max_frames=60``, ``extract.scan_every=0`` in a pipeline
config, the recipes in ``model.json`` and every ``config.json`` written so far.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from dfpipe.config import Options, option
from dfpipe.extract.decode import DecodeLimits


def _at_least_one(group, *names: str) -> None:
    for name in names:
        if getattr(group, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(group, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeOptions(Options):
    """Which frames are read, and the limits past which a video is refused."""

    frame_stride: int = option(1, "keep every k-th frame", rows=True)
    max_frames: int = option(300, "frame cap per video (kept frames)", rows=True)
    max_bytes: int = option(2 * 1024**3, "refuse files larger than this many bytes")
    max_pixels: int = option(3840 * 2160, "refuse streams with more pixels per frame than this")
    max_seconds_per_video: float = option(600.0, "give up on a video after this many seconds of decoding")

    def check(self) -> None:
        _at_least_one(self, "frame_stride", "max_frames", "max_bytes", "max_pixels")

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_pixels, self.max_frames, self.max_seconds_per_video)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectOptions(Options):
    """Where MTCNN runs, on which frames, and what counts as a usable face."""

    detect_long_side: int = option(
        640,
        "frames are shrunk so their long side is at most this before detection",
        rows=True,
    )
    detect_every: int = option(
        16,
        "run the detector on every k-th frame and interpolate boxes between (1: every frame)",
        rows=True,
    )
    scan_every: int = option(
        64,
        "scan the whole frame at a keyframe once k frames have passed since the last scan; keyframes between search "
        "only around the faces already found, so a face that enters is found at the next scan (at most detect_every: "
        "every keyframe a full scan)",
        rows=True,
        before=0,
    )
    mtcnn: Literal["cascade", "facenet"] = option(
        "cascade",
        "MTCNN implementation: cascade (dfpipe's: OpenCV resampling, no pyramid level for faces under min_face_px) "
        "or facenet (facenet-pytorch's detect_face, the rows of models trained before 2026-12)",
        rows=True,
        before="facenet",
    )
    agree_iou: float = option(
        0.7,
        "keyframes whose faces overlap less than this are re-detected in between, not interpolated",
        rows=True,
    )
    verify_boxes: bool = option(
        True,
        "check every interpolated box for a face (MTCNN's O-Net, then a detection around the box) and detect "
        "properly where one fails",
        rows=True,
    )
    cut_threshold: float = option(
        40.0,
        "mean change of a frame's thumbnail (0-255) taken as a scene cut: no interpolation across it",
        rows=True,
    )
    detect_batch: int = option(
        16,
        "frames held per window (with the tail after its last keyframe); its keyframes are detected in one batch",
    )
    min_face_size: int = option(20, "MTCNN's smallest face, in pixels of the detection frame", rows=True)
    min_prob: float = option(0.9, "faces below this detection probability are flagged low_prob", rows=True)
    min_face_px: int = option(
        40,
        "faces whose short side is below this (full-resolution pixels) are flagged small_face",
        rows=True,
    )

    def check(self) -> None:
        _at_least_one(self, "detect_long_side", "detect_batch", "detect_every")
        if self.scan_every < 0:
            raise ValueError(f"scan_every must be >= 0, got {self.scan_every}")
        if not 0 <= self.min_prob <= 1:
            raise ValueError(f"min_prob must be within [0, 1], got {self.min_prob}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CropOptions(Options):
    """How each face is cut from the full-resolution frame and stored."""

    crop_margin: float = option(
        0.2, "crop margin around the box, as a fraction of its size, per side", rows=True
    )
    face_size: int = option(160, "side of the square face crops, in pixels", rows=True)
    jpeg_quality: int = option(90, "JPEG quality of the crops", rows=True)

    def check(self) -> None:
        _at_least_one(self, "face_size")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within [1, 100], got {self.jpeg_quality}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackOptions(Options):
    """How the faces of successive frames are linked into tracks."""

    track_iou: float = option(0.3, "least box overlap (IoU) for a face to continue a track", rows=True)
    track_max_gap: int = option(
        5,
        "most sampled frames (counted after frame_stride) between two sightings of one track; further apart starts "
        "a new track",
        rows=True,
    )
