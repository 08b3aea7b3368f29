"""The extraction stage: catalog rows in, one manifest row out per video, face shard written per video.

Frames are decoded once, in windows; the detector runs on keyframes and wherever the faces of two
keyframes disagree (:mod:`dfpipe.extract.keyframes`), boxes are interpolated in between, and every frame's
faces are cropped from the full-resolution frame.

Each video's face rows go to ``faces/<video_id>.parquet``, a name derived from the video's
identity and written atomically, so a rerun or a retried actor overwrites rather than duplicates.
Any failure is caught per video and recorded on its manifest row; the stage never raises for input.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from typing import ClassVar

import numpy as np
import pyarrow as pa

from dfpipe import records as R
from dfpipe import storage
from dfpipe.extract.batching import CallBatcher
from dfpipe.extract.decode import DecodeError, VideoReader, prefetched
from dfpipe.extract.faces import FaceDetector, crop_face, encode_jpeg, face_flags, pick_device
from dfpipe.extract.keyframes import KeyframeDetector
from dfpipe.extract.options import CropOptions, DecodeOptions, DetectOptions, TrackOptions
from dfpipe.extract.tracks import link_tracks
from dfpipe.stage import Resources

log = logging.getLogger(__name__)


@dataclass
class FaceExtractStage:
    """Decode, detect, crop and track the faces of each video in a batch of catalog rows."""

    reads: ClassVar = ("video_id", "uri", "filename", "part", "label", "original", "error")
    writes: ClassVar = R.VIDEOS_SCHEMA
    faces: storage.Folder  # where each video's face shard goes
    config_hash: str = ""
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    detect: DetectOptions = field(default_factory=DetectOptions)
    crop: CropOptions = field(default_factory=CropOptions)
    track: TrackOptions = field(default_factory=TrackOptions)
    device: str = "auto"
    threads: int = 1
    videos_in_flight: int = 1
    video_options: storage.StorageOptions | None = None  # how the catalog rows' video URIs are reached
    resources: Resources = field(default_factory=Resources)

    @classmethod
    def of(cls, faces: storage.Folder, **options) -> FaceExtractStage:
        """A stage with any extraction options given by name (``face_size=64, scan_every=0``), each
        routed to its group; the other keywords are the stage's own (``threads=2``)."""
        groups = {
            "decode": DecodeOptions,
            "detect": DetectOptions,
            "crop": CropOptions,
            "track": TrackOptions,
        }
        made = {}
        for key, group in groups.items():
            names = {f.name for f in fields(group)}
            made[key] = group(**{k: options.pop(k) for k in list(options) if k in names})
        return cls(faces=faces, **made, **options)

    def setup(self) -> None:
        """Load the detector (once per worker); :meth:`process_many` shares out the CPUs per batch."""
        self.device = pick_device(self.device)
        self.detector = FaceDetector(
            self.detect.detect_long_side,
            self.detect.min_face_size,
            device=self.device,
            engine=self.detect.mtcnn,
            min_face_px=self.detect.min_face_px,
        )
        verify = partial(self.detector.verify, min_prob=self.detect.min_prob)
        if self.videos_in_flight > 1 and self.detector.device != "cpu":
            # Videos processed together share detector calls: on a GPU one call then carries the
            # keyframes of every video in flight instead of one frame. On CPUs a shared call only
            # makes threads wait for each other (measured: 1.2 of 2 cores busy): there each video
            # thread calls the detector itself, on its own core.
            self._detect = CallBatcher(
                self.detector.detect, max_items=4 * self.videos_in_flight, key=lambda frame: frame.shape
            )
            self._verify = CallBatcher(verify, max_items=64 * self.videos_in_flight)
            self._regions = CallBatcher(self.detector.detect_regions, max_items=4 * self.videos_in_flight)
        else:
            self._detect, self._verify, self._regions = (
                self.detector.detect,
                verify,
                self.detector.detect_regions,
            )

    def _share_cpus(self, concurrent: int) -> None:
        """Share the worker's ``threads`` CPUs among ``concurrent`` videos.

        On CPUs the work spreads over videos: with one video per CPU (the job gives an actor as
        many videos in flight as it has CPUs) each video thread decodes, detects and crops on one
        core. Measured on 2 CPUs over the real clips: 125 frames/s, against 90 for one video with a
        decoding thread and a detection thread (videos differ: a large face makes detection the
        slower half, a small one decoding, and one video cannot balance them). With two or more
        CPUs per video (a lone video: score-video) a video decodes ahead on a thread of its own and
        torch and OpenCV get the rest. Letting the decoder, torch and OpenCV each spread over every
        core only makes them contend.
        """
        import cv2
        import torch

        per_video = max(1, self.threads // max(1, concurrent))
        compute = 1 if self.device == "cpu" and per_video < 2 else max(1, per_video - 1)
        torch.set_num_threads(compute)
        cv2.setNumThreads(compute)

    def _batchers(self) -> list[CallBatcher]:
        return [b for b in (self._detect, self._verify, self._regions) if isinstance(b, CallBatcher)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(self.process_many(batch.to_pylist()), schema=R.VIDEOS_SCHEMA)

    def process_many(self, videos: list[dict]) -> list[dict]:
        """Manifest rows for ``videos``, up to ``videos_in_flight`` of them at once (one thread each)."""
        n = max(1, min(self.videos_in_flight, len(videos)))
        if n == 1:
            return [self.process(v) for v in videos]
        self._share_cpus(n)
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for item in enumerate(videos):
            todo.put(item)
        out: list[dict] = [{}] * len(videos)

        def worker() -> None:
            """Takes videos until none is left; a member of the batchers until then."""
            try:
                while True:
                    try:
                        i, video = todo.get_nowait()
                    except queue.Empty:
                        return
                    out[i] = self.process(video, concurrent=n)
            finally:
                for batcher in self._batchers():
                    batcher.leave()

        # Every worker counts from the start, so the first calls wait for all of them.
        for batcher in self._batchers():
            batcher.enter(n)
        with ThreadPoolExecutor(n, "dfpipe-video") as pool:
            for f in [pool.submit(worker) for _ in range(n)]:
                f.result()  # a storage failure raises here, as in the one-video path
        return out

    def process(self, video: dict, concurrent: int = 1) -> dict:
        """One manifest row for one catalog row; never raises for bad input. ``concurrent``: videos
        processed at the same time by this worker, which share its ``threads``."""
        if concurrent == 1:  # a video alone (not one of process_many's): all the CPUs are its
            self._share_cpus(1)
        start = time.monotonic()
        row = manifest_row(video, self.config_hash)
        row["frame_stride"] = self.decode.frame_stride
        if video.get("error"):
            return row
        try:
            nbytes = storage.size(video["uri"], self.video_options)
            if nbytes == 0:
                raise DecodeError(R.REASON_DECODE_ERROR, "empty file (0 bytes)")
            if nbytes > self.decode.max_bytes:
                raise DecodeError(
                    R.REASON_TOO_LARGE, f"{nbytes} bytes exceeds max_bytes={self.decode.max_bytes}"
                )
            with storage.local_copy(video["uri"], self.video_options) as path:
                table, info, stats = self._extract(path, video, concurrent)
        except DecodeError as exc:
            row.update(status=R.STATUS_FAILED, error=str(exc))
            log.warning("extract %s: %s", video["video_id"], exc)
        except OSError as exc:
            row.update(status=R.STATUS_FAILED, error=f"{R.REASON_READ_ERROR}: {type(exc).__name__}: {exc}")
            log.warning("extract %s: cannot read %s: %s", video["video_id"], video["uri"], exc)
        except Exception as exc:  # noqa: BLE001 - one bad video must not fail the dataset
            row.update(status=R.STATUS_FAILED, error=f"{R.REASON_INTERNAL}: {type(exc).__name__}: {exc}")
            log.exception("extract %s: unexpected failure", video["video_id"])
        else:
            # A failure to write the output is not the video's fault: it raises, so the task is
            # retried and, if the storage stays down, the job stops with the error instead of
            # recording good videos as failed.
            faces_uri = self.faces.join(storage.safe_name(video["video_id"]) + ".parquet")
            storage.write_parquet(table, faces_uri, self.faces.options)
            row.update(info)
            row.update(stats)
            row.update(status=R.STATUS_OK, faces_uri=faces_uri)
        row["elapsed_s"] = time.monotonic() - start
        return row

    def _extract(self, path: str, video: dict, concurrent: int) -> tuple[pa.Table, dict, dict]:
        threads = decoder_threads(self.threads, concurrent)
        reader = VideoReader(path, self.decode.frame_stride, self.decode.limits, chunk=8, threads=threads)
        # Two or more CPUs for this video (see _share_cpus): one of them decodes ahead.
        chunks = prefetched(reader, depth=2) if self.threads // concurrent >= 2 else reader
        keyframes = KeyframeDetector(
            self._detect,
            verify=self._verify if self.detect.verify_boxes else None,
            detect_regions=self._regions,
            every=self.detect.detect_every,
            scan_every=self.detect.scan_every,
            window=self.detect.detect_batch,
            min_prob=self.detect.min_prob,
            agree_iou=self.detect.agree_iou,
            cut_threshold=self.detect.cut_threshold,
        )
        frame_idx: list[int] = []
        boxes: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        marks: list[np.ndarray] = []
        detected: list[bool] = []
        crops: list[list[bytes]] = []
        for f in keyframes.run(chunks):
            frame_idx.append(f.index)
            boxes.append(f.boxes)
            probs.append(f.probs)
            marks.append(f.landmarks)
            detected.append(f.detected)
            crops.append(
                [
                    encode_jpeg(
                        crop_face(f.frame, box, self.crop.crop_margin, self.crop.face_size),
                        self.crop.jpeg_quality,
                        bgr=True,
                    )
                    for box in f.boxes
                ]
            )
        if not frame_idx:
            raise DecodeError(R.REASON_DECODE_ERROR, "no frame could be decoded")
        track_ids = link_tracks(
            frame_idx,
            boxes,
            self.track.track_iou,
            self.track.track_max_gap,
            keyframes.cuts,
            self.decode.frame_stride,
        )
        cols: dict[str, list] = {name: [] for name in R.FACES_SCHEMA.names}
        for i, b, p, m, d, t, c in zip(
            frame_idx, boxes, probs, marks, detected, track_ids, crops, strict=True
        ):
            flags = face_flags(b, p, self.detect.min_prob, self.detect.min_face_px)
            if len(b) == 0:
                _append(cols, video, i, None, R.FLAG_NO_FACE, None, None, None, d, None)
            for k in range(len(b)):
                _append(cols, video, i, int(t[k]), flags[k], float(p[k]), b[k], m[k], d, c[k])
        table = pa.table(cols, schema=R.FACES_SCHEMA)
        info = reader.info
        flag_counts = dict.fromkeys(R.FRAME_FLAGS, 0)
        for f in cols["flag"]:
            flag_counts[f] += 1
        stats = {f"n_{k}": v for k, v in flag_counts.items()}
        stats["n_frames"] = len(frame_idx)
        track_lengths = Counter(t for t in cols["track_id"] if t is not None)
        stats["n_tracks"] = len(track_lengths)
        stats["n_one_frame_tracks"] = sum(1 for n in track_lengths.values() if n == 1)
        stats["n_detected"] = keyframes.n_detected
        declared = info.declared_frames
        truncated = not reader.capped and declared > 0 and reader.frames_read < 0.9 * declared
        meta = dict(
            fps=info.fps,
            width=info.width,
            height=info.height,
            rotation=info.rotation,
            error=f"truncated: decoded {reader.frames_read} of {declared} declared frames"
            if truncated
            else None,
        )
        return table, meta, stats


def decoder_threads(threads: int, concurrent: int) -> int:
    """FFmpeg threads for one video of ``concurrent`` on a worker of ``threads`` CPUs.

    One, unless the worker has CPUs to spare: a single 1080p stream decodes at about 150-200 frames/s
    on one thread, which caps a lone video (score-video, a GPU worker with one video) far below what
    the detector takes; measured on 2 CPUs, a second decoder thread only contends with detection.
    """
    if threads < 4:
        return 1
    return max(1, threads // 2 // max(1, concurrent))


def _append(cols, video, frame_idx, track_id, flag, prob, box, marks, detected, jpeg) -> None:
    cols["video_id"].append(video["video_id"])
    cols["part"].append(video["part"])
    cols["label"].append(video["label"])
    cols["frame_idx"].append(frame_idx)
    cols["track_id"].append(track_id)
    cols["flag"].append(flag)
    cols["prob"].append(prob)
    for k, name in enumerate(("box_x1", "box_y1", "box_x2", "box_y2")):
        cols[name].append(None if box is None else float(box[k]))
    cols["landmarks"].append(None if box is None else landmarks_in_box(box, marks))
    cols["detected"].append(detected)
    cols["face_jpeg"].append(jpeg)


def landmarks_in_box(box: np.ndarray, marks: np.ndarray) -> list[float] | None:
    """The five landmarks (frame pixels, 5 x 2) in the box's frame: ``[x0, y0, ..., x4, y4]`` with
    (0, 0) the box's top-left and (1, 1) its bottom-right corner, so they stay with the face crop
    whatever its size or margin. None where the detector gave none (NaN)."""
    if marks is None or not np.isfinite(marks).all():
        return None
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    size = np.array([max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)], np.float32)
    return ((np.asarray(marks, np.float32) - np.array([x1, y1], np.float32)) / size).reshape(-1).tolist()


def manifest_row(video: dict, config_hash: str) -> dict:
    """A manifest row for a catalog row, failed with the catalog's error if it has one."""
    row = dict.fromkeys(R.VIDEOS_SCHEMA.names)
    for key in ("video_id", "uri", "filename", "part", "label", "original"):
        row[key] = video.get(key)
    row["config_hash"] = config_hash
    row["status"] = R.STATUS_FAILED if video.get("error") else None
    row["error"] = video.get("error")
    for flag in R.FRAME_FLAGS:
        row[f"n_{flag}"] = 0
    row["n_frames"] = 0
    row["n_tracks"] = 0
    row["n_one_frame_tracks"] = 0
    row["n_detected"] = 0
    return row
