"""Tier 1: stages and helpers on tiny inputs, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dfpipe import config as C
from dfpipe import records as R
from dfpipe import storage
from dfpipe.extract.catalog import build_catalog
from dfpipe.extract.decode import DecodeError, DecodeLimits, VideoReader
from dfpipe.extract.faces import crop_face, decode_jpeg, detection_scale, encode_jpeg, face_flags
from dfpipe.extract.tracks import iou_matrix, link_tracks
from dfpipe.jobs.extract import ExtractConfig
from dfpipe.sampledata.generate import ClipSpec, SampleConfig, plan, write_clip
from dfpipe.storage import Folder


def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-5)


def test_link_tracks_two_people_and_gap():
    left, right = np.array([10, 10, 50, 50.0]), np.array([200, 10, 240, 50.0])
    frames = [0, 1, 2, 3, 10]
    boxes = [
        np.stack([left, right]),
        np.stack([right + 2, left + 1]),
        np.stack([left + 2]),
        np.zeros((0, 4)),
        np.stack([left]),
    ]
    ids = link_tracks(frames, boxes, min_iou=0.3, max_gap=5)
    assert ids[0].tolist() == [0, 1]
    assert ids[1].tolist() == [1, 0]  # order within a frame does not matter
    assert ids[2].tolist() == [0]
    assert ids[3].tolist() == []
    assert ids[4].tolist() == [2]  # 8 frames later: beyond max_gap, a new track


def test_face_flags_precedence():
    boxes = np.array([[0, 0, 100, 100], [200, 0, 300, 100], [0, 0, 10, 10], [0, 0, 100, 100]], np.float32)
    probs = np.array([0.99, 0.99, 0.99, 0.5], np.float32)
    assert face_flags(boxes, probs, min_prob=0.9, min_face_px=40) == [
        R.FLAG_MULTI_FACE,
        R.FLAG_MULTI_FACE,
        R.FLAG_SMALL_FACE,
        R.FLAG_LOW_PROB,
    ]
    assert face_flags(boxes[:1], probs[:1], 0.9, 40) == [R.FLAG_OK]


def test_detection_scale_bounds_long_side():
    assert detection_scale(320, 240, 640) == 1.0
    assert detection_scale(1920, 1080, 640) == pytest.approx(1 / 3)
    assert detection_scale(1080, 1920, 640) == pytest.approx(1 / 3)


def test_crop_face_is_square_and_centred():
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = 255
    crop = crop_face(frame, np.array([100, 50, 200, 150]), margin=0.0, size=64)
    assert crop.shape == (64, 64, 3)
    assert crop[5:59, 5:59].min() > 200
    edge = crop_face(frame, np.array([-20, -20, 20, 20]), margin=0.2, size=32)  # beyond the frame edge
    assert edge.shape == (32, 32, 3)
    back = decode_jpeg(encode_jpeg(crop))
    assert back.shape == crop.shape and np.abs(back.astype(int) - crop).mean() < 8


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(ClipSpec("clip", "REAL", 0, 160, 120, n_frames=12, fps=10.0, scene_seed=1), str(path))
    return path


def test_video_reader_stride_and_cap(clip):
    reader = VideoReader(str(clip), stride=3, limits=DecodeLimits(max_frames=3), chunk=2)
    chunks = list(reader)
    assert [idx for idx, _ in chunks] == [[0, 3], [6]]
    assert chunks[0][1][0].shape == (120, 160, 3)
    assert reader.capped
    reader = VideoReader(str(clip))
    assert sum(len(i) for i, _ in reader) == 12 and not reader.capped
    assert (reader.info.width, reader.info.height, reader.info.fps) == (160, 120, 10.0)


def test_video_reader_refuses_by_limit_and_garbage(clip, tmp_path):
    with pytest.raises(DecodeError) as exc:
        VideoReader(str(clip), limits=DecodeLimits(max_pixels=100 * 100))
    assert exc.value.reason == R.REASON_TOO_LARGE
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DecodeError) as exc:
        list(VideoReader(str(junk)))
    assert exc.value.reason == R.REASON_DECODE_ERROR


def test_sample_plan_is_deterministic_and_labelled():
    cfg = SampleConfig(videos=5, seed=7)
    a, b = plan(cfg), plan(cfg)
    assert a == b
    fakes = [c for c in a if c.label == "FAKE"]
    reals = {c.video_id: c for c in a if c.label == "REAL"}
    assert len(fakes) == 2 and all(f.original in reals and reals[f.original].part == f.part for f in fakes)
    assert {c.kind for c in a} >= {"no_face", "two_faces", "portrait", "odd_size"}
    odd = next(c for c in a if c.kind == "odd_size")
    assert odd.width % 2 == 1 and odd.height % 2 == 1
    assert plan(SampleConfig(videos=5, seed=8))[0].video_id != a[0].video_id


def test_sample_clip_bytes_are_deterministic(tmp_path):
    spec = ClipSpec("x", "FAKE", 0, 96, 64, n_frames=4, fps=10.0, scene_seed=3, swap_seed=4, original="y")
    write_clip(spec, str(tmp_path / "a.mp4"))
    write_clip(spec, str(tmp_path / "b.mp4"))
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_matched_swaps_carry_no_colour_cast_and_real_clips_share_the_grading():
    """The harder generator: a matched swap's face region keeps the original's colour (the standard
    swap shifts it), and a REAL clip's frames get the same global grading as its FAKEs."""
    from dfpipe.sampledata.generate import _astronaut_bgr, _FaceSwap, _grade, _Scene

    photo = _astronaut_bgr()
    real = ClipSpec("r", "REAL", 0, 320, 240, n_frames=1, fps=10.0, scene_seed=5, swap="matched")
    scene = _Scene(real, photo)
    x1, y1, x2, y2 = (int(v) for v in scene.face_boxes[0])
    inner = (slice(y1 + (y2 - y1) // 4, y2 - (y2 - y1) // 4), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))

    def cast(matched: bool) -> float:
        casts = []
        for seed in range(6):
            swapped = _FaceSwap(scene, photo, seed, matched).apply(scene.canvas)
            diff = swapped[inner].reshape(-1, 3).mean(0) - scene.canvas[inner].reshape(-1, 3).mean(0)
            casts.append(np.abs(diff - diff.mean()).max())  # a shift of one channel against the others
        return float(np.mean(casts))

    assert cast(True) < 0.5 * cast(False), (cast(True), cast(False))
    frame = scene.frame(0)
    graded = _grade(frame, real, 0)
    assert np.array_equal(graded, _grade(frame, real, 0)) and not np.array_equal(graded, frame)
    fake = ClipSpec("f", "FAKE", 0, 320, 240, n_frames=1, fps=10.0, scene_seed=5, swap_seed=1, swap="matched")
    background = (slice(0, 20), slice(0, 20))  # outside the face: REAL and FAKE graded alike
    assert np.array_equal(_grade(frame, fake, 0)[background], graded[background])


def test_catalog_dfdc_with_bad_entries(tmp_path):
    part = tmp_path / "dfdc_train_part_3"
    part.mkdir()
    (part / "good.mp4").write_bytes(b"x")
    (part / "unlisted.mp4").write_bytes(b"x")
    (part / "metadata.json").write_text(
        "\ufeff"
        + json.dumps(
            {
                "good.mp4": {"label": "FAKE", "original": "src.mp4"},
                "gone.mp4": {"label": "REAL"},
                "../up.mp4": {"label": "REAL"},
                "/etc/passwd": {"label": "REAL"},
                "odd.mp4": {"label": 7},
                "weird.mp4": "REAL",
            }
        )
    )
    other = tmp_path / "dfdc_train_part_4"
    other.mkdir()
    (other / "good.mp4").write_bytes(b"x")  # same id as in part 3
    (other / "metadata.json").write_text(json.dumps({"good.mp4": {"label": "REAL"}}))
    rows = {(r["part"], r["filename"]): r for r in build_catalog(Folder(str(tmp_path))).to_pylist()}
    good = rows[("dfdc_train_part_3", "good.mp4")]
    assert (good["label"], good["original"], good["error"]) == (1, "src", None)
    assert rows[("dfdc_train_part_3", "unlisted.mp4")]["label"] is None
    assert R.reason_of(rows[("dfdc_train_part_3", "gone.mp4")]["error"]) == R.REASON_MISSING_FILE
    assert R.reason_of(rows[("dfdc_train_part_3", "up.mp4")]["error"]) == R.REASON_UNSAFE_PATH
    assert R.reason_of(rows[("dfdc_train_part_3", "passwd")]["error"]) == R.REASON_UNSAFE_PATH
    assert R.reason_of(rows[("dfdc_train_part_3", "odd.mp4")]["error"]) == R.REASON_BAD_LABEL
    assert R.reason_of(rows[("dfdc_train_part_3", "weird.mp4")]["error"]) == R.REASON_BAD_METADATA
    dup = rows[("dfdc_train_part_4", "good.mp4")]
    assert R.reason_of(dup["error"]) == R.REASON_DUPLICATE_ID
    ids = [r["video_id"] for r in rows.values()]
    assert len(ids) == len(set(ids)), "manifest ids must stay unique"


def test_catalog_symlink_outside_is_refused(tmp_path):
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    root = tmp_path / "data"
    root.mkdir()
    (root / "link.mp4").symlink_to(outside)
    (root / "fine.mp4").write_bytes(b"x")
    rows = {r["video_id"]: r for r in build_catalog(Folder(str(root))).to_pylist()}
    assert R.reason_of(rows["link"]["error"]) == R.REASON_UNSAFE_PATH
    assert rows["fine"]["error"] is None and rows["fine"]["label"] is None


def test_catalog_labels_csv(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mp4").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text("filename,label\na.mp4,FAKE\nsub/b.mp4,0\nc.mp4,1\n")
    rows = {r["video_id"]: r for r in build_catalog(Folder(str(tmp_path))).to_pylist()}
    assert rows["a"]["label"] == 1 and rows["b"]["label"] == 0 and rows["b"]["part"] == "sub"
    assert R.reason_of(rows["c"]["error"]) == R.REASON_MISSING_FILE


def test_top_level_videos_belong_to_the_part_named_after_the_dataset_folder(tmp_path):
    """Not `part .` in reports: a DFDC part given as the input names its videos' part as the whole
    dataset would, and a plain dump's videos are in the dump's part."""
    part = tmp_path / "dfdc" / "dfdc_train_part_7"
    part.mkdir(parents=True)
    (part / "a.mp4").write_bytes(b"x")
    (part / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "FAKE"}}))
    from_root = build_catalog(Folder(str(tmp_path / "dfdc"))).to_pylist()
    from_part = build_catalog(Folder(str(part) + "/")).to_pylist()
    assert [r["part"] for r in from_root] == [r["part"] for r in from_part] == ["dfdc_train_part_7"]
    dump = tmp_path / "2026-11-25"
    dump.mkdir()
    (dump / "b.mp4").write_bytes(b"x")
    assert [r["part"] for r in build_catalog(Folder(str(dump))).to_pylist()] == ["2026-11-25"]
    (dump / "labels.csv").write_text("filename,label\nb.mp4,REAL\n")
    assert [r["part"] for r in build_catalog(Folder(str(dump))).to_pylist()] == ["2026-11-25"]


