"""Self-blended images (Shiohara and Yamasaki, CVPR 2022), for a window of face crops at a time.

A fake is made from a real face alone: a copy of the face (the *source*) is changed a little in
colour and geometry and blended back onto the original (the *target*) through a face-shaped mask.
What a model learns from such fakes is the blending boundary and the statistics mismatch that face
swaps share, not one generator's artefacts.

For video, one set of blend parameters is drawn per window (:func:`window_params`, seeded by the
window's identity, so every worker and every rerun makes the same fake) and applied to every frame
of it (:func:`blend_window`): the fake is coherent in time, as a swapped face is. The mask is the
convex hull of the five MTCNN landmarks grown to cover the face, or an ellipse inside the face box
where landmarks are missing; it is deformed (a smooth random warp) and feathered, the same way on
every frame. Pixels outside the mask's support are the target's, untouched.

Ray-free and torch-free: numpy and OpenCV on RGB (or BGR: colour order does not matter here) uint8.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from dfpipe import records as R
from dfpipe.extract.faces import crop_scale


@dataclass(frozen=True)
class BlendParams:
    """One window's self-blend: drawn once, applied to every frame."""

    shift: tuple[float, float]  # source translation, as a fraction of the face box's size (x, y)
    scale: float  # source scale about the face centre
    angle: float  # source rotation, degrees
    gain: tuple[float, float, float]  # per-channel colour gain of the source
    bias: tuple[float, float, float]  # per-channel colour offset of the source (0-255 scale)
    grow: float  # how far the mask reaches past the landmarks' hull / the ellipse, fraction of face size
    warp: float  # amplitude of the mask's smooth deformation, fraction of face size
    warp_seed: int  # seed of that deformation field
    feather: float  # Gaussian blur of the mask's edge, fraction of face size
    ratio: float  # blend ratio at the mask's centre (1: the source replaces the target there)


def draw_params(rng: np.random.Generator) -> BlendParams:
    """Random blend parameters in the ranges of the SBI paper's source-target augmentations."""
    return BlendParams(
        shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        scale=float(rng.uniform(0.95, 1.05)),
        angle=float(rng.uniform(-3.0, 3.0)),
        gain=tuple(float(g) for g in rng.uniform(0.9, 1.1, 3)),
        bias=tuple(float(b) for b in rng.uniform(-12.0, 12.0, 3)),
        grow=float(rng.uniform(0.0, 0.15)),
        warp=float(rng.uniform(0.0, 0.04)),
        warp_seed=int(rng.integers(0, 2**31 - 1)),
        feather=float(rng.uniform(0.03, 0.1)),
        ratio=float(rng.choice([0.5, 0.75, 1.0, 1.0])),
    )


def window_params(window_id: str, seed: int) -> BlendParams:
    """The blend parameters of one window: the same for a window and a seed, on any worker."""
    key = zlib.crc32(window_id.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)
    return draw_params(np.random.default_rng(key))


def box_in_crop(box_w: float, box_h: float, margin: float, size: int) -> tuple[float, float, float, float]:
    """Where a face box of ``box_w`` x ``box_h`` lies in its crop (``dfpipe.extract.faces.crop_face``:
    a square of the box's long side plus ``margin`` per side, centred, resized to ``size``)."""
    scale = crop_scale(box_w, box_h, margin, size)
    half_w, half_h = box_w * scale / 2, box_h * scale / 2
    c = size / 2
    return (c - half_w, c - half_h, c + half_w, c + half_h)


def face_mask(
    shape: tuple[int, int],
    box: tuple[float, float, float, float],
    params: BlendParams,
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """The blend mask (float32, 0-1) of a crop of ``shape`` whose face box is ``box`` (crop pixels):
    the landmarks' convex hull grown to the face (``landmarks``: 5 x 2 crop pixels), or an ellipse
    in the box; then deformed and feathered by ``params``."""
    h, w = shape
    x1, y1, x2, y2 = box
    face = max(x2 - x1, y2 - y1)
    hard = np.zeros((h, w), np.uint8)
    if landmarks is not None and np.isfinite(landmarks).all():
        pts = np.asarray(landmarks, np.float32).reshape(-1, 2)
        centre = pts.mean(axis=0)
        # The five points (eyes, nose, mouth corners) span the inner face: push them out from their
        # centre so the hull covers brows and chin, as the paper's 81-point hull does.
        spread = centre + (pts - centre) * (1.6 + params.grow * 4)
        spread[:, 1] += face * 0.05  # the chin is further below the mouth than the brows above the eyes
        hull = cv2.convexHull(spread.astype(np.float32)).astype(np.int32)
        cv2.fillConvexPoly(hard, hull, 1)
    else:
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        axes = ((x2 - x1) / 2 * (0.8 + params.grow), (y2 - y1) / 2 * (0.9 + params.grow))
        cv2.ellipse(
            hard,
            (round(centre[0]), round(centre[1])),
            (max(1, round(axes[0])), max(1, round(axes[1]))),
            0,
            0,
            360,
            1,
            -1,
        )
    mask = hard.astype(np.float32)
    if params.warp > 0:
        mask = _warp(mask, params.warp * face, params.warp_seed)
    sigma = max(0.5, params.feather * face)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return np.clip(mask, 0.0, 1.0)


def _warp(mask: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """``mask`` moved by a smooth random displacement field of about ``amplitude`` pixels."""
    h, w = mask.shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (2, 4, 4)).astype(np.float32)
    dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC) * amplitude
    dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC) * amplitude
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _source(crop: np.ndarray, box: tuple[float, float, float, float], params: BlendParams) -> np.ndarray:
    """The source: the crop with the colour change and a small affine change about the face centre."""
    x1, y1, x2, y2 = box
    face = max(x2 - x1, y2 - y1)
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    m = cv2.getRotationMatrix2D(centre, params.angle, params.scale)
    m[0, 2] += params.shift[0] * face
    m[1, 2] += params.shift[1] * face
    h, w = crop.shape[:2]
    moved = cv2.warpAffine(crop, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    coloured = moved.astype(np.float32) * np.asarray(params.gain, np.float32) + np.asarray(
        params.bias, np.float32
    )
    return np.clip(coloured, 0, 255)


def blend(
    crop: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float], params: BlendParams
) -> np.ndarray:
    """One self-blended crop: ``crop`` where ``mask`` is 0, its changed copy blended in elsewhere."""
    alpha = (mask * params.ratio)[..., None]
    out = _source(crop, box, params) * alpha + crop.astype(np.float32) * (1.0 - alpha)
    out = np.rint(out).astype(np.uint8)
    out[mask <= 0] = crop[mask <= 0]  # exactly the target outside the mask's support
    return out


