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
