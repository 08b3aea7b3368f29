"""Face crops to tensors: JPEG bytes to normalised (3, S, S) arrays in facenet's scale, with the
augmentation training uses and, through a self-blend (:class:`dfpipe.train.sbi.SelfBlend`, given by
the caller), the blended copies. Both training and scoring sit above this package.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from dfpipe import records as R

# A self-blend: (key, crops, box sizes, landmarks) -> blended crops (dfpipe.train.sbi.SelfBlend).
Blend = Callable[[str, list, list, list], list]


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
    blend: Blend | None = None
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
