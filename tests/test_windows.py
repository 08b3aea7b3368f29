"""Tier 1: the windowing function (property-based) and the split rule, no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfpipe import records as R
from dfpipe.segment.windows import SplitRule, TrackRule, WindowSpec, runs_of, segment_video, windows_for_track


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
        assert len(run) >= spec.min_run, "runs shorter than min_len yield no window"
    expected_short = [r for r in runs if len(r) < spec.min_run]
    assert result.n_short_runs == len(expected_short)
    assert result.n_runs == len(runs)
    # Every run long enough is covered from its first frame, and with align_end to its last.
    starts = {s for s, _ in result.windows}
    ends = {e for _, e in result.windows}
    for r in runs:
        if len(r) >= spec.min_run:
            assert r[0] in starts
            if spec.remainder == "align_end":
                assert r[-1] in ends


@given(track_rows(), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(case, rnd):
    frames, usable, spec, stride = case
    pairs = list(zip(frames, usable, strict=True))
    rnd.shuffle(pairs)
    shuffled = windows_for_track([p[0] for p in pairs], [p[1] for p in pairs], spec, stride)
    assert shuffled.windows == windows_for_track(frames, usable, spec, stride).windows


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
    assert windows_for_track(
        range(7), [True] * 7, WindowSpec(window_len=4, window_stride=2, min_len=4, remainder="align_end")
    ).windows == [
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
    windows, counts = segment_video(
        faces, ("ok", "multi_face"), WindowSpec(window_len=4, window_stride=4, min_len=4), stride=1
    )
    by_track = {0: [], 1: []}
    for w in windows:
        by_track[w["track_id"]].append((w["start_frame"], w["end_frame"]))
    assert by_track[0] == [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19)]
    assert by_track[1] == [(0, 3), (4, 7), (10, 13), (14, 17)]  # frame 9 missing for track 1
    assert counts["n_tracks"] == 2 and counts["n_frames"] == 21
    assert counts["dropped"]["no_face"] == 1
    only_ok, _ = segment_video(faces, ("ok",), WindowSpec(window_len=4, window_stride=4, min_len=4), stride=1)
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


def _faces(tracks: dict[int, tuple[range, float, float]], n_frames: int) -> pa.Table:
    """Face rows: per track (frames, box side in px, probability); frames with no face get a null row."""
    rows = []
    for t, (frames, side, prob) in tracks.items():
        rows += [
            (f, t, "multi_face" if len(tracks) > 1 else "ok", prob, 10.0, 10.0, 10 + side, 10 + side)
            for f in frames
        ]
    covered = {r[0] for r in rows}
    rows += [(f, None, "no_face", None, None, None, None, None) for f in range(n_frames) if f not in covered]
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "video_id": ["v"] * len(rows),
            "frame_idx": pa.array(cols[0], pa.int32()),
            "track_id": pa.array(cols[1], pa.int32()),
            "flag": list(cols[2]),
            "prob": pa.array(cols[3], pa.float32()),
            "box_x1": pa.array(cols[4], pa.float32()),
            "box_y1": pa.array(cols[5], pa.float32()),
            "box_x2": pa.array(cols[6], pa.float32()),
            "box_y2": pa.array(cols[7], pa.float32()),
        }
    )


def test_track_rule_counts_the_people_not_the_posters():
    faces = _faces(
        {
            0: (range(0, 40), 150.0, 0.999),  # the main person
            1: (range(0, 40), 50.0, 0.999),  # a poster on the wall: a third of the main face
            2: (range(10, 16), 140.0, 0.99),  # a shoulder for six frames
            3: (range(0, 40), 120.0, 0.80),  # a blurred face behind: weak detections
            4: (range(20, 40), 130.0, 0.99),  # a second person entering half-way
        },
        40,
    )
    windows, counts = segment_video(
        faces, ("ok", "multi_face"), WindowSpec(window_len=4, window_stride=4, min_len=4), 1, TrackRule()
    )
    verdict = {t["track_id"]: (t["counted"], (t["reason"] or "").split(":")[0]) for t in counts["tracks"]}
    assert verdict == {
        0: (True, ""),
        1: (False, "small"),
        2: (False, "short"),
        3: (False, "weak"),
        4: (True, ""),
    }
    assert counts["n_tracks_counted"] == 2
    assert {w["track_id"] for w in windows if w["counted"]} == {0, 4}
    assert {w["track_id"] for w in windows if not w["counted"]} == {1, 2, 3}, (
        "left-out tracks keep their windows"
    )
    by_id = {t["track_id"]: t for t in counts["tracks"]}
    assert by_id[1]["face_px"] == pytest.approx(50) and by_id[2]["share"] == pytest.approx(6 / 40)


def test_track_rule_keeps_the_best_track_when_none_passes():
    faces = _faces({0: (range(0, 6), 100.0, 0.99), 1: (range(10, 14), 120.0, 0.99)}, 60)
    _, counts = segment_video(
        faces, ("ok", "multi_face"), WindowSpec(window_len=4, window_stride=4, min_len=4), 1, TrackRule()
    )
    assert [t["counted"] for t in counts["tracks"]] == [True, False]  # 6 x 100 px beats 4 x 120 px


def test_a_poster_never_decides_the_video():
    """The poster's windows look FAKE, the person's REAL: the video is REAL. Before the track rule,
    the most suspicious track (the poster) decided."""
    from dfpipe.score.stage import VideoRule, video_row

    video = {"video_id": "v", "status": R.STATUS_OK, "n_tracks": 2, "n_tracks_counted": 1}
    windows = [{"track_id": 0, "start_frame": s, "logit": -3.0, "counted": True} for s in (0, 4, 8)]
    windows += [{"track_id": 1, "start_frame": s, "logit": 4.0, "counted": False} for s in (0, 4, 8)]
    row, probs = video_row(video, windows, {"temperature": 1.0}, VideoRule(), "m", "now")
    assert row["prob_fake"] == pytest.approx(1 / (1 + np.exp(3.0)), rel=1e-4)
    assert row["n_tracks_counted"] == 1 and len(probs) == 6
    none_counted = [{**w, "counted": False} for w in windows]
    row, _ = video_row(video, none_counted, {"temperature": 1.0, "prior_fake": 0.4}, VideoRule(), "m", "now")
    assert row["prob_fake"] == pytest.approx(0.5) and row["reason"].startswith("no_counted_window")
    rule = VideoRule(fallback="train")
    row, _ = video_row(video, none_counted, {"temperature": 1.0, "prior_fake": 0.4}, rule, "m", "now")
    assert row["prob_fake"] == pytest.approx(0.4)


def test_a_confident_video_probability_is_clipped_and_the_window_probabilities_are_not():
    """Windows sure either way (logits of +-20) give a video probability at the rule's bounds, never 0
    or 1 (one confident mistake would dominate log loss); the windows keep their own probabilities."""
    from dfpipe.score.stage import VideoRule, video_row

    video = {"video_id": "v", "status": R.STATUS_OK, "n_tracks": 1, "n_tracks_counted": 1}
    for logit, bound in ((20.0, 0.99), (-20.0, 0.01)):
        windows = [{"track_id": 0, "start_frame": s, "logit": logit, "counted": True} for s in (0, 4)]
        row, probs = video_row(video, windows, {"temperature": 1.0}, VideoRule(), "m", "now")
        assert row["prob_fake"] == pytest.approx(bound, abs=1e-12), (logit, row["prob_fake"])
        assert all(abs(p - bound) > 0.009 for p in probs), "window probabilities are not clipped"
    windows = [{"track_id": 0, "start_frame": 0, "logit": 20.0, "counted": True}]
    row, _ = video_row(
        video, windows, {"temperature": 1.0}, VideoRule(clip_low=0.2, clip_high=0.7), "m", "now"
    )
    assert row["prob_fake"] == pytest.approx(0.7)
    # The fallback of a video with no window is clipped too.
    failed = {**video, "status": R.STATUS_FAILED, "error": "x"}
    row, _ = video_row(failed, [], {}, VideoRule(prior_fake=0.999), "m", "now")
    assert row["prob_fake"] == pytest.approx(0.99)


@pytest.mark.parametrize(
    "bad", [dict(track_min_share=1.5), dict(track_min_mean_prob=-0.1), dict(track_min_relative_size=2)]
)
def test_track_rule_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        TrackRule(**bad)


def test_one_prior_shifts_probabilities_and_the_fallback_together():
    """The model is calibrated for 0.5 FAKE; prior_fake moves every probability by Bayes' rule and the
    fallback to the same value, and a prior equal to the calibrated one changes nothing."""
    from dfpipe.score.stage import VideoRule, video_row
    from dfpipe.train.calibration import prior_shift

    video = {"video_id": "v", "status": R.STATUS_OK, "n_tracks": 1, "n_tracks_counted": 1}
    windows = [{"track_id": 0, "start_frame": 0, "logit": 0.0, "counted": True}]
    meta = {"temperature": 2.0, "prior_fake": 0.3}
    assert video_row(video, windows, meta, VideoRule(), "m", "now")[0]["prob_fake"] == pytest.approx(0.5)
    row, probs = video_row(video, windows, meta, VideoRule(prior_fake=0.84), "m", "now")
    assert row["prob_fake"] == pytest.approx(0.84) and probs[0] == pytest.approx(0.84)
    odds = 3.0 * (0.84 / 0.16)  # a window at odds 3:1 for a balanced prior, at a prior of 0.84
    windows[0]["logit"] = 2.0 * np.log(3.0)
    row, _ = video_row(video, windows, meta, VideoRule(prior_fake=0.84, clip_high=1.0), "m", "now")
    assert row["prob_fake"] == pytest.approx(odds / (1 + odds))
    empty = {**video, "status": R.STATUS_FAILED, "error": "x"}
    assert video_row(empty, [], meta, VideoRule(prior_fake=0.84), "m", "now")[0][
        "prob_fake"
    ] == pytest.approx(0.84)
    assert prior_shift(0.5) == 0.0
    with pytest.raises(ValueError, match="prior_fake"):
        VideoRule(prior_fake=1.0)


def test_the_video_calibration_is_fitted_for_a_balanced_prior():
    """With five FAKE videos per REAL one, the balanced fit is the plain fit on a set where each REAL
    video counts five times (up to the smoothing, which counts videos): the probabilities assume 0.5
    FAKE whatever the validation ratio. The offset takes the logits' bias towards FAKE out."""
    from dfpipe.train.calibration import fit_calibration

    rng = np.random.default_rng(0)
    n_real, n_fake = 20, 100
    y = np.r_[np.zeros(n_real), np.ones(n_fake)]
    logits = np.where(y == 1, 1.0, -1.0) * 4 + rng.normal(0, 3, len(y)) + 1.5  # biased towards FAKE
    videos = np.array([f"v{i}" for i in range(len(y))])
    tracks = np.zeros(len(y), int)
    bal = fit_calibration(logits, y, videos, tracks, "mean", balanced=True)
    copies = np.r_[np.repeat(np.arange(n_real), 5), np.arange(n_real, len(y))]
    vids = np.array([f"c{i}" for i in range(len(copies))])
    rep = fit_calibration(logits[copies], y[copies], vids, tracks[copies], "mean", balanced=False)
    plain = fit_calibration(logits, y, videos, tracks, "mean", balanced=False)
    assert bal.temperature == pytest.approx(rep.temperature, rel=0.15)
    assert bal.offset == pytest.approx(rep.offset, abs=0.3) and bal.offset < -1 < plain.offset
    assert bal.after < bal.before and not bal.at_bound


