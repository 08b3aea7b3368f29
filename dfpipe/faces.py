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
        self.n_verified = 0  # boxes checked by verify(), and of those how many needed a ROI detection
        self.n_roi = 0
        self.n_calls = 0  # detect() calls and the frames they carried (frames per call matters on a GPU)
        self.n_frames = 0
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
        self.n_calls += 1
        self.n_frames += len(frames)
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

    def verify(
        self, frames: list[np.ndarray], boxes: list[np.ndarray], min_prob: float = 0.9, min_iou: float = 0.5
    ) -> list[np.ndarray]:
        """Whether each box of each frame (BGR, full resolution) really holds a face: a bool per box.

        For boxes the detector did not produce (interpolated between keyframes). Two steps, the
        cheap one first:

        1. MTCNN's last stage (O-Net) on the box, squared as MTCNN squares its candidates and cut at
           48x48, all boxes in one batch (a fraction of a millisecond per box on a CPU). O-Net's
           probability >= ``ONET_PASS`` passes.
        2. O-Net scores some real faces low on MTCNN's own final boxes (on one real clip every face
           scored 0.01-0.2), so a box it doubts is not failed on that alone: MTCNN runs on a 96x96
           crop around it (region-of-interest detection, about a tenth of a full 640-px frame) and
           the box passes when a face of ``min_prob`` or more overlaps it by ``min_iou``.
        """
        import torch

        counts = [len(b) for b in boxes]
        flat = [(f, b) for f, bs in zip(frames, boxes, strict=True) for b in bs]
        if not flat:
            return [np.zeros((0,), bool) for _ in frames]
        crops = [crop_face(f, b, 0.0, 48) for f, b in flat]
        x = torch.from_numpy(np.stack(crops)[..., ::-1].copy()).to(self.device)  # BGR -> RGB
        x = (x.permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
        with torch.inference_mode():
            onet_prob = self._mtcnn.onet(x)[2][:, 1].float().cpu().numpy()
        ok = onet_prob >= ONET_PASS
        doubtful = np.flatnonzero(~ok)
        if len(doubtful):
            ok[doubtful] = self._roi_confirms([flat[i] for i in doubtful], min_prob, min_iou)
        self.n_verified += len(flat)
        self.n_roi += len(doubtful)
        return list(np.split(ok, np.cumsum(counts)[:-1]))

    def _roi_confirms(self, items: list[tuple[np.ndarray, np.ndarray]], min_prob: float, min_iou: float):
        """MTCNN on a crop of twice each box's side, resized to ``ROI_SIZE``: a face there that overlaps the box?"""
        import torch

        from dfpipe.tracks import iou_matrix

        crops, mapping = [], []
        for frame, box in items:
            side = max(float(box[2] - box[0]), float(box[3] - box[1]), 2.0) * (1 + 2 * ROI_MARGIN)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            crops.append(cv2.cvtColor(crop_face(frame, box, ROI_MARGIN, ROI_SIZE), cv2.COLOR_BGR2RGB))
            mapping.append((cx - side / 2, cy - side / 2, side / ROI_SIZE))
        with torch.inference_mode():
            found, probs = self._mtcnn.detect(np.stack(crops))
        out = np.zeros(len(items), bool)
        for k, ((_, box), (x0, y0, s), b, p) in enumerate(zip(items, mapping, found, probs, strict=True)):
            if b is None:
                continue
            b = np.asarray(b, np.float32)[np.asarray(p, np.float32) >= min_prob]
            if len(b):
                in_frame = b * s + np.array([x0, y0, x0, y0], np.float32)
                out[k] = bool(iou_matrix(in_frame, box[None]).max() >= min_iou)
        return out


# O-Net's probability that passes a box outright; below it, a region-of-interest detection decides.
ONET_PASS = 0.5
ROI_SIZE = 96
ROI_MARGIN = 0.5  # the crop is twice the box's side: room for the face to have moved a little


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
