"""Tier 2: the extraction job end to end on a session-wide local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from faults import assert_check_names_a_broken_copy

from dfpipe import records as R
from dfpipe import storage
from dfpipe.cli import main
from dfpipe.extract.catalog import build_catalog
from dfpipe.invariants import check_output
from dfpipe.outputs import read_manifest
from dfpipe.storage import Folder

ROOT = Path(__file__).resolve().parents[1]
FAST = ["face_size=64", "detect_batch=8"]
QUICK = ["max_frames=10"]  # reruns and partial outputs: what is redone matters, not how many frames


def extract(input_uri: str, output_uri: str, *extra: str) -> int:
    return main(["extract", "--input", input_uri, "--output", output_uri, *FAST, *extra])


def faces_table(output: str):
    return storage.read_parquet_dir(storage.join(output, "faces"), schema=R.FACES_SCHEMA)


def check_output_complete(dataset: str, output: str) -> dict:
    """``dfpipe check`` finds nothing wrong (catalog = manifest, shards agree, stats agree); the tables."""
    report = check_output(Folder(output))
    assert report.ok and report.checked, report.format()
    manifest = read_manifest(Folder(output)).to_pandas()
    assert len(manifest) == build_catalog(Folder(dataset)).num_rows
    faces = faces_table(output).drop_columns(["face_jpeg"]).to_pandas()
    stats = json.loads(Path(output, "stats.json").read_text())
    return {"manifest": manifest, "faces": faces, "stats": stats}


@pytest.fixture(scope="module")
def sample_extracted(ray_session, sample_dataset, tmp_path_factory) -> str:
    """The sample through the job with this module's options: checked end to end, then rerun in place
    (a rerun and an --overwrite must leave it as it is)."""
    out = str(tmp_path_factory.mktemp("extract-job") / "out")
    assert extract(str(sample_dataset), out) == 0
    return out


def test_extract_sample_end_to_end(sample_extracted, sample_dataset):
    out = sample_extracted
    res = check_output_complete(str(sample_dataset), out)
    m = res["manifest"].set_index("filename")
    assert (m.status == "ok").all()
    faces = res["faces"]
    from conftest import SMALL

    from dfpipe.sampledata.generate import SampleConfig, plan

    kinds = {f"{c.video_id}.mp4": c for c in plan(SampleConfig(**SMALL))}
    for filename, clip in kinds.items():
        row = m.loc[filename]
        assert (row.width, row.height) == (clip.width, clip.height)
        assert row.label == (1 if clip.label == "FAKE" else 0)
        vf = faces[faces.video_id == clip.video_id]
        if clip.kind == "no_face":
            assert row.n_no_face == row.n_frames and row.n_tracks == 0
        elif clip.kind == "two_faces":
            assert row.n_tracks == 2 and row.n_multi_face >= row.n_frames
            assert set(vf.track_id.dropna()) == {0, 1}
        else:
            assert row.n_ok >= 0.8 * row.n_frames, f"{clip.kind} {filename}: face found in most frames"
            assert vf[vf.flag == "ok"].track_id.nunique() == 1
    run = res["stats"]["run"]
    assert run["frames"] == int(res["manifest"].n_frames.sum())
    # Start-up and the first video said apart from the rate after them.
    assert 0 < run["first_video_s"] < run["seconds"] and run["steady_frames_per_s"] > 0
    assert Path(out, "config.json").exists()


def test_extract_bad_inputs_are_recorded_not_fatal(ray_session, messy_dataset, tmp_path):
    root, expected = messy_dataset
    out = str(tmp_path / "out")
    assert extract(str(root), out) == 0
    res = check_output_complete(str(root), out)
    m = res["manifest"].set_index("video_id")
    for vid, reason in expected.items():
        assert m.loc[vid, "status"] == "failed", vid
        assert R.reason_of(m.loc[vid, "error"]) == reason, (vid, m.loc[vid, "error"])
    # The truncated clip decodes what it can; the videos next to the broken metadata still count.
    assert m.loc["truncated", "status"] in ("ok", "failed")
    assert (
        m.loc["unlabelled", "status"] == "ok" and m.loc["unlabelled", "label"] != m.loc["unlabelled", "label"]
    )
    good = m[~m.part.isin(["dfdc_train_part_8", "dfdc_train_part_9"])]
    assert (good.status == "ok").all() and (good.n_frames > 0).all()


def test_rerun_is_noop_and_overwrite_identical(sample_extracted, sample_dataset, capsys):
    out = sample_extracted
    first_manifest = read_manifest(Folder(out)).drop_columns(["elapsed_s"]).sort_by("video_id")
    first_faces = faces_table(out).sort_by(
        [("video_id", "ascending"), ("frame_idx", "ascending"), ("track_id", "ascending")]
    )
    files = sorted(p.name for p in Path(out, "videos").iterdir())

    assert extract(str(sample_dataset), out) == 0
    stats = json.loads(Path(out, "stats.json").read_text())
    assert stats["run"]["videos_processed"] == 0
    assert sorted(p.name for p in Path(out, "videos").iterdir()) == files

    # Other row-changing options on the same output are refused, naming them (one rule for every step).
    capsys.readouterr()
    assert extract(str(sample_dataset), out, "face_size=72") == 2
    err = capsys.readouterr().err
    assert "face_size 64 -> 72" in err and "--overwrite" in err, err
    assert sorted(p.name for p in Path(out, "videos").iterdir()) == files

    assert extract(str(sample_dataset), out, "--overwrite") == 0
    again = read_manifest(Folder(out)).drop_columns(["elapsed_s"]).sort_by("video_id")
    assert again.equals(first_manifest)
    again_faces = faces_table(out).sort_by(
        [("video_id", "ascending"), ("frame_idx", "ascending"), ("track_id", "ascending")]
    )
    assert again_faces.drop_columns(["face_jpeg"]).equals(first_faces.drop_columns(["face_jpeg"]))
    assert again_faces.column("face_jpeg").equals(first_faces.column("face_jpeg"))


def test_rerun_after_partial_output_completes_without_duplicates(ray_session, sample_dataset, tmp_path):
    """Simulates a driver killed mid-run: some manifest files and face shards are gone."""
    out = tmp_path / "out"
    assert extract(str(sample_dataset), str(out), *QUICK, "manifest_flush_rows=2") == 0
    files = sorted((out / "videos").iterdir())
    assert len(files) >= 2
    import pyarrow.parquet as pq

    lost_ids = set(pq.read_table(files[0]).column("video_id").to_pylist())
    files[0].unlink()
    for vid in lost_ids:
        (out / "faces" / f"{vid}.parquet").unlink(missing_ok=True)
    assert extract(str(sample_dataset), str(out), *QUICK) == 0
    res = check_output_complete(str(sample_dataset), str(out))
    assert res["stats"]["run"]["videos_processed"] == len(lost_ids)


def test_wrong_arguments_exit_2_with_a_message(capsys, tmp_path):
    assert main(["extract", "--input", str(tmp_path)]) == 2
    assert "missing required option(s): output" in capsys.readouterr().err
    assert main(["extract", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["nosuchjob"]) == 2
    assert main(["extract", "--help"]) == 0
    assert "frame_stride" in capsys.readouterr().out
    # Either spelling of a job's name works: score-video / score_video, train_embedder / train-embedder.
    for spelling, usage in (
        ("score_video", "dfpipe score-video VIDEO"),
        ("score-video", "dfpipe score-video VIDEO"),
        ("train-embedder", "dfpipe train_embedder --input"),
    ):
        assert main([spelling, "--help"]) == 0
        assert usage in capsys.readouterr().out


def test_job_script_runs_as_a_subprocess(tmp_path):
    """`python jobs/extract.py --help` works from a checkout, as `ray job submit` runs it."""
    proc = subprocess.run(
        [sys.executable, "jobs/extract.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--input" in proc.stdout


def test_extract_shared_dfdc(ray_session, shared_dfdc, tmp_path):
    out = str(tmp_path / "out")
    assert extract(str(shared_dfdc), out, "max_frames=30") == 0
    res = check_output_complete(str(shared_dfdc), out)
    m = res["manifest"]
    meta_entries = sum(len(json.loads(p.read_text())) for p in shared_dfdc.glob("*/metadata.json"))
    assert len(m) >= meta_entries
    present = {p.stem for p in shared_dfdc.glob("*/*.mp4")}
    missing = m[~m.video_id.isin(present)]
    assert (missing.error.map(R.reason_of) == R.REASON_MISSING_FILE).all() and len(missing) > 0
    real = m[m.video_id.isin(present)]
    assert (real.status == "ok").all() and (real.n_frames == 30).all()
    assert (real.n_ok > 0).all(), "real DFDC clips have faces"


def test_summary_warns_when_tracks_are_mostly_one_frame_long():
    import pandas as pd

    from dfpipe.jobs.extract import format_summary
    from dfpipe.outputs import fragmented

    n_tracks = pd.Series([1, 3, 10, 10])
    one_frame = pd.Series([1, 2, 4, None])
    assert fragmented(n_tracks, one_frame).tolist() == [False, True, False, False]
    stats = {
        "videos": {"manifest": 4, "ok": 4, "failed": 0, "catalog": 4, "failed_by_reason": {}},
        "frames": dict.fromkeys(("decoded", *R.FRAME_FLAGS), 0),
        "fragmented_tracks": {"videos": 1, "examples": ["v1"]},
    }
    assert "mostly one frame long (e.g. v1)" in format_summary(stats)


def test_videos_in_flight_give_the_same_rows_through_ray(
    ray_session, sample_dataset, extracted_sample, tmp_path
):
    """Actors holding several videos at once (as GPU actors do), their detections batched together:
    every face row as one video at a time gives."""
    import pyarrow.parquet as pq

    out = tmp_path / "extract"
    args = ["extract", "--input", str(sample_dataset), "--output", str(out), "face_size=64", "frame_stride=2"]
    assert main([*args, "videos_in_flight=3"]) == 0
    cols = ["video_id", "frame_idx", "track_id", "flag", "detected", "box_x1", "box_y1", "box_x2", "box_y2"]

    def rows(root):
        t = pq.read_table(str(root / "faces"), columns=cols).to_pandas()
        return t.sort_values(["video_id", "frame_idx", "box_x1"]).reset_index(drop=True).round(2)

    ours, alone = rows(out), rows(extracted_sample)
    assert len(ours) == len(alone) and ours.video_id.nunique() >= 8
    assert ours.equals(alone)


def test_check_catches_duplicates_lost_shards_leftovers_and_wrong_stats(extracted_sample, tmp_path):
    """`dfpipe check` on the session's extraction finds nothing; on a copy with every row of a manifest
    chunk twice, an ok video's face shard gone, a half-written file and a wrong count, it names each."""
    report = check_output(Folder(str(extracted_sample)))
    assert report.ok and report.checked, report.format()
    manifest = read_manifest(Folder(str(extracted_sample))).to_pandas()
    ok = manifest[(manifest.status == "ok") & (manifest.n_tracks > 0)].video_id.iloc[0]
    assert_check_names_a_broken_copy(extracted_sample, tmp_path, ok)


