"""Extraction speed against the decode floor, side by side in one process.

    python bench/extract.py [--videos 2] [--frames 300] [--size 1920x1080] [--json]

Generates 1080p H.264 clips (30 fps), then measures in the same run:
  decode      OpenCV decode of every frame to RGB (the floor)
  stage       dfpipe's FaceExtractStage in-process, one worker
  job         the extraction job through Ray Data (local Ray, all CPUs)
and prints frames/s and each rate as a ratio of the decode floor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from dfpipe.sample import ClipSpec, write_clip  # noqa: E402


def make_clips(folder: str, n: int, frames: int, width: int, height: int) -> list[str]:
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"bench{i:03d}.mp4")
        if not os.path.exists(path):
            write_clip(
                ClipSpec(f"bench{i:03d}", "REAL", 0, width, height, frames, 30.0, scene_seed=100 + i), path
            )
        paths.append(path)
    return paths


def decode_only(paths: list[str]) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for p in paths:
        cap = cv2.VideoCapture(p, cv2.CAP_FFMPEG)
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
        cap.release()
    return n, time.perf_counter() - start


def stage_in_process(paths: list[str], out: str, threads: int) -> tuple[int, float]:
    import pyarrow as pa

    from dfpipe import records as R
    from dfpipe.extract import FaceExtractStage

    stage = FaceExtractStage(faces_uri=out, torch_threads=threads)
    stage.setup()
    rows = [
        dict(
            video_id=os.path.basename(p)[:-4],
            uri=p,
            filename=os.path.basename(p),
            part="bench",
            label=0,
            original=None,
            error=None,
        )
        for p in paths
    ]
    start = time.perf_counter()
    res = stage(pa.Table.from_pylist(rows, schema=R.CATALOG_SCHEMA))
    return sum(res.column("n_frames").to_pylist()), time.perf_counter() - start


def job(folder: str, out: str, num_cpus: int) -> tuple[int, float]:
    import ray

    from dfpipe.cli import parse_args
    from dfpipe.jobs import extract

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        cfg = parse_args(extract.ExtractConfig, ["--input", folder, "--output", out, "--overwrite"])
        start = time.perf_counter()
        stats = extract.run(cfg)
        return stats["run"]["frames"], time.perf_counter() - start
    finally:
        ray.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-bench"))
    p.add_argument("--skip-job", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    data = os.path.join(args.workdir, f"clips-{args.size}-{args.frames}")
    os.makedirs(data, exist_ok=True)
    paths = make_clips(data, args.videos, args.frames, width, height)
    cpus = os.cpu_count() or 1
    results = {}
    results["decode"] = decode_only(paths)
    results["stage"] = stage_in_process(paths, os.path.join(args.workdir, "stage-out"), threads=cpus)
    if not args.skip_job:
        results["job"] = job(data, os.path.join(args.workdir, "job-out"), cpus)
    floor = results["decode"][0] / results["decode"][1]
    rows = {
        k: {
            "frames": n,
            "seconds": round(s, 2),
            "frames_per_s": round(n / s, 2),
            "x_decode": round(n / s / floor, 3),
        }
        for k, (n, s) in results.items()
    }
    meta = {"videos": args.videos, "frames": args.frames, "size": args.size, "cpus": cpus}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print(f"\n{args.videos} clip(s) of {args.frames} frames at {args.size}, {cpus} CPUs")
        print(f"{'what':<8} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'x decode':>9}")
        for k, r in rows.items():
            print(f"{k:<8} {r['frames']:>7} {r['seconds']:>8} {r['frames_per_s']:>9} {r['x_decode']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
