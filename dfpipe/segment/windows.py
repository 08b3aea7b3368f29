"""Windows of consecutive usable frames per face track (the two-pointer scan), and leak-free splits.

The classifier assumes a constant interval between frames, so a window may only cover frames that
are consecutive at the extraction stride and usable for their track. All functions here are
Ray-free and work on any number of videos at once.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import records as R
from dfpipe.config import Options, option

Remainder = Literal["drop", "align_end"]

# The segmentation's option groups (WindowSpec, TrackRule, SplitRule): each field is an option of the
# segment job by the same name (SegmentConfig inherits the groups, as the extract job does its own),
# and the stage takes each group whole. One option, one field.


@dataclass(frozen=True, kw_only=True)
class WindowSpec(Options):
    """How each run of usable frames is cut into windows."""

    window_len: int = option(16, "frames per window", rows=True)
    window_stride: int = option(8, "frames between the starts of consecutive windows of a run", rows=True)
    min_len: int | None = option(None, "runs shorter than this are dropped (default: window_len)", rows=True)
    remainder: Remainder = option(
        "drop",
        "a run's tail that no window covers: drop it, or add one last window aligned to the run's end",
        rows=True,
    )

    def check(self) -> None:
        if self.window_len < 1 or self.window_stride < 1:
            raise ValueError("window_len and window_stride must be >= 1")
        if self.min_run < self.window_len:
            raise ValueError(
                f"min_len ({self.min_run}) must be >= window_len ({self.window_len}): "
                "a shorter run cannot hold a whole window"
            )
        if self.remainder not in ("drop", "align_end"):
            raise ValueError(f"remainder must be drop or align_end, got {self.remainder!r}")

    @property
    def min_run(self) -> int:
        """The shortest run that gives windows: ``min_len``, or ``window_len`` when it is not set."""
        return self.min_len or self.window_len


def runs_of(frames: np.ndarray, usable: np.ndarray, stride: int = 1) -> list[tuple[int, int]]:
    """Maximal runs of usable frames consecutive at ``stride``, as ``(first, last)`` positions.

    ``frames`` must be sorted and unique. Two pointers: ``i`` opens a run at a usable frame, ``j``
    walks while the next frame is usable and exactly ``stride`` later.
    """
    out: list[tuple[int, int]] = []
    n = len(frames)
    i = 0
    while i < n:
        if not usable[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and usable[j + 1] and frames[j + 1] - frames[j] == stride:
            j += 1
        out.append((i, j))
        i = j + 1
    return out


def window_starts(run_len: int, spec: WindowSpec) -> list[int]:
    """Offsets (in frames of the run) where windows start; empty for runs shorter than ``min_len``."""
    if run_len < spec.min_run:
        return []
    starts = list(range(0, run_len - spec.window_len + 1, spec.window_stride))
    last = run_len - spec.window_len
    if spec.remainder == "align_end" and starts and starts[-1] != last:
        starts.append(last)
    return starts


@dataclass
class TrackWindows:
    """The windows of one track, ``(start_frame, end_frame)`` with the end inclusive, and what was dropped."""

    windows: list[tuple[int, int]]
    n_runs: int = 0
    n_short_runs: int = 0
    short_run_frames: int = 0
    remainder_frames: int = 0
    duplicates: int = 0


def windows_for_track(
    frames: Iterable[int], usable: Iterable[bool], spec: WindowSpec, stride: int = 1
) -> TrackWindows:
    """Every window of one track, in any row order.

    Duplicated frames are de-duplicated (and counted); a duplicated frame is usable only if all
    of its rows are.
    """
    frames = np.asarray(list(frames) if not isinstance(frames, np.ndarray) else frames, dtype=np.int64)
    usable = np.asarray(list(usable) if not isinstance(usable, np.ndarray) else usable, dtype=bool)
    order = np.lexsort((usable, frames))  # per frame, an unusable duplicate sorts first and is kept
    frames, usable = frames[order], usable[order]
    first = np.ones(len(frames), dtype=bool)
    first[1:] = frames[1:] != frames[:-1]
    out = TrackWindows([], duplicates=int((~first).sum()))
    frames, usable = frames[first], usable[first]
    for i, j in runs_of(frames, usable, stride):
        length = j - i + 1
        out.n_runs += 1
        starts = window_starts(length, spec)
        if not starts:
            out.n_short_runs += 1
            out.short_run_frames += length
            continue
        covered = np.zeros(length, dtype=bool)
        for s in starts:
            covered[s : s + spec.window_len] = True
            out.windows.append((int(frames[i + s]), int(frames[i + s + spec.window_len - 1])))
        out.remainder_frames += int((~covered).sum())
    return out


def window_id(video_id: str, track_id: int, start_frame: int) -> str:
    return hashlib.sha1(f"{video_id}\x00{track_id}\x00{start_frame}".encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class SplitRule(Options):
    """Assign ``train``/``val``/``test`` per video without leakage.

    With ``val_parts``/``test_parts`` (part names, or integer ranges like ``35-39`` matched against
    the number at the end of the part name), parts decide; other parts are ``train``. Otherwise a
    stable hash of the group key decides, where a FAKE's group is its ``original``, so a fake and
    its source always share a split.
    """

    val_parts: tuple[str, ...] = option(
        (),
        "parts (names or ranges like 35-39) for val; with test_parts, parts decide splits",
        rows=True,
    )
    test_parts: tuple[str, ...] = option((), "parts (names or ranges like 40-49) for test", rows=True)
    val_fraction: float = option(0.15, "share of groups in val when splitting by hash", rows=True)
    test_fraction: float = option(0.15, "share of groups in test when splitting by hash", rows=True)
    split_salt: str = option("dfpipe", "salt of the split hash (change it to draw other splits)", rows=True)

    def check(self) -> None:
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")

    @staticmethod
    def _part_matches(part: str, patterns: tuple[str, ...]) -> bool:
        match = re.search(r"(\d+)$", part or "")
        number = int(match.group(1)) if match else None
        for pat in patterns:
            rng = re.fullmatch(r"(\d+)-(\d+)", pat)
            if rng and number is not None and int(rng.group(1)) <= number <= int(rng.group(2)):
                return True
            if pat.isdigit() and number is not None and int(pat) == number:
                return True
            if pat == part:
                return True
        return False

    def group_key(self, video_id: str, label: int | None, original: str | None) -> str:
        return original if label == R.LABEL_FAKE and original else video_id

    def split(self, video_id: str, part: str, label: int | None, original: str | None) -> str:
        if self.val_parts or self.test_parts:
            if self._part_matches(part, self.test_parts):
                return "test"
            if self._part_matches(part, self.val_parts):
                return "val"
            return "train"
        key = self.group_key(video_id, label, original)
        u = int(hashlib.sha256(f"{self.split_salt}\x00{key}".encode()).hexdigest()[:15], 16) / 16**15
        if u < self.test_fraction:
            return "test"
        if u < self.test_fraction + self.val_fraction:
            return "val"
        return "train"


@dataclass(frozen=True, kw_only=True)
class TrackRule(Options):
    """Which face tracks of a video count towards its score, from track-level evidence.

    On real footage MTCNN also finds "faces" in posters, shoulders, toys and blurred people in the
    background; they give short, small or weak tracks, some long enough for windows, and the most
    suspicious track decides a video. A track counts when it

    * is on at least ``track_min_share`` of the video's kept frames,
    * has a mean detection probability of at least ``track_min_mean_prob``, and
    * has a median face side of at least ``track_min_relative_size`` times the main face's, where the
      main face is the largest among tracks that pass the first two tests.

    If no track passes the first two, the track with the most evidence (frames x face size) counts
    alone, so a video with only brief faces is still scored from its best one.
    """

    track_min_share: float = option(
        0.25,
        "a track counts towards its video's score only if it is on at least this share of the kept frames",
        rows=True,
    )
    track_min_mean_prob: float = option(
        0.95, "... and its mean detection probability is at least this", rows=True
    )
    track_min_relative_size: float = option(
        0.5,
        "... and its median face is at least this fraction of the main (largest such) face",
        rows=True,
    )

    def check(self) -> None:
        for name in ("track_min_share", "track_min_mean_prob", "track_min_relative_size"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"track rule: {name} must be within [0, 1], got {getattr(self, name)}")

    def judge(self, tracks: list[dict]) -> list[dict]:
        """``tracks`` (from :func:`track_evidence`) with ``counted`` and, for those left out, ``reason``."""
        out = [{**t, "counted": False, "reason": None} for t in tracks]
        if not out:
            return out
        for t in out:
            if t["share"] < self.track_min_share:
                t["reason"] = f"short: on {t['share']:.0%} of frames (< {self.track_min_share:.0%})"
            elif t["mean_prob"] < self.track_min_mean_prob:
                t["reason"] = (
                    f"weak: mean detection probability {t['mean_prob']:.3f} (< {self.track_min_mean_prob})"
                )
        candidates = [t for t in out if t["reason"] is None]
        if not candidates:
            best = max(out, key=lambda t: (t["n_frames"] * t["face_px"], -t["track_id"]))
            best.update(counted=True, reason=None)
            return out
        main = max(candidates, key=lambda t: (t["face_px"], t["n_frames"], -t["track_id"]))
        for t in candidates:
            ratio = t["face_px"] / max(main["face_px"], 1e-6)
            if ratio < self.track_min_relative_size:
                t["reason"] = f"small: {ratio:.2f}x the main face (< {self.track_min_relative_size}x)"
            else:
                t["counted"] = True
        return out


def track_evidence(faces: pa.Table, n_frames: int) -> list[dict]:
    """Per track of one video's face rows: frames, median face side (px), mean probability, share of frames."""
    tracked = faces.filter(pc.is_valid(faces.column("track_id")))
    if not tracked.num_rows:
        return []
    track = tracked.column("track_id").to_numpy()
    frame = tracked.column("frame_idx").to_numpy()
    prob = tracked.column("prob").to_numpy(zero_copy_only=False).astype(float)
    side = np.minimum(
        tracked.column("box_x2").to_numpy(zero_copy_only=False)
        - tracked.column("box_x1").to_numpy(zero_copy_only=False),
        tracked.column("box_y2").to_numpy(zero_copy_only=False)
        - tracked.column("box_y1").to_numpy(zero_copy_only=False),
    ).astype(float)
    out = []
    for t in np.unique(track):
        sel = track == t
        frames = len(np.unique(frame[sel]))
        out.append(
            {
                "track_id": int(t),
                "n_frames": frames,
                "face_px": float(np.nanmedian(side[sel])),
                "mean_prob": float(np.nanmean(prob[sel])),
                "share": frames / max(n_frames, 1),
            }
        )
    return out


