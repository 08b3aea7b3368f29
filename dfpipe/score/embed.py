"""From windows to codes: the stages between segmentation and the classifier.

``WindowEmbedStage`` turns a window's face crops (:mod:`dfpipe.faces.crops`) into a sequence of codes
with a trained embedder; ``VideoEmbedStage`` reads the crops and embeds every window of a batch of
videos (the embedding cache, which training and scoring both fill).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from dfpipe import records as R
from dfpipe import storage
from dfpipe.extract.faces import pick_device
from dfpipe.faces.crops import FaceCropsStage, with_frames
from dfpipe.faces.tensors import decode_crop, decode_faces, normalise, resized
from dfpipe.outputs import read_batch_rows
from dfpipe.stage import Resources
from dfpipe.train import sbi
from dfpipe.train.modelio import load_model
from dfpipe.train.sbi import SelfBlend

log = logging.getLogger(__name__)


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
