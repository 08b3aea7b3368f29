"""Tier 2: tiny runs of the benchmarks, so they cannot rot (their full runs are not tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, *args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def test_extract_bench_tiny(tmp_path, bench):
    report = run_bench(
        str(bench / "extract_throughput.py"),
        *("--videos", "1", "--frames", "6", "--size", "320x240", "--baseline-frames", "2"),
        *("--seed-frames", "1", "--workdir", str(tmp_path)),
    )
    rates = report["rates"]
    assert {"decode", "seed", "facenet", "dfdc", "stage", "job 2cpu N", "job 2cpu 4N", "job 1cpu 4N"} <= set(
        rates
    )
    # The DFDC baseline on the frames dfpipe gets, facenet-pytorch on the first 2 (--baseline-frames).
    assert rates["dfdc"]["frames"] == rates["stage"]["frames"] == 6 and rates["facenet"]["frames"] == 2
    assert {"stage before"} <= set(rates) and rates["stage"]["scanned"] <= rates["stage"]["detected"]
    assert rates["job 2cpu N"]["first_video_s"] > 0
    assert rates["stage"]["x_dfdc"] == rates["stage"]["frames_per_s"] / rates["dfdc"]["frames_per_s"]
    assert rates["stage"]["frames"] == 6 and rates["job 2cpu 4N"]["frames"] == 24
    assert report["agreement"]["stage"]["frames_with_face"] == 6
    assert set(report["targets"]) >= {
        "stage_x_decode",
        "stage_x_dfdc",
        "iou_share",
        "rss_4n_x_n",
        "cpus_2_x_1",
    }
    assert all(v > 0 for v in report["peak_mib"].values())


def test_score_bench_tiny(classifier_model, tmp_path, bench):
    # 20 frames: the model's recipe keeps every second frame and needs 8 for a window.
    report = run_bench(
        str(bench / "score_throughput.py"),
        *("--model", str(classifier_model), "--videos", "2", "--frames", "20", "--repeat", "1"),
        *("--workdir", str(tmp_path)),
    )
    runs = report["runs"]
    assert runs["score job"]["videos"] == 2 and runs["score-video warm"]["videos"] == 1
    assert {"extract", "segment", "embed", "classify"} <= set(runs["score job"]["steps"])
    assert {"extract", "embed", "classify"} <= set(runs["score-video warm"]["steps"])
    # Loading is paid once, by the cold call, never by a warm one.
    assert "load" in runs["score-video cold"]["steps"] and "load" not in runs["score-video warm"]["steps"]


def test_segment_bench_tiny_and_its_rerun(tmp_path, bench):
    args = (
        str(bench / "segment_throughput.py"),
        "--rows",
        "3000",
        "--frames-per-video",
        "100",
        "--workdir",
        str(tmp_path),
    )
    first = run_bench(*args)
    assert first["rows"] >= 3000 and first["videos"] >= 20
    assert set(first["results"]) == {"core (1 process)", f"job (Ray, {os.cpu_count()} CPUs)"}
    again = run_bench(*args)  # reuses the generated shards (this path crashed once)
    assert again["rows"] == first["rows"] and again["videos"] == first["videos"]


def test_gpu_check_runs_on_cpu_with_tiny_sizes(tmp_path, bench):
    """The one-call GPU check (bench/gpu_check.sh) works end to end here; CUDA rows are skipped."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(bench / "gpu_check.sh"), "--tiny", "--workdir", str(tmp_path / "w"), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["devices"]) == {"cpu"} and "targets" not in report
    cpu = report["devices"]["cpu"]
    ext = cpu["extract_generated"]
    assert ext["frames"] == ext["videos"] * 20 and not ext["failed"]
    assert ext["frames_per_s"] > 0 and ext["decode_floor_per_s"] > 0
    assert cpu["embedder_train"]["faces_per_s"] > 0 and cpu["lstm_train"]["windows_per_s"] > 0
    scoring = cpu["scoring"]
    assert scoring["clip_frames"] == 20 and scoring["bulk_failed"] == 0 and scoring["bulk_videos"] == 2
    assert "extraction, generated clips (frames/s)" in proc.stdout and "score-video" in proc.stdout


