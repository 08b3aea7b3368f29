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

With ``detect_regions`` and ``scan_every``, most detections look only where faces are known. A
keyframe is scanned whole once ``scan_every`` frames have passed since the last full scan (and the
first frame, and both sides of a cut); the keyframes between, and bisection midpoints between two
frames with as many confident faces, search regions around the faces expected there (the previous
keyframe's, or the two ends' boxes interpolated), several frames in one call. A region that loses
its face (turned away, covered, moved far) makes that frame a full scan; a midpoint between frames
whose face count differs (a face came or went) is a full scan.

It streams: frames are yielded in order as soon as their boxes are known, and it never holds more
than ``window`` frames plus the tail after the last keyframe. With ``every=1`` it is dense detection.

The blind spots. Without regions: a face that is on no keyframe and on neither side of a
disagreement (it appears and leaves between two keyframes) is never seen; keyframes are every
``every``-th kept frame, so a face visible for at least ``every`` consecutive kept frames is always
found, from its first frame to its last. With regions, a face that enters while others are tracked
is not looked for until the next full scan. The scan finds it, and the bisection it starts (the face
count changed) finds its first frame after the last keyframe before the scan; the frames from its
entry to that keyframe are lost: at most ``scan_every - every`` kept frames (48 at the defaults of
the extract job, 1.6 s at 30 fps). A face visible for fewer than about ``scan_every`` frames between
two scans may be missed whole. Frames with no confident face are always scanned whole, so a first
face is found as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from dfpipe import records as R
from dfpipe.extract.tracks import greedy_match, iou_matrix

# boxes (k, 4) float32, probs (k,) float32, landmarks (k, 5, 2) float32 (NaN where the detector gives none)
Detection = tuple[np.ndarray, np.ndarray, np.ndarray]
DetectFn = Callable[[list[np.ndarray]], list[Detection]]
# (frames, boxes per frame) -> whether each box holds a face, per frame
VerifyFn = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]
# (frames, expected boxes per frame) -> the faces found around them per frame, None where one was lost
RegionFn = Callable[[list[np.ndarray], list[np.ndarray]], list[Detection | None]]


@dataclass
class FrameFaces:
    """One frame with its faces; ``detected`` is False where the boxes (and landmarks) were interpolated."""

    index: int
    frame: np.ndarray
    boxes: np.ndarray
    probs: np.ndarray
    detected: bool
    landmarks: np.ndarray  # (k, 5, 2) frame pixels, NaN where unknown


def _empty() -> Detection:
    return (
        np.zeros((0, 4), np.float32),
        np.zeros((0,), np.float32),
        np.zeros((0, R.N_LANDMARKS, 2), np.float32),
    )


def as_detection(found: tuple) -> Detection:
    """A detector's ``(boxes, probs, landmarks)``; one that gives ``(boxes, probs)`` only (a scripted
    detector, an engine without landmarks) gets NaN landmarks."""
    if len(found) == 3:
        return found
    boxes, probs = found
    return boxes, probs, np.full((len(boxes), R.N_LANDMARKS, 2), np.nan, np.float32)


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
    """Boxes and landmarks a fraction ``t`` of the way from ``a`` to ``b`` for matched pairs; the lower
    probability."""
    if not pairs:
        return _empty()
    ia, ib = (np.array(x) for x in zip(*pairs, strict=True))
    boxes = (1 - t) * a[0][ia] + t * b[0][ib]
    marks = (1 - t) * a[2][ia] + t * b[2][ib]
    return (
        boxes.astype(np.float32),
        np.minimum(a[1][ia], b[1][ib]).astype(np.float32),
        marks.astype(np.float32),
    )


