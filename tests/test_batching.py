"""Tier 1: concurrent callers share model calls (the GPU path of extraction), results go back to each."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dfpipe.extract.batching import CallBatcher
from dfpipe.extract.keyframes import KeyframeDetector


class Recorder:
    """A model call that doubles numbers and remembers what each call carried."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[list] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.calls.append(list(items))
        time.sleep(self.delay)
        if any(isinstance(i, str) for i in items):
            raise ValueError("bad item")
        return [2 * i for i in items]


def run_members(batcher: CallBatcher, work: list[list[list]]) -> list[list]:
    """Each worker submits its requests in order, as a video's keyframe detector would."""

    def worker(requests):
        try:
            return [batcher(r) for r in requests]
        finally:
            batcher.leave()

    batcher.enter(len(work))  # as process_many does: every worker counts before any starts
    with ThreadPoolExecutor(len(work)) as pool:
        return list(pool.map(worker, work))


def test_concurrent_callers_share_calls_and_get_their_own_results():
    fn = Recorder(delay=0.01)
    batcher = CallBatcher(fn, max_items=64, max_wait=1.0)
    work = [[[100 * w + k] for k in range(6)] for w in range(8)]  # 8 videos, 6 one-frame requests each
    results = run_members(batcher, work)
    assert results == [[[2 * x for x in r] for r in reqs] for reqs in work]
    sizes = [len(c) for c in fn.calls]
    assert sum(sizes) == 48
    # Every worker waits on the others, so calls carry all eight videos' frames, not one.
    assert max(sizes) == 8
    assert len(fn.calls) <= 12, sizes
    assert batcher.n_calls == len(fn.calls) and batcher.n_items == 48


def test_a_finished_member_does_not_hold_the_others():
    fn = Recorder()
    batcher = CallBatcher(fn, max_items=64, max_wait=30.0)  # a wait this long would show as a hang
    work = [[[1]], [[2], [3], [4], [5]]]
    started = time.monotonic()
    results = run_members(batcher, work)
    assert results == [[[2]], [[4], [6], [8], [10]]]
    assert time.monotonic() - started < 10


def test_max_items_caps_a_call_and_max_wait_bounds_a_straggler():
    fn = Recorder()
    batcher = CallBatcher(fn, max_items=3, max_wait=0.05)
    results = run_members(batcher, [[[i, i + 1]] for i in range(0, 12, 2)])
    assert sorted(x for r in results for x in r[0]) == [2 * i for i in range(12)]
    assert max(len(c) for c in fn.calls) <= 3

    # A member that never submits (still decoding) delays the others by max_wait, not forever.
    slow = CallBatcher(Recorder(), max_wait=0.05)
    gate = threading.Event()

    def idle():
        with slow.member():
            gate.wait(5)

    t = threading.Thread(target=idle)
    t.start()
    time.sleep(0.02)
    with slow.member():
        started = time.monotonic()
        assert slow([7]) == [14]
        assert time.monotonic() - started < 2
    gate.set()
    t.join()


def test_items_of_different_keys_never_share_a_call():
    fn = Recorder()
    batcher = CallBatcher(fn, max_wait=1.0, key=lambda x: x % 2)
    results = run_members(batcher, [[[1, 2]], [[3, 4]], [[5]]])
    assert results == [[[2, 4]], [[6, 8]], [[10]]]
    for call in fn.calls:
        assert len({x % 2 for x in call}) == 1


def test_a_failing_call_fails_only_the_callers_in_it():
    fn = Recorder()
    batcher = CallBatcher(fn, max_wait=1.0, key=type)
    outcomes = []

    def worker(item):
        with batcher.member():
            try:
                outcomes.append(("ok", batcher([item])))
            except ValueError as exc:
                outcomes.append(("error", str(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (1, "x", 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) == sorted([("ok", [2]), ("ok", [4]), ("error", "bad item")], key=str)


def test_keyframe_detectors_of_several_videos_give_the_same_boxes_batched():
    """Eight videos' keyframe detectors through one batcher: every frame's boxes as when run alone,
    with detector calls carrying several videos' keyframes."""

    def faces(video: int, i: int):
        x = 5.0 + video + 0.7 * i
        if (i // 23) % 2 and video % 2:  # the face leaves for a while in odd videos: bisection
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        return np.array([[x, 10, x + 30, 40]], np.float32), np.array([0.99], np.float32)

    def frame(video, i):
        f = np.zeros((24, 32, 3), np.uint8)
        f[0, 0, :3] = (video, *divmod(i, 256))
        return f

    def detect(frames):
        return [faces(int(f[0, 0, 0]), int(f[0, 0, 1]) * 256 + int(f[0, 0, 2])) for f in frames]

    def stream(video):
        for s in range(0, 100, 8):
            idx = list(range(s, min(100, s + 8)))
            yield idx, [frame(video, i) for i in idx]

    def regions(frames, hints):
        """The face where a hint is, or None where the hinted face is gone."""
        out = []
        for f, hs in zip(frames, hints, strict=True):
            found = detect([f])[0]
            near = len(found[0]) and all(abs(found[0][0, 0] - h[0]) < 30 for h in hs)
            out.append(found if near else None)
        return out

    def boxes(detect_fn, regions_fn, video):
        kd = KeyframeDetector(
            detect_fn, detect_regions=regions_fn, every=8, scan_every=32, window=8, cut_threshold=1e9
        )
        return [(f.index, f.boxes.round(3).tolist()) for f in kd.run(stream(video))]

    alone = [boxes(detect, regions, v) for v in range(8)]
    counted, counted_regions = Recorder(), Recorder()

    def counting(frames):
        counted.calls.append(len(frames))
        return detect(frames)

    def counting_regions(frames, hints):
        counted_regions.calls.append(len(frames))
        return regions(frames, hints)

    batcher = CallBatcher(counting, max_items=64, max_wait=1.0, key=lambda f: f.shape)
    region_batcher = CallBatcher(counting_regions, max_items=64, max_wait=1.0)

    def one(video):
        try:
            return boxes(batcher, region_batcher, video)
        finally:
            batcher.leave()
            region_batcher.leave()

    batcher.enter(8)
    region_batcher.enter(8)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    assert together == alone
    assert max(counted.calls) >= 8, counted.calls
    assert max(counted_regions.calls) >= 4, counted_regions.calls


def test_an_empty_request_is_answered_at_once():
    fn = Recorder()
    assert CallBatcher(fn)([]) == []
    assert fn.calls == []