def blend_window(
    crops: list[np.ndarray],
    params: BlendParams,
    box: tuple[float, float, float, float],
    landmarks: list[np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The self-blended frames of one window, and the mask of each: ``params`` on every frame.

    ``box`` is the face box in crop pixels (:func:`box_in_crop`); ``landmarks``, one 5 x 2 array of
    crop pixels per frame (``None`` where a frame has none), shape each frame's mask so it follows
    the face; without them every frame gets the same ellipse."""
    out, masks, ellipse = [], [], None
    for i, crop in enumerate(crops):
        marks = landmarks[i] if landmarks is not None else None
        if marks is None:  # the same ellipse (and warp) on every frame: made once
            ellipse = face_mask(crop.shape[:2], box, params) if ellipse is None else ellipse
            mask = ellipse
        else:
            mask = face_mask(crop.shape[:2], box, params, marks)
        out.append(blend(crop, mask, box, params))
        masks.append(mask)
    return out, masks


# Bumped whenever the blend changes what it makes: cached codes of self-blended windows are kept
# under it (``dfpipe.jobs._codes``), so codes of an older blend are never mixed with new ones.
VERSION = 1
SUFFIX = "#sbi"  # added to a source window's (and video's) id to name its self-blended copy


MODES = ("labels", "sbi", "both")  # the trainings' ``fakes`` option


def sources():
    """Which rows may be blended (a ``pyarrow.compute`` expression on ``label``, for a table's
    ``filter`` or a Parquet read): REAL ones, and unlabelled ones (a bare dump of a platform's
    videos, taken as real footage); never a labelled FAKE."""
    import pyarrow.compute as pc

    return pc.field("label").is_null() | (pc.field("label") != R.LABEL_FAKE)


def as_real(table):
    """``table`` (a self-blend's sources) with its missing labels set REAL."""
    import pyarrow.compute as pc

    label = table.schema.get_field_index("label")
    return table.set_column(label, "label", pc.fill_null(table.column("label"), R.LABEL_REAL))


def landmarks_in_crop(marks: list[float] | None, box: tuple[float, float, float, float]) -> np.ndarray | None:
    """Landmarks as extraction stores them (``records.FACES_SCHEMA``: 10 values in the box's frame)
    as 5 x 2 crop pixels, for a face whose box lies at ``box`` in the crop; None where absent."""
    if marks is None:
        return None
    uv = np.asarray(marks, np.float32).reshape(-1, 2)
    x1, y1, x2, y2 = box
    return np.array([x1, y1], np.float32) + uv * np.array([x2 - x1, y2 - y1], np.float32)


@dataclass(frozen=True)
class SelfBlend:
    """Self-blended fakes of the face crops extraction stored: ``seed`` picks the fakes, and
    ``margin`` is the extraction's ``crop_margin`` (where the face box lies in a crop)."""

    seed: int
    margin: float

    def __call__(
        self,
        key: str,
        crops: list[np.ndarray],
        boxes: list[tuple[float, float]],
        landmarks: list[list[float] | None] | None = None,
    ) -> list[np.ndarray]:
        """The self-blended copy of one window's crops (one crop for a single face), named ``key``
        (its window id): ``boxes`` holds each frame's face box size (width, height, frame pixels),
        ``landmarks`` each frame's stored landmarks (or None)."""
        size = crops[0].shape[0]
        w, h = np.median(np.asarray(boxes, np.float64), axis=0)
        box = box_in_crop(float(w), float(h), self.margin, size)
        marks = [landmarks_in_crop(m, box) for m in landmarks] if landmarks is not None else None
        return blend_window(crops, window_params(key, self.seed), box, marks)[0]