def _videos(logits_by_video: list[float]):
    n = len(logits_by_video)
    return np.asarray(logits_by_video, float), np.array([f"v{i}" for i in range(n)]), np.zeros(n, int)


def test_an_offset_moves_the_threshold_a_temperature_cannot():
    """A model that ranks every video right but puts them all on the FAKE side of 0.5 (accuracy 0.5,
    AUC 1): the fitted offset brings the REAL ones back under 0.5; a temperature alone cannot."""
    from dfpipe.train import metrics as M
    from dfpipe.train.calibration import fit_calibration, window_probs

    y = np.r_[np.zeros(10), np.ones(10)]
    logits, videos, tracks = _videos(np.r_[np.linspace(0.10, 0.20, 10), np.linspace(0.25, 0.35, 10)])
    assert M.accuracy(y, M.sigmoid(logits)) == 0.5 and M.roc_auc(y, logits) == 1.0
    fit = fit_calibration(logits, y, videos, tracks, "mean")
    p = window_probs(logits, fit.temperature, offset=fit.offset)
    assert M.accuracy(y, p) == 1.0 and fit.after < 0.2 < fit.before
    t_only = fit_calibration(logits, y, videos, tracks, "mean", offset=False)
    assert M.accuracy(y, window_probs(logits, t_only.temperature)) == 0.5


