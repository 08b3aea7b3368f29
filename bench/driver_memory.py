"""Driver memory of segment + embedding cache + score, for N and 4N videos.

    python bench/driver_memory.py [--videos 60] [--frames 48] [--json]

Fabricates an extraction output (no decoding: one face shard per video whose crops are small JPEGs
made here, a manifest and config.json) and random-init models (an 80-px embedder and an LSTM over
4-frame windows) with a recipe that matches it. Then, for N and 4N videos, each in a fresh process:
the score job through the real code (segmentation, the embedding cache, classification, writing)
on a local Ray with 2 CPUs, and reports

  driver peak   the peak resident memory of the driver process alone (VmHWM: getrusage's ru_maxrss
                survives exec, and reported the parent's size, about 900 MiB, as every child's peak)
  driver idle   its resident memory after imports and ray.init, before the job: the fixed cost
  tree peak     the largest proportional set size (PSS: shared pages split between sharers) summed
                over the driver and every process below it (Ray's GCS, raylet, workers, object
                store), sampled every 0.2 s

and the ratios 4N / N of the driver peak and of its growth over idle. Target: driver 4N <= 1.2x N.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _memory import PeakMemory, peak_rss_kib, rss_kib  # noqa: E402

from dfpipe.storage import Folder  # noqa: E402

WINDOW = {"window_len": 4, "window_stride": 2}
FACE_SIZE = 80


def _jpegs(n: int, size: int) -> list[bytes]:
    """A few distinct face-sized JPEGs (the astronaut's face, shifted), reused across frames."""
    import numpy as np
    from PIL import Image
    from skimage import data

    face = data.astronaut()[20:220, 140:340]
    out = []
    for k in range(n):
        crop = np.roll(face, 3 * k, axis=1)
        buf = io.BytesIO()
        Image.fromarray(crop).resize((size, size)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def fabricate(root: str, videos: int, frames: int) -> str:
    """An extraction output under ``root`` with ``videos`` videos of ``frames`` frames, one face each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dfpipe import config as C
    from dfpipe import records as R
    from dfpipe import storage
    from dfpipe.jobs import extract as extract_job

    out = os.path.join(root, f"faces-{videos}x{frames}")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    cfg = C.build(extract_job.ExtractConfig, {"input": root, "output": out, "face_size": FACE_SIZE})
    config_hash = C.config_hash(cfg, extract_job.OUTPUT_FIELDS)
    jpegs = _jpegs(8, FACE_SIZE)
    os.makedirs(os.path.join(out, "faces"))
    os.makedirs(os.path.join(out, "videos"))
    manifest = []
    for i in range(videos):
        vid = f"v{i:06d}"
        n = frames
        cols = {name: pa.nulls(n, R.FACES_SCHEMA.field(name).type) for name in R.FACES_SCHEMA.names}
        cols.update(
            video_id=pa.array([vid] * n),
            part=pa.array([f"part_{i % 4}"] * n),
            label=pa.array([i % 2] * n, pa.int8()),
            frame_idx=pa.array(range(n), pa.int32()),
            track_id=pa.array([0] * n, pa.int32()),
            flag=pa.array([R.FLAG_OK] * n),
            prob=pa.array([0.999] * n, pa.float32()),
            box_x1=pa.array([100.0] * n, pa.float32()),
            box_y1=pa.array([80.0] * n, pa.float32()),
            box_x2=pa.array([260.0] * n, pa.float32()),
            box_y2=pa.array([240.0] * n, pa.float32()),
            detected=pa.array([True] * n),
            face_jpeg=pa.array([jpegs[(i + f) % len(jpegs)] for f in range(n)], pa.binary()),
        )
        path = os.path.join(out, "faces", vid + ".parquet")
        pq.write_table(pa.table(cols, schema=R.FACES_SCHEMA), path)
        manifest.append(
            {
                "video_id": vid,
                "uri": f"{vid}.mp4",
                "filename": f"{vid}.mp4",
                "part": f"part_{i % 4}",
                "label": i % 2,
                "status": R.STATUS_OK,
                "n_frames": n,
                "frame_stride": 1,
                "n_tracks": 1,
                "n_one_frame_tracks": 0,
                "n_detected": n,
                "n_ok": n,
                **{f"n_{f}": 0 for f in R.FRAME_FLAGS if f != R.FLAG_OK},
                "faces_uri": path,
                "config_hash": config_hash,
            }
        )
    pq.write_table(
        pa.Table.from_pylist(manifest, schema=R.VIDEOS_SCHEMA), os.path.join(out, "videos", "part-0.parquet")
    )
    storage.write_json(
        os.path.join(out, "config.json"),
        {"job": "extract", "config": C.to_dict(cfg), "config_hash": config_hash},
    )
    return out


def models(root: str, extract: dict | None = None) -> str:
    """A classifier directory (with its embedder) of random-init weights and a matching recipe:
    extraction's defaults at ``face_size=FACE_SIZE``, and the options of ``extract``."""
    import torch

    from dfpipe import config as C
    from dfpipe.jobs import extract as extract_job
    from dfpipe.jobs import recipe
    from dfpipe.jobs import segment as segment_job
    from dfpipe.train import modelio

    extract = extract or {}
    out = os.path.join(root, "model" + "".join(f"-{k}{v}" for k, v in sorted(extract.items())))
    if os.path.exists(os.path.join(out, "model.json")):
        return out
    torch.manual_seed(0)
    embedder = {"architecture": "face_embedder", "code_dim": 128, "face_size": FACE_SIZE}
    modelio.save_model(Folder(os.path.join(out, "embedder")), modelio.build(embedder).state_dict(), embedder)
    ext = C.to_dict(
        C.build(extract_job.ExtractConfig, {"input": "a", "output": "b", "face_size": FACE_SIZE, **extract})
    )
    seg = C.to_dict(C.build(segment_job.SegmentConfig, {"input": "a", "output": "b", **WINDOW}))
    classifier = {
        "architecture": "window_classifier",
        "code_dim": 128,
        "n_frames": WINDOW["window_len"],
        "hidden_size": 32,
        "num_layers": 1,
        "bidirectional": True,
        "dropout": 0.0,
        "face_size": FACE_SIZE,
        "window_len": WINDOW["window_len"],
        "frame_stride": 1,
        "prior_fake": 0.5,
        "aggregation": "max_track_mean",
        "temperature": 1.0,
        "calibrated_prior": 0.5,
        "recipe": recipe.build(ext, seg),
        "segment": {"uri": None, "split": {k: seg[k] for k in recipe.SPLIT_OPTIONS}},
    }
    modelio.save_model(Folder(out), modelio.build(classifier).state_dict(), classifier)
    return out


def child(data: str, model: str, out: str) -> dict:
    """One score run in this process; memory figures in MiB."""
    import ray

    from dfpipe.cli import parse_args
    from dfpipe.jobs import score

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    idle = rss_kib(os.getpid())
    tree = PeakMemory(os.getpid())
    tree.start()
    started = time.perf_counter()
    try:
        cfg = parse_args(
            score.ScoreConfig, ["--input", data, "--model", model, "--output", out, "evaluate=false"]
        )
        stats = score.run(cfg)
    finally:
        tree.stop()
        ray.shutdown()
    return {
        "videos": stats["videos"],
        "seconds": round(time.perf_counter() - started, 1),
        "driver_idle_mib": round(idle / 1024, 1),
        "driver_peak_mib": round(peak_rss_kib() / 1024, 1),
        "tree_peak_mib": round(tree.peak / 1024**2, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=60, help="N; the second run has 4N")
    p.add_argument("--frames", type=int, default=48, help="frames (one face each) per video")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-bench-driver"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=3, metavar=("DATA", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    model = models(args.workdir)
    results = {}
    for n in (args.videos, 4 * args.videos):
        data = fabricate(args.workdir, n, args.frames)
        out = tempfile.mkdtemp(prefix=f"score-{n}-", dir=args.workdir)
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", data, model, out],
            capture_output=True,
            text=True,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            return 1
        results[n] = json.loads(lines[-1][len("RESULT ") :])
    small, large = results[args.videos], results[4 * args.videos]
    growth = lambda r: r["driver_peak_mib"] - r["driver_idle_mib"]  # noqa: E731
    summary = {
        "runs": {str(k): v for k, v in results.items()},
        "driver_peak_ratio_4n_n": round(large["driver_peak_mib"] / small["driver_peak_mib"], 3),
        "driver_growth_ratio_4n_n": round(growth(large) / max(growth(small), 1e-9), 3),
        "tree_peak_ratio_4n_n": round(large["tree_peak_mib"] / small["tree_peak_mib"], 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{'videos':>7} {'windows~':>9} {'driver idle':>12} {'driver peak':>12} {'tree peak':>10} {'seconds':>8}"
    )
    for n, r in results.items():
        windows = n * ((args.frames - WINDOW["window_len"]) // WINDOW["window_stride"] + 1)
        print(
            f"{n:>7} {windows:>9} {r['driver_idle_mib']:>10.1f}Mi {r['driver_peak_mib']:>10.1f}Mi "
            f"{r['tree_peak_mib']:>8.1f}Mi {r['seconds']:>8.1f}"
        )
    print(
        f"driver peak 4N/N: {summary['driver_peak_ratio_4n_n']}x (target <= 1.2x); growth over idle 4N/N: "
        f"{summary['driver_growth_ratio_4n_n']}x; tree peak 4N/N: {summary['tree_peak_ratio_4n_n']}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
