"""From windows to face pixels and codes: the stages between segmentation and the models.

``FaceCropsStage`` reads each video's face shard once per batch and returns, per row, the face
crops of its ``frames`` (windows, or single faces sampled by ``sample_faces`` for the embedder);
``decode_faces`` turns JPEG crops into normalised tensors with optional augmentation;
``WindowEmbedStage`` turns a window's crops into a sequence of codes with a trained embedder;
``VideoEmbedStage`` does both for every window of a batch of videos (the embedding cache).
"""

from __future__ import annotations

import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dfpipe import records as R
from dfpipe import storage
from dfpipe.stage import Resources
from dfpipe.train import sbi
from dfpipe.train.sbi import SelfBlend

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


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 CHW in facenet's scale."""
    return ((rgb.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)


def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, colour jitter and a JPEG re-compression: what social-media copies of a video go through."""
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    x = rgb.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean() * rng.uniform(0.85, 1.15)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.8, 1.2)
    rgb = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        if ok:
            rgb = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(rgb)


def decode_crop(data: bytes, size: int | None) -> np.ndarray:
    """RGB uint8 of a JPEG crop, resized to ``size`` x ``size`` (None: as stored)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("undecodable face crop")
    return cv2.cvtColor(resized(bgr, size), cv2.COLOR_BGR2RGB)


def resized(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or (image.shape[0] == size and image.shape[1] == size):
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


@dataclass
class FaceTensors:
    """Rows with ``faces`` (one JPEG each) -> ``image`` (N, 3, S, S) float32 and ``label``, augmented if asked.

    With ``blend`` (:class:`dfpipe.train.sbi.SelfBlend`), each face is replaced by its self-blended
    copy (the rows need :class:`FaceCropsStage`'s geometry) and labelled FAKE; ``label`` labels
    every face otherwise (REAL for a self-blend's sources, some of them unlabelled).
    """

    face_size: int
    augment: bool = False
    seed: int = 0
    blend: SelfBlend | None = None
    label: int | None = None

    def __call__(self, batch: dict) -> dict:
        keep = [i for i, f in enumerate(batch["faces"]) if f is not None and len(f)]
        jpegs = [batch["faces"][i][0] for i in keep]
        if self.blend is not None or self.label is not None:
            labels = np.full(len(keep), R.LABEL_FAKE if self.blend is not None else self.label, np.float32)
        else:
            labels = np.asarray([batch["label"][i] for i in keep], np.float32)
        # Seeded by the config seed and the batch's content: reproducible, yet different per batch.
        first = jpegs[0] if jpegs else b""
        rng = np.random.default_rng([self.seed, zlib.crc32(first), len(jpegs)]) if self.augment else None
        images = []
        for i, data in zip(keep, jpegs, strict=True):
            if self.blend is None:
                rgb = decode_crop(data, self.face_size)
            else:
                rgb = resized(self._blended(batch, i, decode_crop(data, None)), self.face_size)
            if rng is not None:
                rgb = augment(rgb, rng)
            images.append(normalise(rgb))
        return {
            "image": np.stack(images)
            if images
            else np.zeros((0, 3, self.face_size, self.face_size), np.float32),
            "label": labels,
        }

    def _blended(self, batch: dict, i: int, rgb: np.ndarray) -> np.ndarray:
        key = f"{batch['video_id'][i]}/{batch['track_id'][i]}/{batch['frames'][i][0]}"
        marks = batch["landmarks"][i][0]
        return self.blend(key, [rgb], [batch["face_boxes"][i][0]], [None if marks is None else list(marks)])[
            0
        ]


def decode_faces(jpegs: list[bytes], size: int, threads: int = 1) -> np.ndarray:
    """JPEG crops -> (N, 3, size, size) float32 in facenet's scale; on ``threads`` threads (OpenCV
    decodes without the GIL), which matters when a GPU embeds faster than one thread decodes."""
    one = lambda data: normalise(decode_crop(data, size))  # noqa: E731
    if threads > 1 and len(jpegs) > 64:
        with ThreadPoolExecutor(threads) as pool:
            return np.stack(list(pool.map(one, jpegs, chunksize=32)))
    return np.stack([one(data) for data in jpegs])


@dataclass
class WindowEmbedStage:
    """Window crops in, code sequences out, with the embedder in ``model`` (GPU when given one).

    With ``blend`` (:class:`dfpipe.train.sbi.SelfBlend`; the rows need :class:`FaceCropsStage`'s
    geometry) it embeds each window's self-blended copy instead: a FAKE window named after its
    source (``window_id`` and ``video_id`` + ``sbi.SUFFIX``), the same blend on every frame.
    """

    reads: ClassVar = (
        "faces",
        *("window_id", "video_id", "track_id", "label", "part", "split", "start_frame"),
    )
    writes: ClassVar = R.EMBEDDINGS_SCHEMA

    model: storage.Folder
    device: str = "auto"
    batch_faces: int = 128
    torch_threads: int = 1
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=16))
    blend: SelfBlend | None = None

    def setup(self) -> None:
        import torch

        from dfpipe.extract.faces import pick_device
        from dfpipe.train.modelio import load_model

        torch.set_num_threads(max(1, self.torch_threads))
        self.device = pick_device(self.device)
        self.net, self.meta = load_model(self.model, "face_embedder")
        self.net.to(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        rows = [r for r in batch.to_pylist() if r["faces"]]
        size = self.meta["face_size"]
        if not rows:
            images = None
        elif self.blend is None:
            images = decode_faces([f for r in rows for f in r["faces"]], size, self.torch_threads)
        else:
            images = np.stack([normalise(resized(rgb, size)) for r in rows for rgb in self._blended(r)])
        codes = []
        with torch.inference_mode():
            for i in range(0, 0 if images is None else len(images), self.batch_faces):
                x = torch.from_numpy(images[i : i + self.batch_faces]).to(self.device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
                    codes.append(self.net(x).float().cpu().numpy())
        flat = np.concatenate(codes) if codes else np.zeros((0, self.net.code_dim), np.float32)
        out, k = [], 0
        for r in rows:
            n = len(r["faces"])
            names = {}
            if self.blend is not None:
                names = {
                    "window_id": r["window_id"] + sbi.SUFFIX,
                    "video_id": r["video_id"] + sbi.SUFFIX,
                    "label": R.LABEL_FAKE,
                }
            out.append(
                {
                    key: r[key]
                    for key in ("window_id", "video_id", "track_id", "label", "part", "split", "start_frame")
                }
                | names
                | {
                    "counted": r.get("counted", True),
                    "n_frames": n,
                    "code_dim": flat.shape[1],
                    "codes": flat[k : k + n].reshape(-1).tolist(),
                }
            )
            k += n
        return pa.Table.from_pylist(out, schema=R.EMBEDDINGS_SCHEMA)

    def _blended(self, row: dict) -> list[np.ndarray]:
        crops = [decode_crop(f, None) for f in row["faces"]]
        return self.blend(row["window_id"], crops, row["face_boxes"], row["landmarks"])


def codes_array(table_or_batch, n_frames: int, code_dim: int) -> np.ndarray:
    """The ``codes`` column (or a list of flat code lists) as (N, n_frames, code_dim) float32."""
    col = table_or_batch if isinstance(table_or_batch, list) else table_or_batch["codes"]
    if hasattr(col, "to_pylist"):
        col = col.to_pylist()
    arr = (
        np.stack([np.asarray(c, np.float32) for c in col])
        if len(col)
        else np.zeros((0, n_frames * code_dim), np.float32)
    )
    return arr.reshape(-1, n_frames, code_dim)


@dataclass
class VideoEmbedStage:
    """Videos in (``video_id`` and ``chunk``: the segmentation chunk holding their windows), the code
    sequences of every window of theirs out. One worker reads the windows of its batch, their crops
    (each face shard once) and embeds them, so no window or crop passes through the driver."""

    reads: ClassVar = ("video_id", "chunk")
    writes: ClassVar = R.EMBEDDINGS_SCHEMA

    windows: storage.Folder
    model: storage.Folder
    device: str = "auto"
    batch_faces: int = 128
    group_windows: int = 64  # windows read ahead while the previous ones are embedded
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, batch_size=8))
    blend: SelfBlend | None = None  # embed the self-blended copies of the REAL windows instead

    def setup(self) -> None:
        self.crops = FaceCropsStage(storage_options=self.windows.options, geometry=self.blend is not None)
        self.embed = WindowEmbedStage(self.model, self.device, self.batch_faces, blend=self.blend)
        self.embed.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from dfpipe.outputs import read_batch_rows

        windows = read_batch_rows(self.windows, batch, R.WINDOWS_SCHEMA)
        if self.blend is not None:
            windows = windows.filter(sbi.sources())
        if not windows.num_rows:
            return R.EMBEDDINGS_SCHEMA.empty_table()
        # The crops of the next group of videos are read on a thread while this group is embedded,
        # so a GPU does not wait for Parquet and JPEG bytes.
        groups = video_groups(with_frames(windows), self.group_windows)
        out = []
        with ThreadPoolExecutor(1, thread_name_prefix="dfpipe-crops") as reader:
            ahead = reader.submit(self.crops, groups[0])
            for nxt in [*groups[1:], None]:
                crops = ahead.result()
                if nxt is not None:
                    ahead = reader.submit(self.crops, nxt)
                out.append(self.embed(crops))
        return pa.concat_tables(out)