def thumbnail(frame: np.ndarray, cells: int = 32) -> np.ndarray:
    """A strided view of about ``cells`` samples on the long side, as float32; costs microseconds."""
    step = max(1, max(frame.shape[:2]) // cells)
    return frame[step // 2 :: step, step // 2 :: step].astype(np.float32)


@dataclass
class KeyframeDetector:
    """Streams frames to :class:`FrameFaces`, running ``detect`` on keyframes and where motion demands."""

    detect: DetectFn
    verify: VerifyFn | None = None
    detect_regions: RegionFn | None = None
    every: int = 8
    scan_every: int = 0
    window: int = 32
    min_prob: float = 0.9
    agree_iou: float = 0.7
    cut_threshold: float = 40.0

    def __post_init__(self):
        if self.every < 1 or self.window < 1:
            raise ValueError("every and window must be >= 1")
        if self.scan_every < 0:
            raise ValueError(f"scan_every must be >= 0, got {self.scan_every}")
        self.window = max(self.window, self.every)
        # Regions are searched at keyframes between full scans only when there are such keyframes.
        self.regional = self.detect_regions is not None and self.scan_every > self.every
        self.cuts: list[int] = []  # frame indices that start a new shot
        self.n_detected = 0  # frames whose faces came from the detector (whole frame or regions)
        self.n_scanned = 0  # of those, frames scanned whole
        self.n_lost = 0  # frames where a region lost its face (scanned whole instead)
        self.n_rejected = 0  # gaps whose interpolated boxes failed verification and were re-detected

    def run(self, chunks: Iterable[tuple[list[int], list[np.ndarray]]]) -> Iterator[FrameFaces]:
        """``chunks`` of (frame indices, frames) in order, as :class:`~dfpipe.extract.decode.VideoReader` yields."""
        self.cuts, self.n_detected, self.n_rejected, self.n_scanned, self.n_lost = [], 0, 0, 0, 0
        buf_idx: list[int] = []  # buffered frames: [anchor (already yielded), then pending frames]
        buf: list[np.ndarray | None] = []
        known: dict[int, Detection] = {}  # buffer position -> detection
        forced: set[int] = set()  # buffer positions that must be detected (keyframes, either side of a cut)
        full: set[int] = set()  # of those, the ones scanned whole (the rest: regions around known faces)
        prev_thumb = None
        pos = 0  # position of the next frame in the stream of kept frames
        last_scan = -self.scan_every  # stream position of the last full scan
        for idx, frames in chunks:
            for i, frame in zip(idx, frames, strict=True):
                thumb = thumbnail(frame)
                if prev_thumb is not None and float(np.abs(thumb - prev_thumb).mean()) > self.cut_threshold:
                    self.cuts.append(i)
                    forced.update((len(buf) - 1, len(buf)))
                    full.update((len(buf) - 1, len(buf)))
                    last_scan = pos
                prev_thumb = thumb
                if pos % self.every == 0:
                    forced.add(len(buf))
                    if not self.regional or pos - last_scan >= self.scan_every:
                        full.add(len(buf))
                        last_scan = pos
                buf_idx.append(i)
                buf.append(frame)
                pos += 1
                if len(buf) - (1 if known else 0) >= self.window:
                    yield from self._flush(buf_idx, buf, known, forced, full, final=False)
                    buf_idx, buf, known, forced, full = self._carry(buf_idx, buf, known)
        if buf and len(buf) > len(known):
            yield from self._flush(buf_idx, buf, known, forced, full, final=True)

    def _flush(self, buf_idx, buf, known, forced, full, final: bool) -> Iterator[FrameFaces]:
        """Detect the buffer's keyframes, fill the gaps between them, yield frames up to the last one."""
        if final:
            forced.add(len(buf) - 1)
        keys = sorted(p for p in forced if p not in known)
        scan = [p for p in keys if p in full or not self.regional]
        self._detect_at(buf, known, scan)
        # The other keyframes: around the faces of the latest frame known before each.
        self._detect_around(
            buf, known, {p: known[max(q for q in known if q < p)] for p in keys if p not in scan}
        )
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
            self._detect_midpoints(buf, known, split, midpoints)
            gaps = [g for (a, b), m in zip(split, midpoints, strict=True) for g in ((a, m), (m, b))]
        start = 1 if buf[0] is None else 0  # position 0 is the anchor, already yielded, or the first frame
        for p in range(start, points[-1] + 1):
            det = known.get(p)
            boxes, probs, marks = det if det is not None else fills.get(p, _empty())
            yield FrameFaces(buf_idx[p], buf[p], boxes, probs, det is not None, marks)
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

    def _detect_midpoints(self, buf, known, gaps, midpoints) -> None:
        """Bisection's detections. Where both ends have as many confident faces, the faces are known and
        only where they went is not: regions around the boxes halfway between, each face paired with
        the other end's nearest. Where the count changed a face came or went: a full scan."""
        if not self.regional:
            self._detect_at(buf, known, midpoints)
            return
        around, scan = {}, []
        for (a, b), m in zip(gaps, midpoints, strict=True):
            pairs = match_faces(known[a], known[b], self.min_prob, 0.0)
            if pairs:
                around[m] = interpolate(known[a], known[b], pairs, (m - a) / (b - a))
            else:
                scan.append(m)
        self._detect_at(buf, known, scan)
        self._detect_around(buf, known, around)

    def _detect_around(self, buf, known, expected: dict[int, Detection]) -> None:
        """Regions around the ``expected`` confident faces of each position; a full scan where none is
        expected (a face could only be new) or one is lost."""
        hints = {p: det[0][det[1] >= self.min_prob] for p, det in expected.items()}
        scan = [p for p, h in hints.items() if len(h) == 0]
        around = [p for p, h in hints.items() if len(h)]
        if around:
            found = self.detect_regions([buf[p] for p in around], [hints[p] for p in around])
            for p, det in zip(around, found, strict=True):
                if det is None:
                    scan.append(p)
                    self.n_lost += 1
                else:
                    known[p] = as_detection(det)
                    self.n_detected += 1
        self._detect_at(buf, known, sorted(scan))

    def _detect_at(self, buf, known, positions: list[int]) -> None:
        """Full scans of ``positions``."""
        if positions:
            for p, det in zip(positions, self.detect([buf[p] for p in positions]), strict=True):
                known[p] = as_detection(det)
            self.n_detected += len(positions)
            self.n_scanned += len(positions)

    @staticmethod
    def _carry(buf_idx, buf, known):
        """Keep the last keyframe as the next buffer's anchor, and the frames after it."""
        last = max(known)
        anchor = {0: known[last]}
        return buf_idx[last:], buf[last:], anchor, set(), set()
