"""Tier 1: sparse detection (keyframes, interpolation, bisection, cuts) against a scripted detector."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfpipe.extract.keyframes import KeyframeDetector, match_faces
from dfpipe.extract.tracks import greedy_match, iou_matrix, link_tracks

EMPTY = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


class Script:
    """A detector that knows the truth: ``faces(i)`` gives frame i's faces; frames carry their index."""

    def __init__(self, faces):
        self.faces = faces
        self.calls: list[int] = []  # frames scanned whole, and frames searched in regions
        self.region_calls: list[int] = []
        self.verified = 0

    def frame(self, i: int, shot: int = 0) -> np.ndarray:
        f = np.full((48, 64, 3), 60 * shot, np.uint8)
        f[0, 0, :2] = divmod(i, 256)
        return f

    @staticmethod
    def index(frame: np.ndarray) -> int:
        return int(frame[0, 0, 0]) * 256 + int(frame[0, 0, 1])

    def __call__(self, frames):
        out = []
        for f in frames:
            self.calls.append(self.index(f))
            out.append(self.faces(self.index(f)))
        return out

    def regions(self, frames, hints):
        """What MTCNN in regions around ``hints`` finds: the true faces centred within a region (twice
        the hint's side), or None where a hinted face is not there any more."""
        out = []
        for f, hs in zip(frames, hints, strict=True):
            self.region_calls.append(self.index(f))
            boxes, probs = self.faces(self.index(f))
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = np.zeros(len(boxes), bool)
            lost = False
            for h in hs:
                half = max(h[2] - h[0], h[3] - h[1])
                c = (h[:2] + h[2:]) / 2
                mine = np.all(np.abs(centres - c) <= half, axis=1)
                lost |= not (mine & (iou_matrix(boxes, h[None])[:, 0] >= 0.1)).any() if len(boxes) else True
                inside |= mine
            out.append(None if lost else (boxes[inside], probs[inside]))
        return out

    def verify(self, frames, boxes):
        """The truth about each box: does a face of this frame overlap it?"""
        self.verified += sum(len(b) for b in boxes)
        out = []
        for f, b in zip(frames, boxes, strict=True):
            truth = self.faces(self.index(f))[0]
            out.append(
                iou_matrix(np.asarray(b), truth).max(axis=1) >= 0.5 if len(truth) else np.zeros(len(b), bool)
            )
        return out


def chunks(script, n, chunk=5, shots=lambda i: 0):
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        yield idx, [script.frame(i, shots(i)) for i in idx]


def moving(i: int) -> tuple[np.ndarray, np.ndarray]:
    x = 10.0 + 0.5 * i
    return np.array([[x, 10, x + 40, 50]], np.float32), np.array([0.99], np.float32)