def video_groups(rows: pa.Table, size: int) -> list[pa.Table]:
    """``rows`` (sorted so a video's rows are together) cut into slices of about ``size`` rows,
    each holding whole videos."""
    vids = rows.column("video_id").to_pylist()
    cuts, start = [], 0
    for i in range(1, len(vids) + 1):
        if i == len(vids) or (i - start >= size and vids[i] != vids[i - 1]):
            cuts.append(rows.slice(start, i - start))
            start = i
    return cuts


def embedded_videos(codes: pa.Table, batch: pa.Table) -> dict[str, pa.Table]:
    """A chunk of the embedding cache: the codes, and one marker row per video of the batch (with
    how many of its windows have codes), so a video whose crops were missing is not retried forever.
    A self-blended window counts for the video it was made from."""
    counts = dict.fromkeys(batch.column("video_id").to_pylist(), 0)
    for vid in codes.column("video_id").to_pylist():
        counts[vid.removesuffix(sbi.SUFFIX)] += 1
    marker = pa.table(
        {
            "video_id": pa.array(list(counts), pa.string()),
            "n_windows": pa.array(list(counts.values()), pa.int32()),
        }
    )
    return {"windows": codes, "videos": marker}


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
        from dfpipe.outputs import read_batch_rows

        windows = read_batch_rows(self.windows, batch, R.WINDOWS_SCHEMA)
        windows = windows.filter(pc.fill_null(windows.column("counted"), True))
        return self.crops(sample_faces(windows, self.faces_per_window))
