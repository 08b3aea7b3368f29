"""Video decoding in one pass, in windows of frames, under explicit limits.

``VideoReader`` never holds a whole decoded video: it yields chunks of ``chunk`` frames. Frames that
the stride skips are only grabbed (demuxed and decoded, never converted to an image), which is most
of the saving a stride can give with a software decoder. Frames stay in OpenCV's BGR order: converting
a 1080p frame costs about a third of decoding it, and only the small detection copy and the crops
need converting. Display-matrix rotation is applied by OpenCV's FFmpeg backend
(``CAP_PROP_ORIENTATION_AUTO``), so frames come out upright.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from dfpipe import records as R

T = TypeVar("T")


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
    """Reads ``path`` once, yielding ``(frame_indices, bgr_frames)`` chunks of kept frames.

    ``threads`` is the decoder's thread count (0: FFmpeg's choice, every core); a worker given one
    CPU should decode with one thread, or workers on one machine fight over cores.
    """

    def __init__(
        self,
        path: str,
        stride: int = 1,
        limits: DecodeLimits | None = None,
        chunk: int = 16,
        threads: int = 0,
    ):
        if stride < 1 or chunk < 1:
            raise ValueError("stride and chunk must be >= 1")
        self.path, self.stride, self.chunk = path, stride, chunk
        self.limits = limits or DecodeLimits()
        self.frames_read = 0  # frames demuxed, kept or not
        self.frames_kept = 0
        self.capped = False
        self._cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, max(0, threads)])
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
        # With CAP_PROP_ORIENTATION_AUTO (the default) the size is already the displayed one.
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
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
                frames.append(bgr)
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


def prefetched(chunks: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``chunks`` produced by a background thread, at most ``depth`` ahead of the consumer.

    OpenCV decodes and converts with the GIL released, so on a worker with two or more CPUs the
    next frames decode while the current ones go through detection. An exception in the producer
    is raised in the consumer; a consumer that stops early stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in chunks:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((done, exc))
            return
        finally:
            close = getattr(chunks, "close", None)
            if stop.is_set() and close is not None:
                close()
        q.put((done, None))

    thread = threading.Thread(target=produce, name="dfpipe-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so a producer blocked on a full queue can finish
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
