"""Segmentation throughput on a generated frame table (default 10 million rows).

    python bench/segment_throughput.py [--rows 10000000] [--frames-per-video 500] [--json]

Writes an extraction-shaped output (one face shard per video, a manifest) with realistic flags:
one or two tracks per video, bursts of missing faces, a few low-probability frames. Then measures,
in one run: the windowing core in-process (``segment_video`` over every video), and the segment
job through Ray Data (local Ray, all CPUs). Prints rows/s for each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dfpipe import records as R  # noqa: E402
from dfpipe import storage  # noqa: E402


def video_faces(rng: np.random.Generator, video_id: str, n_frames: int) -> pa.Table:
    tracks = 1 if rng.random() < 0.8 else 2
    frame, track, flag = [], [], []
    for t in range(tracks):
        present = np.ones(n_frames, dtype=bool)
        for _ in range(rng.poisson(2)):  # bursts of frames without this face
            s = rng.integers(0, n_frames)
            present[s : s + rng.integers(1, 20)] = False
        f = np.nonzero(present)[0]
        fl = np.where(
            rng.random(len(f)) < 0.02, R.FLAG_LOW_PROB, R.FLAG_MULTI_FACE if tracks > 1 else R.FLAG_OK
        )
        frame.append(f)
        track.append(np.full(len(f), t))
        flag.append(fl)
    missing = np.setdiff1d(np.arange(n_frames), np.concatenate(frame))
    frame.append(missing)
    track.append(np.full(len(missing), -1))
    flag.append(np.full(len(missing), R.FLAG_NO_FACE))
    frame, track, flag = np.concatenate(frame), np.concatenate(track), np.concatenate(flag)
    n = len(frame)
    tracked = track >= 0
    side = np.where(track == 0, 160.0, 60.0)  # a main face and, where there is one, a smaller second
    prob = np.where(flag == R.FLAG_LOW_PROB, 0.8, 0.99)
    cols = {name: pa.nulls(n, R.FACES_SCHEMA.field(name).type) for name in R.FACES_SCHEMA.names}
    cols.update(
        prob=pa.array(prob.astype(np.float32), mask=~tracked),
        box_x1=pa.array(np.full(n, 100.0, np.float32), mask=~tracked),
        box_y1=pa.array(np.full(n, 80.0, np.float32), mask=~tracked),
        box_x2=pa.array((100.0 + side).astype(np.float32), mask=~tracked),
        box_y2=pa.array((80.0 + side).astype(np.float32), mask=~tracked),
        video_id=pa.array([video_id] * n),
        part=pa.array(["bench"] * n),
        label=pa.array(np.zeros(n, np.int8)),
        frame_idx=pa.array(frame.astype(np.int32)),
        track_id=pa.array(track.astype(np.int32), mask=track < 0),
        flag=pa.array(flag.astype(str)),
    )
    return pa.table(cols, schema=R.FACES_SCHEMA)


def generate(root: str, rows: int, per_video: int, seed: int = 0) -> tuple[int, int]:
    marker = os.path.join(root, "videos", "part-0.parquet")
    if os.path.exists(marker):
        m = pq.read_table(marker, columns=["faces_uri"])  # reuse: count the face rows as generated
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in m.column("faces_uri").to_pylist())
        return m.num_rows, rows
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "faces"), exist_ok=True)
    manifest, total, i = [], 0, 0
    while total < rows:
        vid = f"v{i:07d}"
        t = video_faces(rng, vid, per_video)
        path = os.path.join(root, "faces", vid + ".parquet")
        pq.write_table(t, path)
        total += t.num_rows
        manifest.append(
            dict(
                video_id=vid,
                uri=vid,
                filename=vid,
                part="bench",
                label=0,
                status="ok",
                n_frames=per_video,
                frame_stride=1,
                faces_uri=path,
            )
        )
        i += 1
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(manifest, schema=R.VIDEOS_SCHEMA), marker)
    return i, total


def core(root: str) -> tuple[int, float]:
    from dfpipe.segment.stage import FACE_COLUMNS
    from dfpipe.segment.windows import TrackRule, WindowSpec, segment_video

    files = sorted(os.listdir(os.path.join(root, "faces")))
    start, rows = time.perf_counter(), 0
    for f in files:
        t = pq.read_table(os.path.join(root, "faces", f), columns=FACE_COLUMNS)
        segment_video(t, (R.FLAG_OK, R.FLAG_MULTI_FACE), WindowSpec(), 1, TrackRule())
        rows += t.num_rows
    return rows, time.perf_counter() - start


def job(root: str, out: str, cpus: int, rows: int) -> tuple[int, float]:
    import ray

    from dfpipe.cli import parse_args
    from dfpipe.jobs import segment

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        cfg = parse_args(
            segment.SegmentConfig, ["--input", root, "--output", out, "--overwrite", "videos_per_task=200"]
        )
        start = time.perf_counter()
        stats = segment.run(cfg)
        assert stats["videos"] == stats["run"]["videos_processed"]
        return rows, time.perf_counter() - start
    finally:
        ray.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--frames-per-video", type=int, default=500)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-bench-segment"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = os.path.join(args.workdir, f"extract-{args.rows}-{args.frames_per_video}")
    t0 = time.perf_counter()
    videos, rows = generate(root, args.rows, args.frames_per_video)
    gen_s = time.perf_counter() - t0
    cpus = os.cpu_count() or 1
    results = {
        "core (1 process)": core(root),
        f"job (Ray, {cpus} CPUs)": job(root, os.path.join(args.workdir, "out"), cpus, rows),
    }
    table = {
        k: {"rows": n, "seconds": round(s, 2), "rows_per_s": round(n / s)} for k, (n, s) in results.items()
    }
    if args.json:
        print(
            json.dumps(
                {"videos": videos, "rows": rows, "generate_s": round(gen_s, 1), "results": table}, indent=2
            )
        )
    else:
        print(f"\n{videos} videos, {rows} frame rows (generated in {gen_s:.0f} s)")
        for k, r in table.items():
            print(f"{k:<22} {r['rows']:>10} rows {r['seconds']:>8} s {r['rows_per_s']:>10} rows/s")
    storage.delete(os.path.join(args.workdir, "out"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
