"""Video decoding in one pass, in windows of frames, under explicit limits.

``VideoReader`` never holds a whole decoded video: it yields chunks of ``chunk`` frames. Frames that
the stride skips are only grabbed (demuxed and decoded, never converted to RGB), which is most of
the saving a stride can give with a software decoder. Display-matrix rotation is applied by OpenCV's
FFmpeg backend (``CAP_PROP_ORIENTATION_AUTO``), so frames come out upright.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from dfpipe import records as R


class DecodeError(Exception):
    """A video that cannot be decoded; ``reason`` is one of the records' reason codes."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 3840 * 2160
    max_frames: int = 300
    max_seconds: float = 600.0


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    declared_frames: int
    rotation: int


class VideoReader:
    """Reads ``path`` once, yielding ``(frame_indices, rgb_frames)`` chunks of kept frames."""

    def __init__(self, path: str, stride: int = 1, limits: DecodeLimits | None = None, chunk: int = 16):
        if stride < 1 or chunk < 1:
            raise ValueError("stride and chunk must be >= 1")
        self.path, self.stride, self.chunk = path, stride, chunk
        self.limits = limits or DecodeLimits()
        self.frames_read = 0  # frames demuxed, kept or not
        self.frames_kept = 0
        self.capped = False
        self._cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise DecodeError(
                R.REASON_DECODE_ERROR, "not a readable video (container or codec not recognised)"
            )
        cap = self._cap
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            self.close()
            raise DecodeError(R.REASON_DECODE_ERROR, "the video stream has no frame size")
        if width * height > self.limits.max_pixels:
            self.close()
            raise DecodeError(
                R.REASON_TOO_LARGE, f"{width}x{height} exceeds max_pixels={self.limits.max_pixels}"
            )
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
        if rotation in (90, 270):
            width, height = height, width
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.info = VideoInfo(
            width,
            height,
            fps if np.isfinite(fps) else 0.0,
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            rotation,
        )

    def __iter__(self) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        start = time.monotonic()
        idx: list[int] = []
        frames: list[np.ndarray] = []
        try:
            while True:
                if self.frames_kept >= self.limits.max_frames:
                    self.capped = True
                    break
                if time.monotonic() - start > self.limits.max_seconds:
                    raise DecodeError(
                        R.REASON_TIMEOUT, f"decoding took longer than {self.limits.max_seconds:.0f} s"
                    )
                keep = self.frames_read % self.stride == 0
                ok = self._cap.grab()
                if not ok:
                    break
                i = self.frames_read
                self.frames_read += 1
                if not keep:
                    continue
                ok, bgr = self._cap.retrieve()
                if not ok or bgr is None:
                    break
                idx.append(i)
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                self.frames_kept += 1
                if len(frames) == self.chunk:
                    yield idx, frames
                    idx, frames = [], []
            if frames:
                yield idx, frames
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()
