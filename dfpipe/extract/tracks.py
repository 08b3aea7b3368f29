"""Link per-frame face boxes into tracks by box overlap, so two people are two tracks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n,4) with every box in ``b`` (m,4), boxes as x1, y1, x2, y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a = a[:, None, :].astype(np.float32)
    b = b[None, :, :].astype(np.float32)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-6)


def greedy_match(ious: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs (row, column) taken best-overlap first, each row and column at most once, IoU >= ``min_iou``.

    Ties break by row then column, so the result is deterministic.
    """
    order = sorted(
        ((float(ious[i, j]), i, j) for i in range(ious.shape[0]) for j in range(ious.shape[1])),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    rows: set[int] = set()
    cols: set[int] = set()
    pairs = []
    for score, i, j in order:
        if score < min_iou:
            break
        if i in rows or j in cols:
            continue
        rows.add(i)
        cols.add(j)
        pairs.append((i, j))
    return pairs


def link_tracks(
    frame_indices: list[int],
    boxes: list[np.ndarray],
    min_iou: float = 0.3,
    max_gap: int = 5,
    cuts: Iterable[int] = (),
    frame_step: int = 1,
) -> list[np.ndarray]:
    """Track ids for each frame's boxes (same shapes as ``boxes``), matching greedily by IoU.

    ``frame_indices`` are frame numbers of the video, ``frame_step`` apart when every
    ``frame_step``-th frame was decoded. A box joins the track whose last box overlaps it most (at
    least ``min_iou``) and was seen at most ``max_gap`` *sampled* frames ago (``max_gap *
    frame_step`` frame numbers), so the rule means the same at every stride; otherwise it starts a
    new track. No track continues into a frame listed in ``cuts`` (the first frame of a new shot).
    Ids count up from 0 in order of first appearance, so the result is deterministic.
    """
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    reach = max_gap * frame_step
    cuts = set(cuts)
    last_box: list[np.ndarray] = []
    last_frame: list[int] = []
    out: list[np.ndarray] = []
    shot_start = 0
    for frame, frame_boxes in zip(frame_indices, boxes, strict=True):
        if frame in cuts:
            shot_start = len(last_box)  # tracks of earlier shots are closed
        ids = np.full(len(frame_boxes), -1, dtype=np.int32)
        live = [t for t in range(shot_start, len(last_box)) if frame - last_frame[t] <= reach]
        if len(frame_boxes) and live:
            ious = iou_matrix(np.asarray(frame_boxes), np.stack([last_box[t] for t in live]))
            for i, j in greedy_match(ious, min_iou):
                ids[i] = live[j]
        for i in range(len(frame_boxes)):
            if ids[i] < 0:
                ids[i] = len(last_box)
                last_box.append(np.asarray(frame_boxes[i]))
                last_frame.append(frame)
            else:
                last_box[ids[i]] = np.asarray(frame_boxes[i])
                last_frame[ids[i]] = frame
        out.append(ids)
    return out
