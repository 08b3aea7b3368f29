"""Tier 1: the windowing function (property-based) and the split rule, no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfpipe import records as R
from dfpipe.windows import SplitRule, WindowSpec, runs_of, segment_video, windows_for_track


@st.composite
def track_rows(draw):
    n = draw(st.integers(0, 120))
    stride = draw(st.sampled_from([1, 2, 3]))
    frames = sorted(draw(st.sets(st.integers(0, 150), max_size=n)))
    frames = [f * stride for f in frames]
    usable = draw(st.lists(st.booleans(), min_size=len(frames), max_size=len(frames)))
    window_len = draw(st.integers(1, 12))
    spec = WindowSpec(
        window_len=window_len,
        window_stride=draw(st.integers(1, 12)),
        min_len=window_len + draw(st.integers(0, 6)),
        remainder=draw(st.sampled_from(["drop", "align_end"])),
    )
    return frames, usable, spec, stride


def reference_runs(frames, usable, stride):
    """An independent, obviously-correct run finder: walk frame by frame."""
    good = {f for f, u in zip(frames, usable, strict=True) if u}
    runs, current = [], []
    for f in sorted(good):
        if current and f - current[-1] == stride:
            current.append(f)
        else:
            if current:
                runs.append(current)
            current = [f]
    if current:
        runs.append(current)
    return runs


@settings(max_examples=300, deadline=None)
@given(track_rows())
def test_windows_lie_inside_one_run_and_have_exact_length(case):
    frames, usable, spec, stride = case
    result = windows_for_track(frames, usable, spec, stride)
    runs = reference_runs(frames, usable, stride)
    good = {f for f, u in zip(frames, usable, strict=True) if u}
    for start, end in result.windows:
        covered = list(range(start, end + 1, stride))
        assert len(covered) == spec.window_len, "every window is exactly window_len frames"
        assert all(f in good for f in covered), "no window spans a gap or an unusable frame"
        run = next(r for r in runs if start in r)
        assert end in run, "a window lies inside one run"
        assert len(run) >= spec.min_len, "runs shorter than min_len yield no window"
    expected_short = [r for r in runs if len(r) < spec.min_len]
    assert result.n_short_runs == len(expected_short)
    assert result.n_runs == len(runs)
    # Every run long enough is covered from its first frame, and with align_end to its last.
    starts = {s for s, _ in result.windows}
    ends = {e for _, e in result.windows}
    for r in runs:
        if len(r) >= spec.min_len:
            assert r[0] in starts
            if spec.remainder == "align_end":
                assert r[-1] in ends


@settings(max_examples=100, deadline=None)
@given(track_rows(), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(case, rnd):
    frames, usable, spec, stride = case
    pairs = list(zip(frames, usable, strict=True))
    rnd.shuffle(pairs)
    shuffled = windows_for_track([p[0] for p in pairs], [p[1] for p in pairs], spec, stride)
    assert shuffled.windows == windows_for_track(frames, usable, spec, stride).windows


@settings(max_examples=100, deadline=None)
@given(track_rows())
def test_duplicated_rows_are_deduplicated(case):
    """Duplicates are de-duplicated (and counted); a frame is usable only if all its rows are."""
    frames, usable, spec, stride = case
    once = windows_for_track(frames, usable, spec, stride)
    twice = windows_for_track(frames + frames, usable + usable, spec, stride)
    assert twice.windows == once.windows and twice.duplicates == len(frames)
    if frames:
        spoiled = windows_for_track(frames + frames[:1], usable + [False], spec, stride)
        assert all(not (s <= frames[0] <= e) for s, e in spoiled.windows)


def test_edge_cases():
    spec = WindowSpec(window_len=4, window_stride=2, min_len=4)
    assert windows_for_track([], [], spec).windows == []
    assert windows_for_track(range(10), [False] * 10, spec).windows == []
    assert windows_for_track([5], [True], spec).windows == []
    # gaps at the start and the end: usable frames 3..12 only
    usable = [3 <= f <= 12 for f in range(16)]
    assert windows_for_track(range(16), usable, spec).windows == [(3, 6), (5, 8), (7, 10), (9, 12)]
    # a missing frame breaks the run even when every present frame is usable
    assert windows_for_track([0, 1, 2, 3, 5, 6, 7, 8], [True] * 8, spec).windows == [(0, 3), (5, 8)]
    assert windows_for_track(range(7), [True] * 7, spec).remainder_frames == 1
    assert windows_for_track(range(7), [True] * 7, WindowSpec(4, 2, 4, "align_end")).windows == [
        (0, 3),
        (2, 5),
        (3, 6),
    ]
    assert runs_of(np.array([0, 2, 4, 7]), np.array([True, True, True, True]), stride=2) == [(0, 2), (3, 3)]
    with pytest.raises(ValueError, match="min_len"):
        WindowSpec(window_len=8, min_len=4)


def test_segment_video_two_tracks_interleaved():
    rows = []
    for f in range(20):
        rows.append((f, 0, "multi_face" if f % 2 else "ok"))
        if f != 9:
            rows.append((f, 1, "multi_face"))
    rows.append((20, None, "no_face"))
    rows.reverse()
    faces = pa.table(
        {
            "video_id": ["v"] * len(rows),
            "frame_idx": pa.array([r[0] for r in rows], pa.int32()),
            "track_id": pa.array([r[1] for r in rows], pa.int32()),
            "flag": [r[2] for r in rows],
        }
    )
    windows, counts = segment_video(faces, ("ok", "multi_face"), WindowSpec(4, 4, 4), stride=1)
    by_track = {0: [], 1: []}
    for w in windows:
        by_track[w["track_id"]].append((w["start_frame"], w["end_frame"]))
    assert by_track[0] == [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19)]
    assert by_track[1] == [(0, 3), (4, 7), (10, 13), (14, 17)]  # frame 9 missing for track 1
    assert counts["n_tracks"] == 2 and counts["n_frames"] == 21
    assert counts["dropped"]["no_face"] == 1
    only_ok, _ = segment_video(faces, ("ok",), WindowSpec(4, 4, 4), stride=1)
    assert only_ok == [], "with ok only, alternating multi_face frames leave no run of 4"


def test_split_rule_groups_fakes_with_originals():
    rule = SplitRule(val_fraction=0.3, test_fraction=0.3)
    for i in range(200):
        original = f"real{i}"
        s = rule.split(original, "p", R.LABEL_REAL, None)
        assert rule.split(f"fake{i}a", "q", R.LABEL_FAKE, original) == s
        assert rule.split(f"fake{i}b", "r", R.LABEL_FAKE, original) == s
    counts = {s: 0 for s in R.SPLITS}
    for i in range(3000):
        counts[rule.split(f"v{i}", "p", R.LABEL_REAL, None)] += 1
    assert 0.25 < counts["val"] / 3000 < 0.35 and 0.25 < counts["test"] / 3000 < 0.35


def test_split_rule_by_parts():
    rule = SplitRule(val_parts=("35-39",), test_parts=("40-49", "holdout"))
    assert rule.split("a", "dfdc_train_part_3", 0, None) == "train"
    assert rule.split("a", "dfdc_train_part_35", 0, None) == "val"
    assert rule.split("a", "dfdc_train_part_49", 1, "b") == "test"
    assert rule.split("a", "holdout", 1, None) == "test"