def test_sbi_bench_datasets_and_interval(tmp_path, bench):
    """bench/sbi_auc.py's pieces that are not whole pipeline runs: the real-footage folders (links and
    a labels.csv each: REAL clips to train on, the labelled real clips to score) and the bootstrap
    interval of the AUC."""
    import csv

    import numpy as np
    import pytest
    from conftest import SHARED_DATA

    sys.path.insert(0, str(bench))
    from sbi_auc import auc_with_interval, real_footage

    r = auc_with_interval(np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.9]))
    assert r["real"] == r["fake"] == 3 and r["auc"] == pytest.approx(8 / 9)
    assert r["low"] <= r["auc"] <= r["high"] <= 1 and r["low"] < r["high"]
    assert auc_with_interval(np.array([0, 0]), np.array([0.1, 0.2]))["auc"] is None
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (a fresh clone)")
    generated = tmp_path / "generated" / "dfdc_train_part_0"
    generated.mkdir(parents=True)
    (generated / "a.mp4").write_bytes(b"x")
    (generated / "b.mp4").write_bytes(b"x")
    meta = {"a.mp4": {"label": "REAL"}, "b.mp4": {"label": "FAKE", "original": "a.mp4"}}
    (generated / "metadata.json").write_text(json.dumps(meta))
    train, test = real_footage(str(tmp_path / "work"), str(tmp_path / "generated"), str(SHARED_DATA))
    rows = {
        name: list(csv.DictReader(open(Path(folder) / "labels.csv")))
        for name, folder in (("train", train), ("test", test))
    }
    assert {r["label"] for r in rows["train"]} == {"REAL"}
    assert [r["filename"] for r in rows["train"]] == [
        "dfdc_train_part_0/a.mp4",
        "footage/facenet_pytorch_example.mp4",
    ]
    labels = {Path(r["filename"]).name: r["label"] for r in rows["test"]}
    assert labels["634_real.mp4"] == "REAL" and labels["634_660_faceswap_fake.mp4"] == "FAKE"
    assert "awnfpubqmo.mp4" not in labels, "clips the metadata lists but that are absent are left out"
    assert all((Path(test) / r["filename"]).exists() for r in rows["test"])


def test_time_order_bench_on_the_session_model(classifier_model, sample_dataset, tmp_path, bench):
    """The order ablation on the chain's classifier: a run folder of its model and a score output of
    the sample (the chain has no test split: its train split stands in)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(classifier_model, run / "models" / "classifier")
    subprocess.run(
        [sys.executable, "jobs/score.py", "--input", str(sample_dataset), "--model", str(run / "models" / "classifier"),
         "--output", str(run / "score")],
        cwd=ROOT, check=True, capture_output=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    report = run_bench(
        str(bench / "time_order.py"), "--run", str(run), "--split", "train", "--workdir", str(tmp_path)
    )
    cases = report["held_out"]
    assert list(cases) == ["in order", "reversed", "shuffled", "mean, no LSTM"]
    assert len({c["windows"] for c in cases.values()}) == 1 and cases["in order"]["windows"] > 0
    assert all(0 <= c["video_auc"] <= 1 for c in cases.values())


def test_scale_bench_tiny(tmp_path, bench):
    """One size and the steps that bracket the others (each job is a fresh process with a Ray of its
    own, ~25 s here: a second size doubled the test's three minutes, and segment, which score runs
    within, added one more); the ratios between sizes are then 1, and are computed all the same."""
    report = run_bench(
        str(bench / "scale.py"),
        *("--sizes", "8", "--jobs", "extract,score", "--workdir", str(tmp_path)),
    )
    assert report["sizes"] == [8]
    steps = report["steps"]
    assert set(steps) == {"extract", "extract again", "score", "score again"}
    for step in steps.values():
        assert step["driver_peak_ratio"] == 1.0 and set(step["runs"]) == {"8"}
        assert all(run["driver_peak_mib"] >= run["driver_idle_mib"] > 0 for run in step["runs"].values())
    # Each video's face shard, the manifest, config.json and stats.json (8 videos: 1% new is one).
    assert steps["extract"]["runs"]["8"]["files"] == steps["extract again"]["runs"]["8"]["files"] == 7 + 3
    # The steps did the work they are timed for: usable faces, windows, videos scored by the model
    # (the bench's first runs had every face flagged small_face, and timed bookkeeping alone).
    big = steps["extract"]["runs"]["8"]
    assert big["frames_ok"] > 0
    assert steps["score"]["runs"]["8"]["scored"] > 0 and steps["score again"]["runs"]["8"]["scored"] == 0
    # The review page is bounded: its size is reported per N (8 videos: a full row each).
    assert (
        steps["score"]["runs"]["8"]["review_page_kib"] > 0
        and steps["score"]["runs"]["8"]["review_images_kib"] > 0
    )


def test_marker_reads_bench_tiny(bench):
    report = run_bench(str(bench / "marker_reads.py"), "--files", "20")
    assert report["files"] == 20 and set(report["seconds"]) == {"1", "16"}
