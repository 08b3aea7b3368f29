"""Face detection with facenet-pytorch's MTCNN on downscaled frames, and face crops at full resolution."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dfpipe import records as R


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA device is visible to this worker")
    return device


def detection_scale(width: int, height: int, long_side: int) -> float:
    """The factor frames are shrunk by before detection: large frames less detail, small ones none.

    As the DFDC winners did, detection runs at a bounded resolution; boxes are mapped back and
    crops come from the full-resolution frame.
    """
    longest = max(width, height)
    return 1.0 if longest <= long_side else long_side / longest


@dataclass
class FaceDetector:
    """MTCNN loaded once; ``detect`` takes a list of same-size BGR frames and returns boxes per frame."""

    long_side: int = 640
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    device: str = "auto"

    def __post_init__(self):
        from facenet_pytorch import MTCNN

        self.device = pick_device(self.device)
        # The MTCNN weights ship inside the facenet-pytorch wheel: no download here.
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            device=self.device,
            select_largest=False,
            post_process=False,
        )

    def detect(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(boxes (k,4) float32 in full-resolution pixels, probs (k,))`` per frame; k may be 0."""
        import torch

        if not frames:
            return []
        h, w = frames[0].shape[:2]
        scale = detection_scale(w, h, self.long_side)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # Only the small copy MTCNN sees is converted to RGB.
        small = [
            cv2.cvtColor(
                f if scale == 1.0 else cv2.resize(f, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
            )
            for f in frames
        ]
        with torch.inference_mode():
            boxes, probs = self._mtcnn.detect(np.stack(small))
        out = []
        for b, p in zip(boxes, probs, strict=True):
            if b is None:
                out.append((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
            else:
                out.append((np.asarray(b, np.float32) / scale, np.asarray(p, np.float32)))
        return out


def crop_face(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """A square crop around ``box`` enlarged by ``margin`` per side, resized to ``size``x``size``.

    Pixels beyond the frame edge are replicated, so faces at the border keep their position.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    side = max(side, 2.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = size / side
    m = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]], dtype=np.float32)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(frame, m, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def encode_jpeg(image: np.ndarray, quality: int = 90, bgr: bool = False) -> bytes:
    """JPEG bytes of an RGB image (a BGR one with ``bgr=True``, as crops of decoded frames are)."""
    if not bgr:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB uint8 from JPEG bytes."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_flags(boxes: np.ndarray, probs: np.ndarray, min_prob: float, min_face_px: int) -> list[str]:
    """The flag of each face in one frame: low_prob, small_face, then multi_face if several pass."""
    flags = []
    for box, prob in zip(boxes, probs, strict=True):
        if prob < min_prob:
            flags.append(R.FLAG_LOW_PROB)
        elif min(box[2] - box[0], box[3] - box[1]) < min_face_px:
            flags.append(R.FLAG_SMALL_FACE)
        else:
            flags.append(R.FLAG_OK)
    if flags.count(R.FLAG_OK) > 1:
        flags = [R.FLAG_MULTI_FACE if f == R.FLAG_OK else f for f in flags]
    return flags
