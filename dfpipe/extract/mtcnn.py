"""MTCNN's three-stage cascade on uint8 frames, with OpenCV doing the resampling.

facenet-pytorch's ``detect_face`` is the reference: the same networks (P-Net, R-Net, O-Net from the
wheel), thresholds, pyramid, non-maximum suppressions and box regressions. Two costs differ:

* the image pyramid is made by ``cv2.resize(INTER_AREA)`` on uint8 frames (facenet-pytorch converts
  the batch to float first and area-pools it with torch), and
* every candidate box is cut and resized to 24 or 48 px by OpenCV on the uint8 frame (facenet-pytorch
  calls torch's ``interpolate`` once per candidate: about 0.15 ms each, and real footage gives a
  hundred or more candidates per frame).

Profiled on real 1080p clips these two were about a quarter of the detector's time. The networks
run channels-last (NHWC): on a CPU that makes R-Net and O-Net 2.8x faster, with the same results. Boxes agree with
facenet-pytorch's to the resampling's rounding; ``bench/extract_throughput.py`` measures the
agreement with full-resolution detection. The pyramid can start above the smallest face a frame
can hold (``min_size``) and step by another ``factor``: fewer, cheaper P-Net levels.
"""

from __future__ import annotations

import cv2
import numpy as np

from dfpipe import records as R

Faces = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (k, 4), probs (k,), landmarks (k, 5, 2)


def pyramid_scales(height: int, width: int, min_size: float, factor: float) -> list[float]:
    """The scales P-Net sees a frame at: the first maps a ``min_size`` face to P-Net's 12 px cell."""
    scale = 12.0 / min_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def empty_faces() -> Faces:
    return (
        np.zeros((0, 4), np.float32),
        np.zeros((0,), np.float32),
        np.zeros((0, R.N_LANDMARKS, 2), np.float32),
    )


class Cascade:
    """``detect(images)``: faces of each same-size uint8 RGB image, as facenet-pytorch's MTCNN finds them."""

    def __init__(self, pnet, rnet, onet, device: str, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
        import copy

        import torch

        # Channels-last copies of the networks: the same results (to 1e-6), and on a CPU oneDNN runs
        # them 1.4x (P-Net) to 2.8x (R-Net, O-Net) faster than in NCHW.
        self.pnet, self.rnet, self.onet = (
            copy.deepcopy(net).to(memory_format=torch.channels_last).eval() for net in (pnet, rnet, onet)
        )
        self.device = device
        self.thresholds = tuple(thresholds)
        self.factor = factor

    def _tensor(self, images: list[np.ndarray]):
        """uint8 HxWx3 images to the networks' normalised float NCHW batch."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(self.device)
        # HxWx3 images are channels-last already: permuting gives that layout with no copy.
        x = (x.permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
        return x.contiguous(memory_format=torch.channels_last)

    def onet_probability(self, images: list[np.ndarray]) -> np.ndarray:
        """O-Net's face probability of each 48x48 uint8 RGB image (the last stage alone)."""
        import torch
        from facenet_pytorch.models.utils.detect_face import fixed_batch_process

        with torch.inference_mode():
            return fixed_batch_process(self._tensor(images), self.onet)[2][:, 1].float().cpu().numpy()

    def detect(self, images: list[np.ndarray], min_size: float) -> list[Faces]:
        import torch
        from facenet_pytorch.models.utils.detect_face import (
            batched_nms_numpy,
            bbreg,
            fixed_batch_process,
            generateBoundingBox,
            rerec,
        )
        from torchvision.ops import batched_nms

        n = len(images)
        if n == 0:
            return []
        h, w = images[0].shape[:2]
        with torch.inference_mode():
            found, owners = [], []
            for scale in pyramid_scales(h, w, min_size, self.factor):
                size = (int(w * scale + 1), int(h * scale + 1))
                level = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images]
                reg, probs = self.pnet(self._tensor(level))
                boxes, inds = generateBoundingBox(reg, probs[:, 1], scale, self.thresholds[0])
                keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.5)
                found.append(boxes[keep])
                owners.append(inds[keep])
            if not found:
                return [empty_faces() for _ in images]
            boxes, inds = torch.cat(found), torch.cat(owners)
            keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes, inds = boxes[keep], inds[keep]
            if len(boxes) == 0:
                return [empty_faces() for _ in images]
            bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            boxes = torch.stack(
                [
                    boxes[:, 0] + boxes[:, 5] * bw,
                    boxes[:, 1] + boxes[:, 6] * bh,
                    boxes[:, 2] + boxes[:, 7] * bw,
                    boxes[:, 3] + boxes[:, 8] * bh,
                    boxes[:, 4],
                ],
                dim=1,
            )
            boxes = rerec(boxes)

            # R-Net on 24x24 cuts of every candidate.
            cuts, ok = _cuts(images, boxes, inds, w, h, 24)
            boxes, inds = boxes[ok], inds[ok]
            if len(boxes):
                reg, prob = fixed_batch_process(self._tensor(cuts), self.rnet)
                score = prob[:, 1]
                passed = score > self.thresholds[1]
                boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
                inds, reg = inds[passed], reg[passed]
                keep = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
                boxes, inds, reg = boxes[keep], inds[keep], reg[keep]
                boxes = rerec(bbreg(boxes, reg))

            # O-Net on 48x48 cuts: final boxes, probabilities and five landmarks.
            points = torch.zeros((0, R.N_LANDMARKS, 2))
            if len(boxes):
                cuts, ok = _cuts(images, boxes, inds, w, h, 48)
                boxes, inds = boxes[ok], inds[ok]
            if len(boxes):
                reg, marks, prob = fixed_batch_process(self._tensor(cuts), self.onet)
                score = prob[:, 1]
                passed = score > self.thresholds[2]
                boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
                inds, reg, marks = inds[passed], reg[passed], marks[passed]
                bw = boxes[:, 2] - boxes[:, 0] + 1
                bh = boxes[:, 3] - boxes[:, 1] + 1
                px = bw[:, None] * marks[:, :5] + boxes[:, 0:1] - 1
                py = bh[:, None] * marks[:, 5:10] + boxes[:, 1:2] - 1
                points = torch.stack([px, py], dim=2)
                boxes = bbreg(boxes, reg)
                keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
                boxes, inds, points = boxes[keep], inds[keep], points[keep]
            boxes, inds, points = boxes.cpu().numpy(), inds.cpu().numpy(), points.cpu().numpy()
        out = []
        for i in range(n):
            mine = inds == i
            out.append(
                (
                    boxes[mine, :4].astype(np.float32),
                    boxes[mine, 4].astype(np.float32),
                    points[mine].astype(np.float32),
                )
            )
        return out


def _cuts(images, boxes, inds, w: int, h: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each box's pixels, clipped to the image by facenet-pytorch's ``pad``, resized to ``size``;
    and which boxes had any pixels."""
    from facenet_pytorch.models.utils.detect_face import pad

    y1, y2, x1, x2 = pad(boxes, w, h)
    ok = (y2 > y1 - 1) & (x2 > x1 - 1)
    owner = inds.cpu().numpy()
    cuts = [
        cv2.resize(
            images[owner[k]][y1[k] - 1 : y2[k], x1[k] - 1 : x2[k]], (size, size), interpolation=cv2.INTER_AREA
        )
        for k in np.flatnonzero(ok)
    ]
    return cuts, ok
