"""Tier 1: self-blended fakes (dfpipe.train.sbi) on real face crops, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from dfpipe.train import sbi


@pytest.fixture(scope="module")
def window():
    """Eight 96-px crops of a real face (scikit-image's astronaut) drifting a little, as a track
    gives them, with the face box and five landmarks of each in crop pixels."""
    import cv2
    from skimage import data

    image = data.astronaut()  # RGB; the face is about x 170-260, y 30-150
    crops, marks = [], []
    for i in range(8):
        x1, y1 = 160 + i, 20 + i // 2
        crop = cv2.resize(image[y1 : y1 + 140, x1 : x1 + 140], (96, 96), interpolation=cv2.INTER_AREA)
        crops.append(crop)
        eyes_nose_mouth = np.array([[35, 38], [62, 38], [48, 52], [38, 66], [58, 66]], np.float32)
        marks.append(eyes_nose_mouth + np.array([-i * 0.5, 0], np.float32))
    box = sbi.box_in_crop(70, 80, 0.2, 96)
    return crops, box, marks


def test_a_seed_makes_the_same_fake_and_another_seed_another(window):
    crops, box, marks = window
    a = sbi.blend_window(crops, sbi.window_params("video/0/16", seed=1), box, marks)[0]
    b = sbi.blend_window(crops, sbi.window_params("video/0/16", seed=1), box, marks)[0]
    c = sbi.blend_window(crops, sbi.window_params("video/0/16", seed=2), box, marks)[0]
    d = sbi.blend_window(crops, sbi.window_params("video/0/24", seed=1), box, marks)[0]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert sbi.window_params("video/0/16", 1) != sbi.window_params("video/0/24", 1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, d, strict=True))


@pytest.mark.parametrize("with_landmarks", [True, False])
def test_the_fake_differs_from_its_source_only_inside_the_grown_feathered_mask(window, with_landmarks):
    crops, box, marks = window
    for k in range(20):  # many parameter draws, the strongest warp and feather among them
        params = sbi.draw_params(np.random.default_rng(k))
        fakes, masks = sbi.blend_window(crops, params, box, marks if with_landmarks else None)
        for crop, fake, mask in zip(crops, fakes, masks, strict=True):
            changed = np.any(fake != crop, axis=-1)
            assert changed.any(), "a self-blend changes the face"
            assert not (changed & (mask <= 0)).any(), "a pixel outside the mask changed"
            # The mask reaches past the face box by at most its growth, warp and feather.
            face = max(box[2] - box[0], box[3] - box[1])
            reach = face * (params.grow + params.warp + 3 * params.feather) + face * 0.35 + 2
            ys, xs = np.nonzero(mask > 0)
            assert xs.min() >= box[0] - reach and xs.max() <= box[2] + reach
            assert ys.min() >= box[1] - reach and ys.max() <= box[3] + reach
            # The crop's corners (background) are the real frame's.
            assert np.array_equal(fake[0, 0], crop[0, 0]) and np.array_equal(fake[-1, -1], crop[-1, -1])


def test_every_frame_of_a_window_gets_the_same_blend(window):
    crops, box, _ = window
    params = sbi.window_params("v/1/0", seed=0)
    # Without landmarks the mask is the box's ellipse: one mask for the whole window.
    fakes, masks = sbi.blend_window(crops, params, box, None)
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    # The same frame repeated gives the same fake in every position: no per-frame randomness.
    same, _ = sbi.blend_window([crops[0]] * 4, params, box, None)
    assert all(np.array_equal(same[0], f) for f in same[1:]) and np.array_equal(same[0], fakes[0])


def test_landmarks_shape_the_mask_and_it_covers_them(window):
    crops, box, marks = window
    params = sbi.window_params("v/2/0", seed=3)
    hull = sbi.face_mask(crops[0].shape[:2], box, params, marks[0])
    ellipse = sbi.face_mask(crops[0].shape[:2], box, params, None)
    assert not np.array_equal(hull, ellipse)
    for x, y in marks[0]:
        assert hull[int(round(y)), int(round(x))] > 0.5, "every landmark lies inside the mask"
    # A frame whose landmarks are missing (NaN) falls back to the ellipse.
    nan = np.full((5, 2), np.nan, np.float32)
    assert np.array_equal(sbi.face_mask(crops[0].shape[:2], box, params, nan), ellipse)


def test_box_in_crop_matches_crop_face():
    """The face box lies in its crop where dfpipe.extract.faces.crop_face put it."""
    from dfpipe.extract.faces import crop_face

    frame = np.zeros((400, 400, 3), np.uint8)
    frame[100:180, 150:210] = 255  # a 60 x 80 "face"
    crop = crop_face(frame, np.array([150, 100, 210, 180], np.float32), 0.2, 112)
    x1, y1, x2, y2 = sbi.box_in_crop(60, 80, 0.2, 112)
    # The long side (80) plus 20 % per side fills the 112-px crop: one crop pixel per frame pixel.
    assert (x1, y1, x2, y2) == (26.0, 16.0, 86.0, 96.0)
    ys, xs = np.nonzero(crop[..., 0] > 127)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_stored_landmarks_land_on_the_face_in_its_crop():
    """Landmarks as extraction stores them (box frame) map into the crop where the face is: a crop of
    a frame with a dot on each landmark has its dots where ``landmarks_in_crop`` says."""
    from dfpipe.extract.faces import crop_face
    from dfpipe.extract.stage import landmarks_in_box

    frame = np.zeros((300, 300, 3), np.uint8)
    box = np.array([100, 80, 160, 160], np.float32)
    marks = np.array([[115, 105], [145, 105], [130, 122], [118, 140], [142, 140]], np.float32)
    stored = landmarks_in_box(box, marks)
    assert all(0 < v < 1 for v in stored)
    in_crop = sbi.landmarks_in_crop(stored, sbi.box_in_crop(60, 80, 0.2, 112))
    for (x, y), (cx, cy) in zip(marks, in_crop, strict=True):
        dot = frame.copy()
        dot[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
        crop = crop_face(dot, box, 0.2, 112)[..., 0].astype(float)
        ys, xs = np.nonzero(crop > 60)
        assert abs(xs.mean() - cx) < 1.5 and abs(ys.mean() - cy) < 1.5
    assert sbi.landmarks_in_crop(None, (0, 0, 1, 1)) is None
    assert landmarks_in_box(box, np.full((5, 2), np.nan, np.float32)) is None


def test_training_faces_blended_on_the_fly_are_fake_and_their_sources_real():
    """The embedder's decoding of a batch (``FaceTensors``): with a self-blend every face becomes its
    fake, labelled FAKE, the same for the same seed; the sources of a bare dump (no labels) are REAL."""
    import cv2
    from skimage import data

    from dfpipe.extract.faces import encode_jpeg
    from dfpipe.faces.tensors import FaceTensors

    crop = cv2.resize(data.astronaut()[20:160, 160:300], (96, 96), interpolation=cv2.INTER_AREA)
    stored = [0.25, 0.35, 0.7, 0.35, 0.48, 0.55, 0.3, 0.75, 0.66, 0.75]
    batch = {
        "video_id": np.array(["a", "b"], object),
        "track_id": np.array([0, 0]),
        "frames": np.array([[4], [8]]),
        "label": np.array([None, None], object),
        "faces": np.array([[encode_jpeg(crop)], [encode_jpeg(crop)]], object),
        "face_boxes": np.array([[[70.0, 80.0]], [[70.0, 80.0]]]),
        "landmarks": np.array([[stored], [None]], object),
    }
    real = FaceTensors(96, label=0)(batch)
    fake = FaceTensors(96, blend=sbi.SelfBlend(5, 0.2))(batch)
    again = FaceTensors(96, blend=sbi.SelfBlend(5, 0.2))(batch)
    other = FaceTensors(96, blend=sbi.SelfBlend(6, 0.2))(batch)
    assert real["label"].tolist() == [0, 0] and fake["label"].tolist() == [1, 1]
    assert np.array_equal(fake["image"], again["image"]) and not np.array_equal(fake["image"], other["image"])
    assert not np.allclose(fake["image"], real["image"])
    # Two faces with the same pixels, other names: other blends (seeded by the face's identity).
    assert not np.array_equal(fake["image"][0], fake["image"][1])


def test_sbi_takes_real_and_unlabelled_windows_and_ignores_fake_ones(tmp_path):
    """A bare dump (no labels) trains with fakes=sbi, its windows taken as REAL; labelled FAKE
    windows are left out; fakes=labels on the same windows says what is missing and offers sbi."""
    import pyarrow as pa

    from dfpipe import config as C
    from dfpipe import records as R
    from dfpipe import storage
    from dfpipe.jobs._training import load_windows

    rows = [
        {"window_id": f"w{i}", "video_id": f"v{i}", "track_id": 0, "label": label, "split": split,
         "start_frame": 0, "end_frame": 7, "n_frames": 8, "frame_stride": 1, "counted": True, "part": "p"}
        for i, (label, split) in enumerate([(None, "train"), (0, "train"), (1, "train"), (None, "val"), (0, "val")])
    ]  # fmt: skip
    (tmp_path / "windows").mkdir()
    storage.write_parquet(
        pa.Table.from_pylist(rows, schema=R.WINDOWS_SCHEMA), str(tmp_path / "windows" / "a.parquet")
    )
    segment = storage.Folder(str(tmp_path))
    windows = load_windows(segment, ("train", "val"), columns=None, fakes="sbi")
    assert sorted(windows.column("window_id").to_pylist()) == ["w0", "w1", "w3", "w4"]
    assert set(windows.column("label").to_pylist()) == {0}
    with pytest.raises(C.ConfigError, match="fakes=sbi"):
        load_windows(segment, ("train", "val"), fakes="labels")