def test_check_verifies_landmarks_and_accepts_shards_from_before_them(extracted_sample, tmp_path):
    """A face row without landmarks, or with landmarks far from its box, is named; a shard written
    before landmarks were kept (no column) is not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dfpipe.invariants import _shard_problem

    manifest = read_manifest(Folder(str(extracted_sample))).to_pylist()
    row = next(r for r in manifest if r["status"] == "ok" and r["n_ok"] > 0)
    faces = pq.read_table(row["faces_uri"])
    assert _shard_problem(pq.ParquetFile(row["faces_uri"]), row) is None
    kind = faces.schema.field("landmarks").type
    index = faces.schema.get_field_index("landmarks")
    first = next(i for i, m in enumerate(faces.column("landmarks").to_pylist()) if m is not None)

    def problem(marks) -> str | None:
        path = tmp_path / "shard.parquet"
        table = (
            faces.drop_columns(["landmarks"])
            if marks is None
            else faces.set_column(index, "landmarks", pa.array(marks, kind))
        )
        pq.write_table(table, path)
        return _shard_problem(pq.ParquetFile(str(path)), row)

    lost = faces.column("landmarks").to_pylist()
    lost[first] = None
    assert "landmarks missing" in problem(lost)
    far = faces.column("landmarks").to_pylist()
    far[first] = [5.0] * 10
    assert "far outside their box" in problem(far)
    assert problem(None) is None  # written before landmarks were kept


def test_extraction_driver_memory_does_not_grow_with_the_videos(tmp_path):
    """The extract job's driver, in a fresh process each, at N and 4N videos (bench/scale.py's
    child: tiny hard-linked clips, the real job, the driver's peak RSS from VmHWM), given Ray a
    window of N blocks at a time, so that 4N videos are four windows.

    Measured here (KiB a video from N = 100 to 4N): one dataset of a block per video and every
    streamed manifest table held until a flush of 500 rows (a82edd3) 78; windows alone 56; windows
    and the writer's pending tables joined every 32 (now) 20-32, mostly what a first few hundred
    videos cost (pools and arenas warming up): from 1k to 16k videos bench/scale.py measures 3 KiB
    a video (bench/README.md, "Scale")."""
    sys.path.insert(0, str(ROOT / "bench"))
    import scale

    n = 100
    sources = scale.clips(str(tmp_path), frames=2)
    peaks = {}
    for size in (n, 4 * n):
        data, out = tmp_path / f"data-{size}", tmp_path / f"out-{size}"
        scale.add_videos(str(data), sources, 0, size)
        args = {"job": "extract", "argv": ["--input", str(data), "--output", str(out)], "window_blocks": n}
        peaks[size] = scale.run_child("extract", args)["driver_peak_mib"]
        assert len(read_manifest(Folder(str(out)))) == size
    growth_kib = 1024 * (peaks[4 * n] - peaks[n]) / (3 * n)
    assert growth_kib < 45, f"the driver grew by {growth_kib:.1f} KiB a video: {peaks}"
