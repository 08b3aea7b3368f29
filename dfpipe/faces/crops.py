"""Face crops of windows and samples, read from the extraction's face shards (Ray-free stages).

``FaceCropsStage`` reads each video's face shard once per batch and returns, per row, the face crops
of its ``frames``: a window's (``with_frames``) or single faces sampled for the embedder
(``sample_faces``, ``SampledFacesStage``). Both training and scoring sit above this package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfpipe import records as R
from dfpipe import storage
from dfpipe.outputs import read_batch_rows
from dfpipe.stage import Resources

log = logging.getLogger(__name__)


def window_frames(start: int, end: int, stride: int) -> list[int]:
    return list(range(start, end + 1, max(1, stride)))


@dataclass
class FaceCropsStage:
    """Rows naming ``faces_uri``, ``track_id`` and ``frames`` (a list) in; the same rows plus ``faces``
    (and, with ``geometry``, each face's box size ``face_boxes`` and ``landmarks``: what a
    self-blend needs, :class:`dfpipe.train.sbi.SelfBlend`).

    Each video's shard is read once per batch (keep a video's rows together for that), with only
    the columns needed. A row whose crops are missing gets ``faces = null`` and a log line.
    """

    reads: ClassVar = ("faces_uri", "track_id", "frames")
    writes: ClassVar = None  # its input rows, with ``faces`` added (and the geometry columns)

    storage_options: storage.StorageOptions = field(default_factory=storage.StorageOptions)
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=64))
    geometry: bool = False

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        found: dict[str, list] = {name: [None] * len(rows) for name in self._added()}
        by_uri: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_uri.setdefault(r["faces_uri"], []).append(i)
        for uri, idx in by_uri.items():
            faces = self._read(uri, {rows[i]["track_id"] for i in idx})
            for i in idx:
                mine = [faces.get((rows[i]["track_id"], f)) for f in rows[i]["frames"]]
                if any(f is None for f in mine):
                    log.warning(
                        "%s track %s: face crops missing from %s",
                        rows[i].get("video_id"),
                        rows[i]["track_id"],
                        uri,
                    )
                    continue
                for k, name in enumerate(found):
                    found[name][i] = [f[k] for f in mine]
        for name, values in found.items():
            batch = batch.append_column(name, pa.array(values, self._added()[name]))
        return batch

    def _added(self) -> dict[str, pa.DataType]:
        added = {"faces": pa.list_(pa.binary())}
        if self.geometry:
            added["face_boxes"] = pa.list_(pa.list_(pa.float32(), 2))  # (width, height) per frame
            added["landmarks"] = pa.list_(R.FACES_SCHEMA.field("landmarks").type)
        return added

    def _read(self, faces_uri: str, tracks: set[int]) -> dict[tuple[int, int], tuple]:
        """``(track, frame) -> (jpeg, [box size, landmarks])`` of the shard's faces of ``tracks``."""
        geometry = ["box_x1", "box_y1", "box_x2", "box_y2", "landmarks"] if self.geometry else []
        columns = ["track_id", "frame_idx", "face_jpeg", *geometry]
        fs, path = storage.filesystem(faces_uri, self.storage_options)
        with fs.open(path, "rb") as fh:
            # Read against the schema: a shard written before landmarks were kept gives null ones.
            t = pq.read_table(fh, columns=columns, schema=R.FACES_SCHEMA)
        t = t.filter(pc.is_in(t.column("track_id"), pa.array(sorted(tracks), pa.int32())))
        cols = {name: t.column(name).to_pylist() for name in columns}
        out = {}
        for i, (tr, fr, jpg) in enumerate(
            zip(cols["track_id"], cols["frame_idx"], cols["face_jpeg"], strict=True)
        ):
            if jpg is None:
                continue
            face: tuple = (jpg,)
            if self.geometry:
                size = (cols["box_x2"][i] - cols["box_x1"][i], cols["box_y2"][i] - cols["box_y1"][i])
                face += (size, cols["landmarks"][i])
            out[(tr, fr)] = face
        return out


def sample_faces(windows: pa.Table, faces_per_window: int) -> pa.Table:
    """Single-face rows for the embedder: ``faces_per_window`` evenly spaced frames of each window,
    de-duplicated across overlapping windows, each with ``frames = [frame]``."""
    seen: set[tuple] = set()
    out = []
    for w in windows.select(
        ["video_id", "track_id", "label", "faces_uri", "start_frame", "end_frame", "frame_stride"]
    ).to_pylist():
        frames = window_frames(w["start_frame"], w["end_frame"], w["frame_stride"])
        picks = np.linspace(0, len(frames) - 1, min(faces_per_window, len(frames))).round().astype(int)
        for i in dict.fromkeys(picks.tolist()):
            key = (w["video_id"], w["track_id"], frames[i])
            if key not in seen:
                seen.add(key)
                out.append(
                    {
                        "video_id": w["video_id"],
                        "track_id": w["track_id"],
                        "label": w["label"],
                        "faces_uri": w["faces_uri"],
                        "frames": [frames[i]],
                    }
                )
    schema = pa.schema(
        [
            ("video_id", pa.string()),
            ("track_id", pa.int32()),
            ("label", pa.int8()),
            ("faces_uri", pa.string()),
            ("frames", pa.list_(pa.int32())),
        ]
    )
    return pa.Table.from_pylist(out, schema=schema).sort_by("faces_uri")


def with_frames(windows: pa.Table) -> pa.Table:
    """Windows plus their ``frames`` list, sorted by video so each shard is read once per batch."""
    frames = [
        window_frames(a, b, s)
        for a, b, s in zip(
            windows.column("start_frame").to_pylist(),
            windows.column("end_frame").to_pylist(),
            windows.column("frame_stride").to_pylist(),
            strict=True,
        )
    ]
    return windows.append_column("frames", pa.array(frames, pa.list_(pa.int32()))).sort_by("faces_uri")


@dataclass
class SampledFacesStage:
    """Videos in (``video_id``, ``chunk``: their segmentation chunk), the embedder's training faces
    out: ``faces_per_window`` frames of each counted window (:func:`sample_faces`), with their crops.
    The worker reads the windows and crops, so no window passes through the driver."""

    reads: ClassVar = ("video_id", "chunk")
    writes: ClassVar = None  # sampled window frames (FaceCropsStage's input) with their ``faces``

    windows: storage.Folder
    faces_per_window: int
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=16))
    geometry: bool = False  # with each face's box size and landmarks, for self-blends

    def setup(self) -> None:
        self.crops = FaceCropsStage(storage_options=self.windows.options, geometry=self.geometry)

    def __call__(self, batch: pa.Table) -> pa.Table:
        windows = read_batch_rows(self.windows, batch, R.WINDOWS_SCHEMA)
        windows = windows.filter(pc.fill_null(windows.column("counted"), True))
        return self.crops(sample_faces(windows, self.faces_per_window))