def test_a_perfectly_separated_val_set_gets_a_deliberate_cap_not_the_search_bound():
    """Separated val videos would ask for T -> 0 (every probability 0 or 1): the smoothed targets
    (1 - e, e with e = 1/(N+2)) stop the fit inside its range, the most confident video near 1 - e,
    and a cap that loosens as N grows."""
    from dfpipe.train.calibration import TEMPERATURE_RANGE, fit_calibration, window_probs

    def fitted(n):
        y = np.r_[np.zeros(n // 2), np.ones(n // 2)]
        logits, videos, tracks = _videos(np.where(y == 1, 1.0, -1.0) * np.linspace(2, 4, n))
        fit = fit_calibration(logits, y, videos, tracks, "mean")
        return fit, window_probs(logits, fit.temperature, offset=fit.offset), y

    fit, p, y = fitted(8)
    assert not fit.at_bound and fit.temperature > 1.5 * TEMPERATURE_RANGE[0]
    assert fit.smoothing == pytest.approx(0.1)
    assert 0.8 < p[y == 1].mean() < 0.97 and 0.03 < p[y == 0].mean() < 0.2
    big, p_big, y_big = fitted(200)
    assert p_big[y_big == 1].mean() > p[y == 1].mean()


def test_a_calibration_at_the_bound_of_its_search_is_said():
    """Logits that do not vary at all cannot be calibrated: the fit says where it stopped."""
    from dfpipe.train.calibration import fit_calibration

    y = np.r_[np.zeros(4), np.ones(4)]
    logits, videos, tracks = _videos(np.r_[np.full(4, 0.3), np.full(4, 0.3 + 1e-9)])
    fit = fit_calibration(logits, y, videos, tracks, "mean")
    assert fit.at_bound and "bound" in fit.describe()
