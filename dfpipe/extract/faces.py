"""Face detection with facenet-pytorch's MTCNN on downscaled frames, and face crops at full resolution."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dfpipe import records as R
from dfpipe.extract.mtcnn import Cascade, Faces
from dfpipe.extract.tracks import iou_matrix


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
    """MTCNN loaded once: whole-frame detection (``detect``), detection in regions around known faces
    (``detect_regions``) and a second opinion on boxes it did not produce (``verify``).

    ``engine`` is the cascade that runs: ``"cascade"`` (:mod:`dfpipe.extract.mtcnn`: OpenCV resampling, the
    pyramid starting at the smallest face that counts, ``min_face_px`` full-resolution pixels) or
    ``"facenet"`` (facenet-pytorch's ``detect_face`` from ``min_face_size``, the rows of models
    trained before the cascade existed).
    """

    long_side: int = 640
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    device: str = "auto"
    engine: str = "cascade"
    min_face_px: int = 0

    def __post_init__(self):
        from facenet_pytorch import MTCNN

        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        self.device = pick_device(self.device)
        self.n_verified = 0  # boxes checked by verify(), and of those how many needed a ROI detection
        self.n_roi = 0
        self.n_calls = 0  # detect() calls and the frames they carried (frames per call matters on a GPU)
        self.n_frames = 0
        self.n_region_calls = 0  # detect_regions() calls and the regions they carried
        self.n_regions = 0
        # The MTCNN weights ship inside the facenet-pytorch wheel: no download here.
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            device=self.device,
            select_largest=False,
            post_process=False,
        )
        self._cascade = Cascade(
            self._mtcnn.pnet,
            self._mtcnn.rnet,
            self._mtcnn.onet,
            self.device,
            self.thresholds,
        )

    def _faces(self, images: list[np.ndarray], min_size: float) -> list[Faces]:
        """``(boxes, probs, landmarks)`` of each same-size RGB image, in its own pixels, faces of
        ``min_size`` up."""
        import torch

        if self.engine == "cascade":
            return self._cascade.detect(images, min_size)
        from facenet_pytorch.models.utils.detect_face import detect_face

        m = self._mtcnn
        with torch.inference_mode():
            found, points = detect_face(
                np.stack(images), min_size, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, m.device
            )
        out = []
        for b, p in zip(found, points, strict=True):
            b = np.asarray(b, np.float32).reshape(-1, 5)
            out.append((b[:, :4], b[:, 4], np.asarray(p, np.float32).reshape(-1, R.N_LANDMARKS, 2)))
        return out

    def detect(self, frames: list[np.ndarray]) -> list[Faces]:
        """``(boxes (k,4) float32 in full-resolution pixels, probs (k,), landmarks (k,5,2) in the
        same pixels: eyes, nose, mouth corners)`` per frame; k may be 0."""
        if not frames:
            return []
        self.n_calls += 1
        self.n_frames += len(frames)
        shrunk = [self._shrunk(f) for f in frames]
        scale = shrunk[0][1]
        small = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f, _ in shrunk]  # only the small copy is converted
        min_size = self.min_face_size
        if self.engine == "cascade":
            # A face smaller than min_face_px is flagged small_face and never used: no pyramid level for it.
            min_size = max(min_size, self.min_face_px * scale)
        return [(b / scale, p, m / scale) for b, p, m in self._faces(small, min_size)]

    def _shrunk(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """The frame as detection sees it (long side at most ``long_side``, area-resampled), and the scale."""
        h, w = frame.shape[:2]
        scale = detection_scale(w, h, self.long_side)
        if scale == 1.0:
            return frame, scale
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale

    def detect_regions(self, frames: list[np.ndarray], hints: list[np.ndarray]) -> list[Faces | None]:
        """Faces near known ones: for each frame (BGR, full resolution, any sizes), MTCNN on a region
        around each of its ``hints`` boxes (twice the box, scaled to ``ROI_SIZE``), all regions of
        all frames in one call.

        Per frame, ``(boxes, probs, landmarks)`` of the faces found in its regions, or None where the frame
        should be scanned whole: a hinted face was not found again (no face overlapping its box by
        ``REGION_FOUND_IOU``), or a region would not box it as a full scan does (:func:`region_suits`).
        Faces outside every region are not looked for.
        """
        import torch
        from torchvision.ops import nms

        suits = [
            len(hs) > 0 and all(region_suits(f, h) for h in hs) for f, hs in zip(frames, hints, strict=True)
        ]
        asked = [(f, hs) for f, hs, ok in zip(frames, hints, suits, strict=True) if ok]
        found = iter(self._in_regions([(f, h) for f, hs in asked for h in hs]))
        self.n_region_calls += 1
        out = []
        for ok, hs in zip(suits, hints, strict=True):
            mine = [next(found) for _ in hs] if ok else []
            lost = not ok or any(
                len(b) == 0 or iou_matrix(b, h[None]).max() < REGION_FOUND_IOU
                for (b, _, _), h in zip(mine, hs, strict=True)
            )
            if lost:
                out.append(None)
                continue
            boxes, probs, marks = (np.concatenate([m[k] for m in mine]) for k in range(3))
            # A face seen from two neighbouring regions is one face.
            keep = nms(torch.from_numpy(boxes), torch.from_numpy(probs), 0.5).numpy()
            out.append((boxes[keep], probs[keep], marks[keep]))
        return out

    def _in_regions(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[Faces]:
        """``(boxes, probs, landmarks)`` in frame pixels found in a region around each ``(frame, box)``."""
        if not items:
            return []
        crops, mapping, small = [], [], {}
        for frame, box in items:
            # Cut from the frame as a full scan sees it (shrunk to long_side): the face has the pixels
            # it has there, so its box agrees with a full scan's, and the cut is cheap.
            if id(frame) not in small:
                small[id(frame)] = self._shrunk(frame)
            image, scale = small[id(frame)]
            crop, x0, y0, side = region_crop(image, box * scale, ROI_MARGIN, ROI_SIZE)
            crops.append(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
            mapping.append((x0 / scale, y0 / scale, side / scale / ROI_SIZE))
        self.n_regions += len(items)
        out = []
        min_size = ROI_MIN_FACE if self.engine == "cascade" else self.min_face_size
        for (x0, y0, s), (b, p, m) in zip(mapping, self._faces(crops, min_size), strict=True):
            out.append(
                (b * s + np.array([x0, y0, x0, y0], np.float32), p, m * s + np.array([x0, y0], np.float32))
            )
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
           scored 0.01-0.2), so a box it doubts is not failed on that alone: MTCNN runs on a region
           around it (:meth:`detect_regions`' regions) and the box passes when a face of ``min_prob``
           or more overlaps it by ``min_iou``.
        """
        counts = [len(b) for b in boxes]
        flat = [(f, b) for f, bs in zip(frames, boxes, strict=True) for b in bs]
        if not flat:
            return [np.zeros((0,), bool) for _ in frames]
        crops = [cv2.cvtColor(crop_face(f, b, 0.0, 48), cv2.COLOR_BGR2RGB) for f, b in flat]
        ok = self._cascade.onet_probability(crops) >= ONET_PASS
        doubtful = np.flatnonzero(~ok)
        for i, (b, p, _) in zip(doubtful, self._in_regions([flat[i] for i in doubtful]), strict=True):
            b = b[p >= min_prob]
            ok[i] = bool(len(b)) and bool(iou_matrix(b, flat[i][1][None]).max() >= min_iou)
        self.n_verified += len(flat)
        self.n_roi += len(doubtful)
        return list(np.split(ok, np.cumsum(counts)[:-1]))


