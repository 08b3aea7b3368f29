"""The segmentation stage: manifest rows in, one summary row per video out, its windows and tracks nested.

Reads only the frame, track, flag, probability and box columns of each video's face shard
(Parquet column projection: the JPEG bytes are never read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from dfpipe import records as R
from dfpipe import storage
from dfpipe.segment.windows import SplitRule, TrackRule, WindowSpec, segment_video, window_id
from dfpipe.stage import Resources

log = logging.getLogger(__name__)

FACE_COLUMNS = ["video_id", "track_id", "frame_idx", "flag", "prob", "box_x1", "box_y1", "box_x2", "box_y2"]

_WINDOW_STRUCT = pa.struct(
    [
        ("track_id", pa.int32()),
        ("start_frame", pa.int32()),
        ("end_frame", pa.int32()),
        ("n_frames", pa.int32()),
        ("counted", pa.bool_()),
    ]
)
_TRACK_STRUCT = pa.struct([f for f in R.TRACKS_SCHEMA if f.name != "video_id"])
# What the stage returns: a summary row per video plus its windows and tracks, flattened by the job.
STAGE_OUTPUT_SCHEMA = (
    R.SEGMENTS_SCHEMA.append(pa.field("windows", pa.list_(_WINDOW_STRUCT)))
    .append(pa.field("tracks", pa.list_(_TRACK_STRUCT)))
    .append(pa.field("frame_stride", pa.int16()))
    .append(pa.field("faces_uri", pa.string()))
)


@dataclass
class SegmentStage:
    """Manifest rows in, one row per video out (its windows, tracks and summary nested): the video's
    face rows read from its shard, windows cut from the runs of usable frames of each track."""

    reads: ClassVar = ("video_id", "part", "label", "original", "status", "frame_stride", "faces_uri")
    writes: ClassVar = STAGE_OUTPUT_SCHEMA

    spec: WindowSpec = field(default_factory=WindowSpec)
    split_rule: SplitRule = field(default_factory=SplitRule)
    usable_flags: tuple[str, ...] = (R.FLAG_OK, R.FLAG_MULTI_FACE)
    track_rule: TrackRule = field(default_factory=TrackRule)
    config_hash: str = ""
    storage_options: storage.StorageOptions = field(default_factory=storage.StorageOptions)
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=32))

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.process(v) for v in batch.to_pylist()], schema=STAGE_OUTPUT_SCHEMA)

    def process(self, video: dict) -> dict:
        row = dict.fromkeys(STAGE_OUTPUT_SCHEMA.names, 0)
        for key in ("video_id", "label", "part", "original", "faces_uri"):
            row[key] = video.get(key)
        row.update(
            split=self.split_rule.split(
                video["video_id"], video.get("part"), video.get("label"), video.get("original")
            ),
            extract_status=video.get("status"),
            reason=None,
            windows=[],
            tracks=[],
            config_hash=self.config_hash,
            frame_stride=video.get("frame_stride") or 1,
        )
        if video.get("status") != R.STATUS_OK:
            row["reason"] = f"extract_failed: {video.get('error')}"
            return row
        try:
            faces = self._read_faces(video["faces_uri"])
            windows, counts = segment_video(
                faces, self.usable_flags, self.spec, row["frame_stride"], self.track_rule
            )
        except Exception as exc:  # noqa: BLE001 - a bad shard is recorded on its video, never fatal
            log.warning("segment %s: cannot read %s: %s", video["video_id"], video.get("faces_uri"), exc)
            row["reason"] = f"{R.REASON_READ_ERROR}: {type(exc).__name__}: {exc}"
            return row
        dropped = counts.pop("dropped")
        row["tracks"] = counts.pop("tracks")
        row.update(counts)
        row.update({f"dropped_{k}": v for k, v in dropped.items()})
        row["windows"] = windows
        if not windows:
            if counts["n_runs"] == 0:
                row["reason"] = "no_usable_frames"
            else:
                row["reason"] = (
                    f"runs_too_short: longest usable run is shorter than min_len={self.spec.min_run}"
                )
        return row

    def _read_faces(self, uri: str) -> pa.Table:
        fs, path = storage.filesystem(uri, self.storage_options)
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh, columns=FACE_COLUMNS)


def segment_tables(stage_output: pa.Table, batch: pa.Table | None = None) -> dict[str, pa.Table]:
    """The stage's output as the tables of a segmentation chunk (``dfpipe.outputs``)."""
    summary, windows, tracks = flatten_windows(stage_output)
    return {"windows": windows, "tracks": tracks, "videos": summary}


def flatten_windows(stage_output: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Split the stage's output into the summary, windows and tracks tables."""
    summary = stage_output.select(R.SEGMENTS_SCHEMA.names).cast(R.SEGMENTS_SCHEMA)
    rows = []
    for v in stage_output.select(
        ["video_id", "label", "part", "split", "windows", "frame_stride", "faces_uri"]
    ).to_pylist():
        for w in v["windows"]:
            rows.append(
                {
                    "window_id": window_id(v["video_id"], w["track_id"], w["start_frame"]),
                    "video_id": v["video_id"],
                    "track_id": w["track_id"],
                    "label": v["label"],
                    "part": v["part"],
                    "split": v["split"],
                    "start_frame": w["start_frame"],
                    "end_frame": w["end_frame"],
                    "n_frames": w["n_frames"],
                    "frame_stride": v["frame_stride"],
                    "faces_uri": v["faces_uri"],
                    "counted": w["counted"],
                }
            )
    tracks = [
        {"video_id": v, **t}
        for v, ts in zip(
            stage_output.column("video_id").to_pylist(),
            stage_output.column("tracks").to_pylist(),
            strict=True,
        )
        for t in ts or ()
    ]
    return (
        summary,
        pa.Table.from_pylist(rows, schema=R.WINDOWS_SCHEMA),
        pa.Table.from_pylist(tracks, schema=R.TRACKS_SCHEMA),
    )
