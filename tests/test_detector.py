"""Tier 1: dfpipe's MTCNN cascade against facenet-pytorch's, and detection in regions around faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA

from dfpipe.extract.faces import FaceDetector
from dfpipe.extract.mtcnn import pyramid_scales
from dfpipe.extract.tracks import iou_matrix


@pytest.fixture(scope="module")
def detectors() -> dict[str, FaceDetector]:
    return {engine: FaceDetector(device="cpu", engine=engine) for engine in ("cascade", "facenet")}


def astronaut_scene(width: int, height: int, face_side: int) -> np.ndarray:
    """A BGR frame of ``width`` x ``height`` with the astronaut photograph's face about ``face_side`` px tall."""
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # 512 x 512, the face about 110 px tall
    side = max(8, round(512 * face_side / 110))
    frame = np.full((height, width, 3), 70, np.uint8)
    small = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    y, x = (height - min(side, height)) // 2, (width - min(side, width)) // 2
    frame[y : y + side, x : x + side] = small[: height - y, : width - x]
    return frame


def confident(det, min_prob=0.9):
    boxes, probs = det[:2]
    return boxes[probs >= min_prob]


def real_frames() -> list[np.ndarray]:
    frames = []
    for path in sorted(SHARED_DATA.rglob("*.mp4")):
        cap = cv2.VideoCapture(str(path))
        cap.set(cv2.CAP_PROP_POS_FRAMES, 40)
        ok, frame = cap.read()
        cap.release()
        if ok:
            frames.append(frame)
    return frames