def segment_video(
    faces: pa.Table,
    usable_flags: tuple[str, ...],
    spec: WindowSpec,
    stride: int,
    track_rule: TrackRule | None = None,
) -> tuple[list[dict], dict]:
    """Windows of one video's face rows, and its counts: runs, windows, frames dropped by reason.

    With ``track_rule`` (and the ``prob`` and box columns in ``faces``) the counts hold ``tracks``,
    the evidence and verdict of each track, and every window says whether its track ``counted``.
    """
    video_frames = faces.column("frame_idx").to_numpy(zero_copy_only=False)
    n_frames = len(np.unique(video_frames)) if len(video_frames) else 0
    counts = {"n_frames": n_frames, "n_runs": 0, "n_short_runs": 0, "n_windows": 0, "n_tracks": 0}
    dropped = {flag: 0 for flag in R.FRAME_FLAGS if flag not in usable_flags}
    dropped["short_run"] = 0
    dropped["remainder"] = 0
    dropped["duplicate"] = 0
    flags = faces.column("flag").to_pylist()
    for f in flags:
        if f in dropped:
            dropped[f] += 1
    tracked = faces.filter(pc.is_valid(faces.column("track_id")))
    windows: list[dict] = []
    if tracked.num_rows:
        track = tracked.column("track_id").to_numpy()
        frame = tracked.column("frame_idx").to_numpy()
        usable = pc.is_in(tracked.column("flag"), pa.array(usable_flags)).to_numpy(zero_copy_only=False)
        for t in np.unique(track):
            sel = track == t
            tw = windows_for_track(frame[sel], usable[sel], spec, stride)
            counts["n_tracks"] += 1
            counts["n_runs"] += tw.n_runs
            counts["n_short_runs"] += tw.n_short_runs
            dropped["short_run"] += tw.short_run_frames
            dropped["remainder"] += tw.remainder_frames
            dropped["duplicate"] += tw.duplicates
            windows += [
                {"track_id": int(t), "start_frame": a, "end_frame": b, "n_frames": spec.window_len}
                for a, b in tw.windows
            ]
    counts["n_windows"] = len(windows)
    if track_rule is not None:
        tracks = track_rule.judge(track_evidence(faces, n_frames))
        verdict = {t["track_id"]: t["counted"] for t in tracks}
        per_track = Counter(w["track_id"] for w in windows)
        for t in tracks:
            t["n_windows"] = per_track.get(t["track_id"], 0)
        for w in windows:
            w["counted"] = verdict[w["track_id"]]
        counts["n_tracks_counted"] = sum(verdict.values())
        counts["tracks"] = tracks
    return windows, {**counts, "dropped": dropped}