ENGINES = ("cascade", "facenet")
# O-Net's probability that passes a box outright; below it, a region-of-interest detection decides.
ONET_PASS = 0.5
ROI_SIZE = 128
ROI_MARGIN = 0.5  # the region is twice the box's side: room for the face to have moved a little
ROI_MIN_FACE = 20  # in region pixels: the face is about 64 px there; P-Net levels down to faces of 20 px
REGION_EDGE = 0.1  # a box reaching further out of the frame than this share of its side is cut by the edge
REGION_FOUND_IOU = 0.1  # a face found in a region is the hinted one when it overlaps the hint at all


def region_suits(frame: np.ndarray, box: np.ndarray) -> bool:
    """Whether a region around ``box`` finds its face as a full scan would: the box inside the frame
    (by ``REGION_EDGE`` of its side) and the region smaller than the frame's short side."""
    h, w = frame.shape[:2]
    side = max(float(box[2] - box[0]), float(box[3] - box[1]))
    slack = REGION_EDGE * side
    inside = box[0] >= -slack and box[1] >= -slack and box[2] <= w + slack and box[3] <= h + slack
    return bool(inside) and side * (1 + 2 * ROI_MARGIN) <= min(h, w)


def region_crop(
    frame: np.ndarray, box: np.ndarray, margin: float, size: int
) -> tuple[np.ndarray, int, int, int]:
    """The square of whole pixels around ``box`` enlarged by ``margin`` per side, area-resized to
    ``size`` (as a full scan shrinks its frame: a warp would alias a large face and move its box);
    edges replicated. Returns the crop and the square's left, top and side in frame pixels."""
    side = max(2, round(max(float(box[2] - box[0]), float(box[3] - box[1])) * (1 + 2 * margin)))
    x0 = round((float(box[0]) + float(box[2]) - side) / 2)
    y0 = round((float(box[1]) + float(box[3]) - side) / 2)
    h, w = frame.shape[:2]
    inner = frame[max(0, y0) : min(h, y0 + side), max(0, x0) : min(w, x0 + side)]
    pads = (max(0, -y0), max(0, y0 + side - h), max(0, -x0), max(0, x0 + side - w))
    if inner.size == 0:
        inner = np.zeros((1, 1, 3), frame.dtype)
    if any(pads):
        inner = cv2.copyMakeBorder(inner, *pads, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(inner, (size, size), interpolation=interp), x0, y0, side


def crop_scale(box_w: float, box_h: float, margin: float, size: int) -> float:
    """Crop pixels per frame pixel of :func:`crop_face`: the box's long side plus ``margin`` per
    side becomes ``size``."""
    return size / max(max(box_w, box_h) * (1 + 2 * margin), 2.0)


def crop_face(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """A square crop around ``box`` enlarged by ``margin`` per side, resized to ``size``x``size``.

    Pixels beyond the frame edge are replicated, so faces at the border keep their position.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = crop_scale(x2 - x1, y2 - y1, margin, size)
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