def test_catalog_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_catalog(Folder(str(tmp_path / "nope")))


def test_config_overrides_and_errors(tmp_path):
    from dfpipe.cli import parse_args

    cfg = parse_args(
        ExtractConfig, ["--input", "/a", "--output", "/b", "frame_stride=2", "--overwrite", "device=cpu"]
    )
    assert (cfg.frame_stride, cfg.overwrite, cfg.device, cfg.num_workers) == (2, True, "cpu", None)
    yml = tmp_path / "c.yaml"
    yml.write_text("input: /a\noutput: /b\nface_size: 96\n")
    assert parse_args(ExtractConfig, ["--config", str(yml), "face_size=64"]).face_size == 64
    for argv, match in [
        (["--input", "/a"], "missing required option"),
        (["--input", "/a", "--output", "/b", "devise=cpu"], "unknown option"),
        (["--input", "/a", "--output", "/b", "device=tpu"], "not one of"),
        (["--input", "/a", "--output", "/b", "frame_stride=two"], "expected an integer"),
        (["--input", "/a", "--output", "/a"], "output must differ"),
    ]:
        with pytest.raises(C.ConfigError, match=match):
            parse_args(ExtractConfig, argv)


def test_a_positional_path_with_an_equals_sign_is_a_path(tmp_path, capsys):
    """``dfpipe score-video FILE`` and ``dfpipe check OUTPUT`` take a path whatever its name holds:
    ``a/b=c.mp4`` or ``<img src=x>.mp4`` is a file, not an option ``key=value``."""
    from dfpipe.cli import is_override, main

    assert is_override("model=out/m") and is_override("extract.max_frames=60")
    assert (
        not is_override("/data/<img src=x>.mp4") and not is_override("runs/a=b") and not is_override("./x=1")
    )
    missing = tmp_path / "run=1"
    assert main(["check", str(missing)]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err


def test_storage_roundtrip_and_safe_names(tmp_path):
    uri = "file://" + str(tmp_path / "x" / "y.json")
    storage.write_json(uri, {"a": 1})
    assert storage.read_json(str(tmp_path / "x" / "y.json")) == {"a": 1}
    assert not list((tmp_path / "x").glob(".tmp-*"))
    assert storage.safe_name("abc-1.2_x") == "abc-1.2_x"
    assert "/" not in storage.safe_name("../../etc/passwd") and not storage.safe_name("..").startswith(".")
    assert storage.safe_name("a/b") != storage.safe_name("a_b")


def test_a_written_file_has_the_permissions_of_any_file_the_user_writes(tmp_path):
    """Atomic writes go through a private temporary file; the file in place is not private (a review
    page served as a static site, an output other accounts on a shared disk read)."""
    storage.write_text(str(tmp_path / "report" / "index.html"), "<!doctype html>")
    mode = (tmp_path / "report" / "index.html").stat().st_mode & 0o777
    assert mode == 0o666 & ~storage._UMASK  # 0o644 under the usual umask, not mkstemp's 0o600


def test_extract_stage_without_ray(clip, tmp_path):
    from dfpipe.extract.stage import FaceExtractStage

    stage = FaceExtractStage.of(Folder(str(tmp_path / "faces")), face_size=64, min_face_px=10)
    stage.setup()
    rows = [
        {
            "video_id": "clip",
            "uri": str(clip),
            "filename": "clip.mp4",
            "part": "p",
            "label": 0,
            "original": None,
            "error": None,
        },
        {
            "video_id": "gone",
            "uri": str(tmp_path / "gone.mp4"),
            "filename": "gone.mp4",
            "part": "p",
            "label": 1,
            "original": None,
            "error": None,
        },
        {
            "video_id": "known",
            "uri": "x",
            "filename": "x",
            "part": "p",
            "label": None,
            "original": None,
            "error": "missing_file: x",
        },
    ]
    import pyarrow as pa

    out = {r["video_id"]: r for r in stage(pa.Table.from_pylist(rows, schema=R.CATALOG_SCHEMA)).to_pylist()}
    assert out["clip"]["status"] == "ok" and out["clip"]["n_frames"] == 12
    assert out["clip"]["n_ok"] + out["clip"]["n_no_face"] + out["clip"]["n_low_prob"] >= 12
    assert R.reason_of(out["gone"]["error"]) == R.REASON_READ_ERROR
    assert out["known"]["status"] == "failed" and out["known"]["error"] == "missing_file: x"
    faces = pq.read_table(out["clip"]["faces_uri"])
    assert faces.schema.equals(R.FACES_SCHEMA)
    assert sorted(set(faces.column("frame_idx").to_pylist())) == list(range(12))
    ok = faces.filter(pc.equal(faces.column("flag"), "ok"))
    assert ok.num_rows > 6, "the generated face should be found in most frames"
    assert decode_jpeg(ok.column("face_jpeg")[0].as_py()).shape == (64, 64, 3)
    # Every face row has its five landmarks in the box's frame (detected and interpolated rows
    # alike), a frame without a face none.
    boxed = pc.is_valid(faces.column("box_x1"))
    assert pc.all(pc.equal(boxed, pc.is_valid(faces.column("landmarks")))).as_py()
    assert not pc.all(faces.column("detected")).as_py(), "some rows should be interpolated"
    for marks in ok.column("landmarks").to_pylist():
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = np.asarray(marks).reshape(5, 2)
        assert 0 < lx < nx < rx < 1 and 0 < mlx < mrx < 1
        assert 0 < max(ly, ry) < ny < min(mly, mry) < 1


def test_prefetched_keeps_order_raises_and_stops_with_its_consumer():
    import time

    from dfpipe.extract.decode import prefetched

    assert list(prefetched(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise DecodeError(R.REASON_TIMEOUT, "too slow")

    with pytest.raises(DecodeError, match="too slow"):
        list(prefetched(failing()))

    produced: list[int] = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    chunks = prefetched(endless(), depth=2)
    assert next(chunks) == 0
    chunks.close()  # the consumer stops early: so does the producer
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 4


def test_only_the_runner_imports_ray():
    """STYLE.md: stages and jobs are Ray-free; one module turns them into Ray work."""
    import re

    root = Path(__file__).resolve().parents[1] / "dfpipe"
    offenders = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        if p.name != "runner.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.match(r"\s*(import ray\b|from ray\b)", line)
    ]
    assert offenders == []


def explain_inputs():
    """Faces of two tracks over 40 frames, track 1 a poster that does not count, and its record."""
    import pyarrow as pa

    face = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    rows = [
        {"frame_idx": f, "track_id": t, "flag": R.FLAG_OK if f % 9 else R.FLAG_NO_FACE, "face_jpeg": face}
        for f in range(40)
        for t in (0, 1)
    ]
    record = {
        "video_id": "abc",
        "prob_fake": 0.8,
        "n_windows": 4,
        "tracks": [
            {"track_id": 0, "counted": True, "reason": None},
            {"track_id": 1, "counted": False, "reason": "still: a poster or photograph"},
        ],
        "windows": [
            {"track_id": t, "start_frame": s, "prob_fake": 0.5 + 0.1 * t} for t in (0, 1) for s in (0, 16)
        ],
    }
    return pa.Table.from_pylist(rows), record


def test_explain_figure_title_clear_of_thumbnails_and_uncounted_tracks_apart():
    import matplotlib.pyplot as plt

    from dfpipe.score.explain import explain_figure

    faces, record = explain_inputs()
    fig = explain_figure(faces, record, window_frames=16)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    thumbs = [ax for ax in fig.get_axes() if ax.images]
    assert thumbs and not [ax for ax in thumbs if ax.get_tightbbox(renderer).overlaps(title)]
    counted, apart = fig.subfigs[0], fig.subfigs[1]
    assert counted._suptitle.get_text().startswith("tracks counted") and apart._suptitle.get_text() == (
        "tracks not counted"
    )

    def rows_of(panel):
        return [ax.get_window_extent(renderer) for ax in panel.get_axes() if ax.images]

    lowest_counted = min(b.y0 for b in rows_of(counted))
    assert rows_of(apart) and max(b.y1 for b in rows_of(apart)) < lowest_counted, "not counted: below"
    assert not [b for b in rows_of(apart) if b.overlaps(counted._suptitle.get_window_extent(renderer))]
    plt.close(fig)


def test_extraction_options_added_later_keep_old_models_and_rows_as_they_were():
    """scan_every and mtcnn came after models and rows were recorded: at their old values (0, facenet)
    rows hash as they did, an old model's recipe gets those values, and an old extraction is told apart
    from a new recipe by name."""
    from dfpipe.jobs import recipe

    new = ExtractConfig(input="a", output="b")
    as_before = ExtractConfig(input="a", output="b", scan_every=0, mtcnn="facenet")
    keys_before = [k for k in recipe.EXTRACT_OPTIONS if k not in recipe.ADDED]
    assert C.config_hash(as_before, recipe.EXTRACT_OPTIONS) == C.config_hash(as_before, keys_before)
    assert C.config_hash(new, recipe.EXTRACT_OPTIONS) != C.config_hash(new, keys_before)
    old_recipe = {"extract": {k: C.to_dict(as_before)[k] for k in keys_before}, "segment": {}}
    rec = recipe.of_model({"recipe": old_recipe}, "m")
    assert rec["extract"]["scan_every"] == 0 and rec["extract"]["mtcnn"] == "facenet"
    made_before = recipe.with_added({k: C.to_dict(as_before)[k] for k in keys_before})
    expected = {k: C.to_dict(new)[k] for k in recipe.EXTRACT_OPTIONS}
    assert recipe.differences(expected, made_before) == [
        ("scan_every", 64, 0),
        ("mtcnn", "cascade", "facenet"),
    ]


def test_what_changes_rows_is_declared_once_on_each_option():
    """``rows=True`` on an option's declaration is the one list of what changes a job's rows or
    model: the rows' hash, the recipe, what a training may change on resumption and what scoring
    may override follow from it. These hashes are those that rows and model directories made
    before the flag recorded (issue 37): an option flagged or unflagged by mistake changes them."""
    from dfpipe.jobs import _training as T
    from dfpipe.jobs import recipe
    from dfpipe.jobs import score as score_job
    from dfpipe.jobs import segment as segment_job
    from dfpipe.jobs.train_classifier import TrainClassifierConfig
    from dfpipe.jobs.train_embedder import TrainEmbedderConfig

    extraction = ExtractConfig(input="a", output="b")
    segmentation = segment_job.SegmentConfig(input="a", output="b")
    assert C.config_hash(extraction, recipe.EXTRACT_OPTIONS) == "0a91ca2473d5"
    assert C.config_hash(segmentation, segment_job.OUTPUT_FIELDS) == "eabc3c9a5660"
    assert T.training_hash(TrainClassifierConfig(input="a", output="b", embedder="c")) == "c565c06ff9a7"
    assert T.training_hash(TrainEmbedderConfig(input="a", output="b")) == "7010f3a06352"
    assert set(recipe.WINDOW_OPTIONS) == {
        "usable_flags", "window_len", "window_stride", "min_len", "remainder",
        "track_min_share", "track_min_mean_prob", "track_min_relative_size",
    }  # fmt: skip
    assert set(recipe.SPLIT_OPTIONS) == {
        "val_parts",
        "test_parts",
        "val_fraction",
        "test_fraction",
        "split_salt",
    }
    assert recipe.ADDED == {"scan_every": 0, "mtcnn": "facenet"}
    # Scoring may set a window option or a worker count, never a split (the model's) or a path.
    assert score_job.SEGMENT_ALLOWED == {
        *recipe.WINDOW_OPTIONS,
        "videos_per_task",
        "num_workers",
        "manifest_flush_rows",
    }
    # A training resumes with other workers, not with another learning rate.
    faster = TrainEmbedderConfig(input="a", output="b", num_workers=4, max_failures=3, use_gpu=True)
    assert T.training_hash(faster) == "7010f3a06352"
    assert T.training_hash(TrainEmbedderConfig(input="a", output="b", lr=1e-3)) != "7010f3a06352"


# The packages from the bottom up: each imports only from those below it (or itself). The command
# line and the output checker sit on top with the jobs: they may import any step.
LAYERS = (
    ("core", "dfpipe"),
    ("extract", "dfpipe.extract"),
    ("sampledata", "dfpipe.sampledata"),
    ("segment", "dfpipe.segment"),
    ("faces", "dfpipe.faces"),
    ("train", "dfpipe.train"),
    ("score", "dfpipe.score"),
    ("jobs", "dfpipe.jobs"),
)
TOP = ("dfpipe.cli", "dfpipe.invariants")  # modules of the core folder that sit with the jobs


def layer_of(module: str) -> int:
    if module in TOP or module.startswith(tuple(f"{m}." for m in TOP)):
        return len(LAYERS) - 1
    found = 0
    for i, (_, prefix) in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            found = i
    return found


def dfpipe_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every dfpipe module ``path`` imports, at its top or inside a function, but not under ``if TYPE_CHECKING``."""
    import ast

    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dfpipe":
                found += [(node.lineno, f"dfpipe.{a.name}") for a in node.names]
            elif node.module.startswith("dfpipe."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("dfpipe.")]
    return found


def test_imports_run_one_way_between_packages():
    """core <- extract <- segment <- faces <- train <- score <- jobs: no package imports one above it,
    even inside a function, so none of them can be in a cycle (issue 37)."""
    root = Path(__file__).resolve().parents[1]
    against = []
    for path in sorted((root / "dfpipe").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        mine = layer_of(module)
        for line, target in dfpipe_imports(path, module):
            theirs = layer_of(target)
            if theirs > mine:
                where = f"{path.relative_to(root)}:{line} ({LAYERS[mine][0]})"
                against.append(f"{where} imports {target} ({LAYERS[theirs][0]})")
    assert against == []


def test_stored_data_is_named_by_folders_outside_storage():
    """Outside storage.py a function names stored data by a ``storage.Folder`` (a URI and the options
    that reach it, as one), never by a URI and options apart, nor by ``Folder | str`` (issue 37)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    apart, either = [], []
    for path in sorted((root / "dfpipe").rglob("*.py")):
        if path.name == "storage.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            names = {a.arg for a in args}
            where = f"{path.relative_to(root)}:{node.lineno} {node.name}"
            if names & {"options", "opts", "storage_options"} and any(
                n.endswith("uri") or n in ("root", "path") for n in names
            ):
                apart.append(where)
            for a in args:
                ann = ast.unparse(a.annotation) if a.annotation else ""
                if "Folder" in ann and "str" in ann:
                    either.append(f"{where}({a.arg}: {ann})")
    assert apart == [] and either == []