def slow(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A face moving slowly enough that keyframes 16 frames apart agree (IoU >= 0.7)."""
    x = 10.0 + 0.1 * i
    return np.array([[x, 10, x + 40, 50]], np.float32), np.array([0.99], np.float32)


def test_linear_motion_is_interpolated_exactly_with_few_detections():
    script = Script(moving)
    kf = KeyframeDetector(script, every=8, window=16)
    out = list(kf.run(chunks(script, 50)))
    assert [f.index for f in out] == list(range(50))
    for f in out:
        np.testing.assert_allclose(f.boxes, moving(f.index)[0], atol=1e-4)
    assert kf.n_detected == len(script.calls) == len(set(script.calls))  # nothing detected twice
    assert sorted(script.calls) == [0, 8, 16, 24, 32, 40, 48, 49]
    assert [f.index for f in out if f.detected] == sorted(script.calls)


def test_landmarks_move_with_their_face_and_are_interpolated_with_the_box():
    """A detector that gives landmarks: each frame's, detected or interpolated, is where the face's
    are (linear motion); one that gives none yields NaN landmarks, one set per box."""

    def with_marks(i):
        boxes, probs = moving(i)
        offsets = np.array([[12, 15], [28, 15], [20, 25], [14, 33], [26, 33]], np.float32)
        return boxes, probs, (boxes[:, None, :2] + offsets).astype(np.float32)

    script = Script(with_marks)
    out = list(KeyframeDetector(script, every=8, window=16).run(chunks(script, 40)))
    assert not all(f.detected for f in out)
    for f in out:
        np.testing.assert_allclose(f.landmarks, with_marks(f.index)[2], atol=1e-4)
    bare = list(KeyframeDetector(Script(moving), every=8, window=16).run(chunks(Script(moving), 20)))
    assert all(f.landmarks.shape == (1, 5, 2) and np.isnan(f.landmarks).all() for f in bare)


def test_every_one_is_dense_detection():
    script = Script(moving)
    out = list(KeyframeDetector(script, every=1, window=4).run(chunks(script, 13)))
    assert all(f.detected for f in out) and sorted(script.calls) == list(range(13))


def test_a_face_appearing_between_keyframes_is_found_at_its_first_frame():
    def faces(i):
        return moving(i) if 11 <= i < 37 else EMPTY

    script = Script(faces)
    out = list(KeyframeDetector(script, every=8, window=32).run(chunks(script, 48)))
    assert [f.index for f in out if len(f.boxes)] == list(range(11, 37))
    assert len(script.calls) < 48


def test_a_weakening_face_is_redetected_not_interpolated():
    def faces(i):
        box, _ = moving(i)
        return box, np.array([0.99 if i < 20 else 0.5], np.float32)

    script = Script(faces)
    out = list(KeyframeDetector(script, every=8, window=16, min_prob=0.9).run(chunks(script, 33)))
    for f in out:
        if len(f.probs):
            assert (f.probs[0] >= 0.9) == (f.index < 20)
    assert 19 in script.calls and 20 in script.calls


def test_a_scene_cut_is_detected_both_sides_and_ends_tracks():
    script = Script(moving)
    kf = KeyframeDetector(script, every=8, window=16, cut_threshold=40)
    out = list(kf.run(chunks(script, 30, shots=lambda i: int(i >= 13))))
    assert kf.cuts == [13]
    assert {12, 13} <= set(script.calls)
    ids = link_tracks([f.index for f in out], [f.boxes for f in out], cuts=kf.cuts)
    assert {int(t[0]) for t, f in zip(ids, out, strict=True) if f.index < 13} == {0}
    assert {int(t[0]) for t, f in zip(ids, out, strict=True) if f.index >= 13} == {1}


def stream_checked(
    make_detector, n, window, every, chunk, present
) -> tuple[Script, set[int], Callable[[int], bool]]:
    """Runs a detector over faces ``moving`` through the ``present`` spans and checks what holds for
    any schedule: every frame once, in order; frames held never exceed window + every; a box only
    where the face is, and where it is. Returns the script, the boxed frames and ``visible``."""
    spans = [(a, a + length) for a, length in present]

    def visible(i):
        return any(a <= i < b for a, b in spans)

    script = Script(lambda i: moving(i) if visible(i) else EMPTY)
    pulled, seen, boxed = [], [], set()

    def source():
        for idx, frames in chunks(script, n, chunk):
            pulled.extend(idx)
            yield idx, frames

    for f in make_detector(script).run(source()):
        seen.append(f.index)
        assert len(pulled) - len(seen) <= max(window, every) + every + chunk
        if len(f.boxes):
            assert visible(f.index), f"a box on frame {f.index}, where there is no face"
            np.testing.assert_allclose(f.boxes, moving(f.index)[0], atol=1e-3)
            boxed.add(f.index)
    assert seen == list(range(n))
    return script, boxed, visible


@given(
    n=st.integers(1, 90),
    every=st.integers(1, 12),
    window=st.integers(1, 40),
    chunk=st.integers(1, 17),
    present=st.lists(st.tuples(st.integers(0, 90), st.integers(1, 40)), max_size=3),
)
def test_streams_every_frame_once_in_order_within_its_window(n, every, window, chunk, present):
    """Any schedule (see ``stream_checked``); keyframes detected, and the whole of every visible
    stretch of >= ``every`` frames found (the stated minimum duration)."""
    script, boxed, visible = stream_checked(
        lambda s: KeyframeDetector(s, verify=s.verify, every=every, window=window),
        n,
        window,
        every,
        chunk,
        present,
    )
    assert set(range(0, n, every)) | {n - 1} <= set(script.calls)
    for i in {i for i in range(n) if visible(i)}:
        run = [j for j in range(i - every + 1, i + 1) if all(visible(k) for k in range(j, j + every))]
        if any(j >= 0 and j + every <= n for j in run):  # i lies in a visible stretch of >= every frames
            assert i in boxed, f"frame {i} of a face visible for >= {every} frames was missed"


@given(
    n=st.integers(1, 120),
    every=st.integers(1, 12),
    scans=st.integers(1, 6),
    window=st.integers(1, 40),
    chunk=st.integers(1, 17),
    present=st.lists(st.tuples(st.integers(0, 120), st.integers(1, 60)), max_size=3),
)
def test_with_regions_every_frame_once_in_order_and_boxes_only_on_faces(
    n, every, scans, window, chunk, present
):
    """Any schedule with regions (see ``stream_checked``), and a face on a full scan is boxed there."""
    script, boxed, visible = stream_checked(
        lambda s: regional(s, every=every, scan_every=every * scans, window=window),
        n,
        window,
        every,
        chunk,
        present,
    )
    for i in set(script.calls) & {i for i in range(n) if visible(i)}:
        assert i in boxed, f"a face on a full scan ({i}) not boxed"


def test_a_face_hidden_between_agreeing_keyframes_gets_no_boxes_there():
    """Turned away, covered or cut away on frames 5..11: keyframes 0 and 16 agree, the gap does not."""

    def faces(i):
        return EMPTY if 5 <= i <= 11 else slow(i)

    script = Script(faces)
    out = list(KeyframeDetector(script, verify=script.verify, every=16, window=32).run(chunks(script, 33)))
    assert [f.index for f in out if len(f.boxes)] == [i for i in range(33) if not 5 <= i <= 11]
    assert script.verified > 0 and len(script.calls) < 33


def test_without_verification_the_hidden_face_is_interpolated():
    """What verification is for: with no verifier, the hidden frames get boxes (the blind spot it closes)."""

    def faces(i):
        return EMPTY if 5 <= i <= 11 else slow(i)

    script = Script(faces)
    out = list(KeyframeDetector(script, every=16, window=32).run(chunks(script, 33)))
    assert all(len(f.boxes) == 1 for f in out)


def test_a_second_person_entering_between_keyframes_is_found():
    def faces(i):
        a = slow(i)
        if i < 21:
            return a
        b = np.array([[200, 20, 240, 60]], np.float32)
        return np.concatenate([a[0], b]), np.array([0.99, 0.98], np.float32)

    script = Script(faces)
    out = list(KeyframeDetector(script, verify=script.verify, every=16, window=32).run(chunks(script, 48)))
    assert [f.index for f in out if len(f.boxes) == 2] == list(range(21, 48))
    assert all(len(f.boxes) == 1 for f in out if f.index < 21)


def test_match_faces_needs_same_confident_faces():
    a = (np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([0.99, 0.95], np.float32))
    b = (np.array([[51, 50, 61, 60], [1, 0, 11, 10]], np.float32), np.array([0.97, 0.99], np.float32))
    assert match_faces(a, b, min_prob=0.9, agree_iou=0.6) == [(0, 1), (1, 0)]
    assert match_faces(a, (b[0][:1], b[1][:1]), 0.9, 0.6) is None  # a face left
    far = (b[0] + 8, b[1])
    assert match_faces(a, far, 0.9, 0.6) is None  # moved too far to interpolate
    weak = (b[0], np.array([0.97, 0.5], np.float32))
    assert match_faces(a, weak, 0.9, 0.6) is None  # one weakened below min_prob


def test_greedy_match_takes_best_overlap_first():
    ious = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_match(ious, 0.5) == [(0, 0)]
    assert greedy_match(ious, 0.05) == [(0, 0), (1, 1)]


def regional(script, **settings) -> KeyframeDetector:
    return KeyframeDetector(script, verify=script.verify, detect_regions=script.regions, **settings)


def test_between_full_scans_keyframes_search_only_around_known_faces():
    script = Script(moving)
    kf = regional(script, every=8, scan_every=32, window=16)
    out = list(kf.run(chunks(script, 100)))
    assert [f.index for f in out] == list(range(100))
    for f in out:
        np.testing.assert_allclose(f.boxes, moving(f.index)[0], atol=1e-4)
    assert sorted(script.calls) == [0, 32, 64, 96]  # the whole frame only every 32 frames
    assert {8, 16, 24, 40, 48, 56, 72, 80, 88, 99} <= set(script.region_calls)
    assert kf.n_scanned == 4 and kf.n_lost == 0 and kf.n_detected == 4 + len(set(script.region_calls))


def test_without_regions_every_keyframe_is_a_full_scan():
    script = Script(moving)
    list(KeyframeDetector(script, every=8, scan_every=32, window=16).run(chunks(script, 50)))
    assert sorted(script.calls) == [0, 8, 16, 24, 32, 40, 48, 49]
    script = Script(moving)
    list(regional(script, every=8, scan_every=8, window=16).run(chunks(script, 50)))
    assert sorted(script.calls) == [0, 8, 16, 24, 32, 40, 48, 49] and not script.region_calls


@pytest.mark.parametrize("enters", [33, 37, 45, 56, 57, 64, 70])
def test_a_face_entering_between_scans_is_seen_from_the_last_keyframe_before_the_next_scan(enters):
    """The blind spot regions add, in numbers: at most ``scan_every - every`` frames of a new face."""
    every, scan_every = 8, 32

    def faces(i):
        a = slow(i)
        if i < enters:
            return a
        b = np.array([[200, 20, 240, 60]], np.float32)
        return np.concatenate([a[0], b]), np.array([0.99, 0.98], np.float32)

    script = Script(faces)
    out = list(regional(script, every=every, scan_every=scan_every, window=16).run(chunks(script, 120)))
    seen = [f.index for f in out if len(f.boxes) == 2]
    next_scan = -(-enters // scan_every) * scan_every
    first = enters if enters % scan_every == 0 else max(enters, next_scan - every + 1)
    assert seen == list(range(first, 120)), "found from the frame after the last keyframe before the scan on"
    assert first - enters <= scan_every - every
    assert all(len(f.boxes) >= 1 for f in out)


def test_a_face_that_comes_and_goes_between_scans_is_missed_with_regions_and_found_without():
    def faces(i):
        a = slow(i)
        if not 38 <= i < 60:
            return a
        b = np.array([[200, 20, 240, 60]], np.float32)
        return np.concatenate([a[0], b]), np.array([0.99, 0.98], np.float32)

    script = Script(faces)
    out = list(regional(script, every=8, scan_every=32, window=16).run(chunks(script, 100)))
    assert all(len(f.boxes) == 1 for f in out)
    script = Script(faces)
    out = list(regional(script, every=8, scan_every=8, window=16).run(chunks(script, 100)))
    assert [f.index for f in out if len(f.boxes) == 2] == list(range(38, 60))


def test_a_face_lost_by_its_region_is_scanned_for_in_the_whole_frame():
    """A jump no region covers (the face moved far between two keyframes): the frame is scanned whole."""

    def faces(i):
        x = 10.0 if i < 20 else 300.0
        return np.array([[x, 10, x + 40, 50]], np.float32), np.array([0.99], np.float32)

    script = Script(faces)
    kf = regional(script, every=8, scan_every=64, window=16)
    out = list(kf.run(chunks(script, 40)))
    for f in out:
        np.testing.assert_allclose(f.boxes, faces(f.index)[0])
    assert 24 in script.region_calls and 24 in script.calls and kf.n_lost >= 1
    assert {19, 20} <= set(script.calls)  # where the face jumped, found by full scans


def test_frames_without_a_face_are_scanned_whole_so_a_first_face_is_found_from_its_first_frame():
    def faces(i):
        return moving(i) if i >= 21 else EMPTY

    script = Script(faces)
    out = list(regional(script, every=8, scan_every=64, window=16).run(chunks(script, 60)))
    assert [f.index for f in out if len(f.boxes)] == list(range(21, 60))
    assert {8, 16, 24} <= set(script.calls)


@pytest.mark.parametrize("bad", [dict(every=0), dict(window=0), dict(scan_every=-1)])
def test_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        KeyframeDetector(lambda frames: [], **bad)


@given(
    stride=st.integers(1, 30),
    max_gap=st.integers(1, 8),
    n=st.integers(2, 60),
    drift=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_a_face_on_every_sampled_frame_is_one_track_at_any_stride(stride, max_gap, n, drift, seed):
    """The gap rule counts sampled frames: a steady face seen on every kept frame never splits."""
    rng = np.random.default_rng(seed)
    frames = [k * stride for k in range(n)]
    boxes = [
        np.array(
            [[100 + drift * k + rng.normal(0, 1), 80 + rng.normal(0, 1), 180 + drift * k, 170]], np.float32
        )
        for k in range(n)
    ]
    ids = link_tracks(frames, boxes, max_gap=max_gap, frame_step=stride)
    assert {int(t[0]) for t in ids} == {0}


def test_the_gap_is_counted_in_sampled_frames():
    box = np.array([[10, 10, 50, 50]], np.float32)
    frames = [0, 6, 12, 18, 36]  # stride 6: gaps of 1, 1, 1 and 3 sampled frames
    assert [int(t[0]) for t in link_tracks(frames, [box] * 5, max_gap=3, frame_step=6)] == [0] * 5
    assert [int(t[0]) for t in link_tracks(frames, [box] * 5, max_gap=2, frame_step=6)] == [0, 0, 0, 0, 1]