@pytest.mark.parametrize("size", [(640, 360), (1280, 720), (360, 640)])
def test_the_cascade_finds_the_faces_facenet_pytorch_finds(detectors, size):
    frame = astronaut_scene(*size, face_side=min(size) // 3)
    ours = confident(detectors["cascade"].detect([frame])[0])
    theirs = confident(detectors["facenet"].detect([frame])[0])
    assert len(ours) == len(theirs) == 1
    assert iou_matrix(ours, theirs)[0, 0] >= 0.9


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (a fresh clone)")
def test_on_real_footage_the_cascade_agrees_with_facenet_pytorch(detectors):
    """One frame of every real clip: the same confident faces, boxes within MTCNN's own jitter."""
    frames = real_frames()
    pairs = same_count = 0
    ious = []
    for frame in frames:
        ours = confident(detectors["cascade"].detect([frame])[0])
        theirs = confident(detectors["facenet"].detect([frame])[0])
        same_count += len(ours) == len(theirs)
        if len(ours) and len(theirs):
            ious += list(iou_matrix(theirs, ours).max(axis=1))
            pairs += 1
    assert len(frames) >= 3 and same_count >= 0.8 * len(frames)
    assert np.mean(np.array(ious) >= 0.8) >= 0.9, f"IoU with facenet-pytorch's boxes: {np.round(ious, 2)}"


def test_both_engines_and_regions_give_the_five_landmarks_on_the_face(detectors):
    """Eyes above the nose above the mouth, left of right, inside the box, in frame pixels whether
    the frame was shrunk for detection or the face was found in a region around a known box."""
    frame = astronaut_scene(1280, 720, face_side=240)  # shrunk to 640 for detection: landmarks scaled back
    found = {engine: d.detect([frame])[0] for engine, d in detectors.items()}
    box = confident(found["cascade"])[0]
    found["regions"] = detectors["cascade"].detect_regions([frame], [box[None]])[0]
    side = box[2] - box[0]
    for name, (boxes, probs, marks) in found.items():
        i = int(np.argmax(probs))
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = marks[i]
        assert lx < nx < rx and mlx < mrx, name
        assert max(ly, ry) < ny < min(mly, mry), name
        b = boxes[i]
        assert (marks[i][:, 0] > b[0]).all() and (marks[i][:, 0] < b[2]).all(), name
        assert (marks[i][:, 1] > b[1]).all() and (marks[i][:, 1] < b[3]).all(), name
    # The engines and the region agree on where the landmarks are (within 5% of the face's side).
    i = {name: int(np.argmax(f[1])) for name, f in found.items()}
    for name in ("facenet", "regions"):
        assert np.abs(found[name][2][i[name]] - found["cascade"][2][i["cascade"]]).max() < 0.05 * side, name


def test_the_pyramid_starts_at_the_smallest_face_that_counts():
    assert len(pyramid_scales(360, 640, 40, 0.709)) < len(pyramid_scales(360, 640, 20, 0.709))
    assert pyramid_scales(360, 640, 20, 0.709)[0] == pytest.approx(12 / 20)
    # P-Net finds faces down to about half the pyramid's first size: a 24-px face is under 60 / 2
    frame = astronaut_scene(640, 360, face_side=24)
    assert len(confident(FaceDetector(device="cpu", min_face_px=0).detect([frame])[0])) == 1
    assert len(confident(FaceDetector(device="cpu", min_face_px=60).detect([frame])[0])) == 0
    # facenet-pytorch's cascade keeps scanning from min_face_size, as the rows of older models were made
    assert (
        len(confident(FaceDetector(device="cpu", engine="facenet", min_face_px=60).detect([frame])[0])) == 1
    )


def test_regions_find_the_face_around_its_box_and_say_when_it_is_gone(detectors):
    det = detectors["cascade"]
    big = astronaut_scene(1280, 720, face_side=240)
    small = astronaut_scene(640, 360, face_side=100)
    big_box, small_box = (confident(d)[:1] for d in det.detect([big]) + det.detect([small]))
    moved = small_box + np.array([12, -8, 12, -8], np.float32)  # the face a little off its last place
    nowhere = np.array([[20, 20, 80, 80]], np.float32)  # a corner with no face
    found = det.detect_regions([big, small, small], [big_box, moved, nowhere])
    assert found[2] is None, "a region that lost its face says so"
    for got, want in zip(found[:2], (big_box, small_box), strict=True):
        assert len(confident(got)) == 1 and iou_matrix(confident(got), want)[0, 0] >= 0.8
    assert det.n_regions >= 3 and det.n_region_calls >= 1


def test_verify_passes_a_face_box_and_fails_an_empty_one(detectors):
    frame = astronaut_scene(640, 360, face_side=110)
    box = confident(detectors["cascade"].detect([frame])[0])[:1]
    for det in detectors.values():
        ok = det.verify([frame, frame], [box, np.array([[20, 20, 80, 80]], np.float32)])
        assert ok[0].tolist() == [True] and ok[1].tolist() == [False]


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        FaceDetector(device="cpu", engine="dlib")


def test_a_face_filling_the_frame_or_no_hint_is_scanned_whole(detectors):
    det = detectors["cascade"]
    frame = astronaut_scene(640, 360, face_side=110)
    box = confident(det.detect([frame])[0])[:1]
    huge = np.array([[100, 0, 500, 400]], np.float32)  # its region is larger than the frame
    found = det.detect_regions([frame] * 3, [box, huge, np.zeros((0, 4), np.float32)])
    assert found[0] is not None and found[1:] == [None, None]


@pytest.mark.skipif(
    not (SHARED_DATA / "unlabelled" / "sample_3.mp4").exists(), reason="../shared/data is absent"
)
def test_a_real_face_cut_by_the_frame_edge_is_scanned_whole(detectors):
    """A real clip (unlabelled/sample_3.mp4): a face larger than the frame, its box well beyond the top edge.
    A region (mostly replicated edge) finds it with another box (IoU about 0.7 with the full scan's),
    so the frame is scanned whole instead."""
    cap = cv2.VideoCapture(str(SHARED_DATA / "unlabelled" / "sample_3.mp4"))
    ok, frame = cap.read()
    cap.release()
    det = detectors["cascade"]
    box = confident(det.detect([frame])[0])[:1]
    assert ok and len(box) and box[0, 1] < -0.1 * (box[0, 3] - box[0, 1]), "the face is cut by the top edge"
    assert det.detect_regions([frame], [box]) == [None]
