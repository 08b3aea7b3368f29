"""One model call for the work of many threads: how a GPU sees batches when each video streams alone.

With keyframe detection a video asks the detector for one frame or a few at a time; on a GPU such a
call leaves the device idle. A worker that processes several videos at once (one thread each) wraps
the detector in a :class:`CallBatcher`: each thread calls it as it would call the detector, and the
requests that arrive together run as one call, split back per thread afterwards.

A batch runs as soon as every thread that takes part is waiting on it (nothing more can come), or
when it holds ``max_items``, or when its oldest request has waited ``max_wait`` seconds (a thread
busy decoding does not hold the others for long). Items are grouped by ``key`` (MTCNN needs frames
of one size per call), one call per group. An exception in a call is raised in each thread whose
items were in it, so a bad video fails alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Request:
    args: tuple[list, ...]
    since: float = field(default_factory=time.monotonic)
    result: list | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def n(self) -> int:
        return len(self.args[0])


class CallBatcher:
    """Calls ``fn(*lists) -> list`` (one result per item) on the items of concurrent callers.

    Threads that will call it are registered (:meth:`enter` before they start, :meth:`leave` when
    done, or :meth:`member` around their work), so the batcher knows how many requests can still
    come. A caller outside any member counts as one.
    """

    def __init__(
        self,
        fn: Callable[..., list],
        max_items: int = 64,
        max_wait: float = 0.05,
        key: Callable[[Any], Hashable] | None = None,
    ):
        self.fn, self.max_items, self.max_wait, self.key = fn, max(1, max_items), max_wait, key
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._members = 0
        self._running = False
        self.n_calls = 0  # calls of fn, and the items they carried
        self.n_items = 0

    def enter(self, n: int = 1) -> None:
        """``n`` more threads will call: register them before they start, or the first calls go out
        before the others have arrived."""
        with self._cv:
            self._members += n

    def leave(self) -> None:
        """A thread that will not call again."""
        with self._cv:
            self._members -= 1
            self._cv.notify_all()  # waiting requests may now be all there is

    @contextmanager
    def member(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def __call__(self, *args: list) -> list:
        req = _Request(args)
        if req.n == 0:
            return []
        with self._cv:
            self._pending.append(req)
            self._cv.notify_all()
            while not req.done:
                wait = self._ready()
                if wait is None:
                    batch = self._take()
                    self._running = True
                    self._cv.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cv.acquire()
                        self._running = False
                        self._cv.notify_all()
                else:
                    self._cv.wait(timeout=wait)
        if req.error is not None:
            raise req.error
        return req.result

    def _ready(self) -> float | None:
        """None when a batch should run now (by this thread), else how long to wait at most."""
        if self._running or not self._pending:
            return self.max_wait
        if len(self._pending) >= max(1, self._members) or sum(r.n for r in self._pending) >= self.max_items:
            return None
        waited = time.monotonic() - self._pending[0].since
        return None if waited >= self.max_wait else self.max_wait - waited

    def _take(self) -> list[_Request]:
        """The oldest requests up to ``max_items`` (at least one)."""
        batch, n = [], 0
        while self._pending and (not batch or n + self._pending[0].n <= self.max_items):
            req = self._pending.pop(0)
            batch.append(req)
            n += req.n
        return batch

    def _run(self, batch: list[_Request]) -> None:
        groups: dict[Hashable, list[tuple[_Request, int]]] = {}
        for req in batch:
            req.result = [None] * req.n
            for i in range(req.n):
                k = self.key(req.args[0][i]) if self.key else None
                groups.setdefault(k, []).append((req, i))
        for members in groups.values():
            n_args = len(members[0][0].args)
            lists = [[req.args[a][i] for req, i in members] for a in range(n_args)]
            try:
                results = self.fn(*lists)
                if len(results) != len(members):
                    raise RuntimeError(
                        f"batched call returned {len(results)} results for {len(members)} items"
                    )
            except Exception as exc:  # noqa: BLE001 - handed to each caller of the group
                for req, _ in members:
                    req.error = exc
                continue
            self.n_calls += 1
            self.n_items += len(members)
            for (req, i), res in zip(members, results, strict=True):
                req.result[i] = res
        for req in batch:
            req.done = True
