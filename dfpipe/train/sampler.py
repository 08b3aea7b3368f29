"""Training batches that span many videos: P videos x K rows per batch, from a bounded buffer.

Faces (or windows) of one video share an identity, a background and the lighting. A batch that
holds one or two videos teaches a triplet or BCE loss which video a face came from, not what
separates REAL from FAKE. :func:`video_batches` draws every batch from ``size // per_video``
distinct videos (``per_video`` rows each) out of a buffer of ``buffer_rows`` rows that it keeps
full from a stream, so it needs neither the whole dataset in memory nor an index of it.

Why a sampler and not only a shuffle: a shuffled stream puts about ``size`` different videos in
a batch when there are many videos, but with few videos per class (a small corpus, a worker's
share of a small one) chance leaves some batches with three or four. The sampler picks the videos
with the most rows left in the buffer (ties at random), so videos run down together and every
batch holds as many distinct videos as the buffer has, up to ``size // per_video``.

The stream should arrive shuffled across videos (the jobs shuffle the rows once, seeded, before
training; ``runner.shuffled``), so the buffer holds a sample of all videos rather than the next
few in storage order. Rows left when a pass ends are carried into the next pass. Ray-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

BUFFER_BATCHES = 32  # default buffer: this many batches' worth of rows


def video_batches(
    passes: Iterable[Iterable[dict[str, np.ndarray]]],
    size: int,
    per_video: int = 2,
    rng: np.random.Generator | None = None,
    buffer_rows: int | None = None,
    key: str = "video_id",
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``size`` rows, ``per_video`` from each of ``size // per_video`` videos.

    ``passes`` yields passes over a dataset, each an iterable of column batches (dicts of equal-length
    arrays with a ``key`` column); it may be endless (training) or finite (then the buffer is
    drained at the end, the last batch possibly short). When a pass ends with more than ``size``
    rows buffered, batches are drawn down to fewer than ``size`` rows, so a pass smaller than the
    buffer is still used whole each time.
    """
    if size < 1 or per_video < 1:
        raise ValueError("size and per_video must be >= 1")
    rng = rng if rng is not None else np.random.default_rng()
    buffer = _Buffer(key)
    limit = buffer_rows or BUFFER_BATCHES * size
    for chunks in passes:
        for chunk in chunks:
            buffer.add(chunk)
            while buffer.rows >= max(limit, size):
                yield buffer.draw(size, per_video, rng)
        while buffer.rows >= size:
            yield buffer.draw(size, per_video, rng)
    while buffer.rows:
        yield buffer.draw(size, per_video, rng)


class _Buffer:
    """Rows grouped by video; each row is a tuple of column values (columns fixed by the first chunk)."""

    def __init__(self, key: str):
        self.key = key
        self.columns: list[str] | None = None
        self.videos: dict[object, list[tuple]] = {}
        self.rows = 0

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        if self.key not in chunk:
            raise KeyError(f"training rows need a {self.key!r} column to mix videos in a batch")
        if self.columns is None:
            self.columns = list(chunk)
        cols = [chunk[c] for c in self.columns]
        for i, video in enumerate(chunk[self.key]):
            self.videos.setdefault(video, []).append(tuple(c[i] for c in cols))
        self.rows += len(chunk[self.key])

    def draw(self, size: int, per_video: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        names = list(self.videos)
        left = np.array([len(self.videos[v]) for v in names], np.float64)
        # The videos with the most rows left, ties broken at random: they run down together.
        order = np.argsort(-(left + rng.random(len(names))))
        picked: list[tuple] = []
        want = size
        for take in (per_video, size):  # per_video rows of the chosen videos, then top up from any
            for i in order:
                if want == 0:
                    break
                rows = self.videos[names[i]]
                n = min(take, len(rows), want)
                if n == 0:
                    continue
                for j in sorted(rng.choice(len(rows), n, replace=False).tolist(), reverse=True):
                    picked.append(rows.pop(j))
                want -= n
        for v in names:
            if not self.videos[v]:
                del self.videos[v]
        self.rows -= len(picked)
        rng.shuffle(picked)
        return {c: _column([r[k] for r in picked]) for k, c in enumerate(self.columns or [])}


def _column(values: list) -> np.ndarray:
    """One column's values as a batch holds them: equal-shape arrays stacked, nested values (lists,
    ragged arrays) and bytes in an object array (one entry per row), scalars and strings as they are."""
    first = values[0]
    if isinstance(first, np.ndarray) and first.dtype != object:
        if all(isinstance(v, np.ndarray) and v.shape == first.shape for v in values):
            return np.stack(values)
    if isinstance(first, (np.ndarray, list, tuple, bytes)):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)
