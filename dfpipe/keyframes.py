"""Face boxes for every frame from detections on a few: keyframes, interpolation and bisection.

MTCNN costs ten times what decoding a 1080p frame does on a CPU, so running it on every frame caps
extraction far below the decode floor. Faces move smoothly between shots, so ``KeyframeDetector``:

* runs the detector on every ``every``-th frame (a keyframe), a window of keyframes per batch;
* between two keyframes whose confident faces agree (same count, each pair overlapping by at least
  ``agree_iou``), interpolates the boxes linearly; the probability carried is the lower of the two;
* checks every interpolated box with ``verify`` (a cheap second opinion: is there a face in this
  box?), all boxes of a level in one call; a gap with a box that fails is treated as a disagreement,
  so a face that turns away, is covered or cut away between two agreeing keyframes is detected
  properly instead of being given boxes where it is not;
* where they disagree (a face appeared, left, weakened below ``min_prob`` or moved fast), detects
  the midpoint and repeats on both halves, down to adjacent frames: detection is dense exactly
  where the scene is not smooth;
* treats a jump in a tiny strided thumbnail as a scene cut: the frames either side become
  keyframes, nothing is interpolated across, and the cut is reported so tracks end there.

It streams: frames are yielded in order as soon as their boxes are known, and it never holds more
than ``window`` frames plus the tail after the last keyframe. With ``every=1`` it is dense detection.

The blind spot: a face that is on no keyframe and on neither side of a disagreement (it appears and
leaves between two keyframes) is never seen. Keyframes are every ``every``-th kept frame, so a face
visible for at least ``every`` consecutive kept frames (``every * frame_stride / fps`` seconds) is
always found, from its first frame to its last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from dfpipe.tracks import greedy_match, iou_matrix

Detection = tuple[np.ndarray, np.ndarray]  # boxes (k, 4) float32, probs (k,) float32
DetectFn = Callable[[list[np.ndarray]], list[Detection]]
# (frames, boxes per frame) -> whether each box holds a face, per frame
VerifyFn = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


@dataclass
class FrameFaces:
    """One frame with its faces; ``detected`` is False where the boxes were interpolated."""

    index: int
    frame: np.ndarray
    boxes: np.ndarray
    probs: np.ndarray
    detected: bool


def _empty() -> Detection:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def match_faces(
    a: Detection, b: Detection, min_prob: float, agree_iou: float
) -> list[tuple[int, int]] | None:
    """Pairs (i in a, j in b) of confident faces when both frames have the same confident faces, else None."""
    ia = np.flatnonzero(a[1] >= min_prob)
    ib = np.flatnonzero(b[1] >= min_prob)
    if len(ia) != len(ib):
        return None
    if len(ia) == 0:
        return []
    pairs = greedy_match(iou_matrix(a[0][ia], b[0][ib]), agree_iou)
    if len(pairs) != len(ia):
        return None
    return sorted((int(ia[i]), int(ib[j])) for i, j in pairs)


def interpolate(a: Detection, b: Detection, pairs: list[tuple[int, int]], t: float) -> Detection:
    """Boxes a fraction ``t`` of the way from ``a`` to ``b`` for matched pairs; the lower probability."""
    if not pairs:
        return _empty()
    ia, ib = (np.array(x) for x in zip(*pairs, strict=True))
    boxes = (1 - t) * a[0][ia] + t * b[0][ib]
    return boxes.astype(np.float32), np.minimum(a[1][ia], b[1][ib]).astype(np.float32)


def thumbnail(frame: np.ndarray, cells: int = 32) -> np.ndarray:
    """A strided view of about ``cells`` samples on the long side, as float32; costs microseconds."""
    step = max(1, max(frame.shape[:2]) // cells)
    return frame[step // 2 :: step, step // 2 :: step].astype(np.float32)


@dataclass
class KeyframeDetector:
    """Streams frames to :class:`FrameFaces`, running ``detect`` on keyframes and where motion demands."""

    detect: DetectFn
    verify: VerifyFn | None = None
    every: int = 8
    window: int = 32
    min_prob: float = 0.9
    agree_iou: float = 0.7
    cut_threshold: float = 40.0

    def __post_init__(self):
        if self.every < 1 or self.window < 1:
            raise ValueError("every and window must be >= 1")
        self.window = max(self.window, self.every)
        self.cuts: list[int] = []  # frame indices that start a new shot
        self.n_detected = 0
        self.n_rejected = 0  # gaps whose interpolated boxes failed verification and were re-detected

    def run(self, chunks: Iterable[tuple[list[int], list[np.ndarray]]]) -> Iterator[FrameFaces]:
        """``chunks`` of (frame indices, frames) in order, as :class:`~dfpipe.decode.VideoReader` yields."""
        self.cuts, self.n_detected, self.n_rejected = [], 0, 0
        buf_idx: list[int] = []  # buffered frames: [anchor (already yielded), then pending frames]
        buf: list[np.ndarray | None] = []
        known: dict[int, Detection] = {}  # buffer position -> detection
        forced: set[int] = set()  # buffer positions that must be detected (either side of a cut)
        prev_thumb = None
        pos = 0  # position of the next frame in the stream of kept frames
        for idx, frames in chunks:
            for i, frame in zip(idx, frames, strict=True):
                thumb = thumbnail(frame)
                if prev_thumb is not None and float(np.abs(thumb - prev_thumb).mean()) > self.cut_threshold:
                    self.cuts.append(i)
                    forced.update((len(buf) - 1, len(buf)))
                prev_thumb = thumb
                if pos % self.every == 0:
                    forced.add(len(buf))
                buf_idx.append(i)
                buf.append(frame)
                pos += 1
                if len(buf) - (1 if known else 0) >= self.window:
                    yield from self._flush(buf_idx, buf, known, forced, final=False)
                    buf_idx, buf, known, forced = self._carry(buf_idx, buf, known)
        if buf and len(buf) > len(known):
            yield from self._flush(buf_idx, buf, known, forced, final=True)

    def _flush(self, buf_idx, buf, known, forced, final: bool) -> Iterator[FrameFaces]:
        """Detect the buffer's keyframes, fill the gaps between them, yield frames up to the last one."""
        if final:
            forced.add(len(buf) - 1)
        keys = sorted(p for p in forced if p not in known)
        self._detect_at(buf, known, keys)
        points = sorted(known)
        fills: dict[int, Detection] = {}
        gaps = list(pairwise(points))
        while gaps:
            split, smooth = [], []  # gaps to bisect, and gaps to interpolate if verification agrees
            for a, b in gaps:
                if b - a < 2:
                    continue
                pairs = match_faces(known[a], known[b], self.min_prob, self.agree_iou)
                if pairs is None:
                    split.append((a, b))
                else:
                    smooth.append((a, b, pairs))
            for gap, filled in self._interpolate_verified(buf, known, smooth):
                if filled is None:  # an interpolated box holds no face: detect as for a disagreement
                    split.append(gap)
                else:
                    fills.update(filled)
            midpoints = [(a + b) // 2 for a, b in split]
            self._detect_at(buf, known, midpoints)
            gaps = [g for (a, b), m in zip(split, midpoints, strict=True) for g in ((a, m), (m, b))]
        start = 1 if buf[0] is None else 0  # position 0 is the anchor, already yielded, or the first frame
        for p in range(start, points[-1] + 1):
            det = known.get(p)
            boxes, probs = det if det is not None else fills.get(p, _empty())
            yield FrameFaces(buf_idx[p], buf[p], boxes, probs, det is not None)
            buf[p] = None

    def _interpolate_verified(self, buf, known, smooth):
        """``((a, b), {position: detection} or None)`` per smooth gap; None where a box failed ``verify``."""
        fills = [
            {p: interpolate(known[a], known[b], pairs, (p - a) / (b - a)) for p in range(a + 1, b)}
            for a, b, pairs in smooth
        ]
        if self.verify is not None:
            checks = [(g, p) for g, filled in enumerate(fills) for p, det in filled.items() if len(det[0])]
            if checks:
                verdicts = self.verify([buf[p] for _, p in checks], [fills[g][p][0] for g, p in checks])
                for (g, _), ok in zip(checks, verdicts, strict=True):
                    if fills[g] is not None and not bool(np.all(ok)):
                        fills[g] = None
                        self.n_rejected += 1
        return [((a, b), filled) for (a, b, _), filled in zip(smooth, fills, strict=True)]

    def _detect_at(self, buf, known, positions: list[int]) -> None:
        if positions:
            for p, det in zip(positions, self.detect([buf[p] for p in positions]), strict=True):
                known[p] = det
            self.n_detected += len(positions)

    @staticmethod
    def _carry(buf_idx, buf, known):
        """Keep the last keyframe as the next buffer's anchor, and the frames after it."""
        last = max(known)
        anchor = {0: known[last]}
        return buf_idx[last:], buf[last:], anchor, set()
