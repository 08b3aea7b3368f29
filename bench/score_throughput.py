"""Scoring throughput on this machine: the bulk score job and score-video, with the time of each step.

    python bench/score_throughput.py [--model out/demo/run/models/classifier] [--videos 16] [--frames 40] [--json]

Needs a trained classifier directory (``make demo`` leaves one at the default path). Generates a
labelled sample dataset, then in one run measures:
  score job     extraction, segmentation, embedding, classification and writing of every video
                (local Ray, all CPUs), videos/s and the share of each step
  score-video   one clip in this process with one ``Scorer``: the cold call (loading MTCNN and both
                models, then scoring) on its own, then ``--repeat`` warm calls with the models loaded
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_MODEL = "out/demo/run/models/classifier"


def dataset(workdir: str, videos: int, frames: int, size: str) -> str:
    from dfpipe.sampledata.generate import SampleConfig, generate

    width, height = (int(v) for v in size.split("x"))
    out = os.path.join(workdir, f"score-data-{videos}-{frames}-{size}")
    if not os.path.isdir(out):
        tmp = out + ".part"
        shutil.rmtree(tmp, ignore_errors=True)
        generate(
            tmp,
            SampleConfig(
                videos=videos, seed=3, width=width, height=height, frames=frames, parts=1, specials=False
            ),
        )
        os.replace(tmp, out)
    return out


def score_job(data: str, model: str, out: str, cpus: int, frames: int) -> dict:
    import ray

    from dfpipe.cli import parse_args
    from dfpipe.jobs import score

    shutil.rmtree(out, ignore_errors=True)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        cfg = parse_args(
            score.ScoreConfig,
            [
                "--input",
                data,
                "--model",
                model,
                "--output",
                out,
                f"extract.max_frames={frames}",
                "evaluate=false",
            ],
        )
        start = time.perf_counter()
        stats = score.run(cfg)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"videos": stats["scored_this_run"], "seconds": seconds, "steps": stats["step_seconds"]}


def score_video(clip: str, model: str, repeat: int, frames: int) -> tuple[dict, dict]:
    """A cold call (loading MTCNN and both models, then scoring) and ``repeat`` warm calls of one
    :class:`~dfpipe.jobs.score_video.Scorer`, as a service scoring file after file would make them."""
    from dfpipe.jobs.score_video import Scorer

    start = time.perf_counter()
    with Scorer(model, extract={"max_frames": frames}) as scorer:
        first = scorer.score(clip)
        cold = {
            "videos": 1,
            "seconds": time.perf_counter() - start,
            "steps": {"load": scorer.load_seconds, **first["seconds"]},
        }
        steps: dict[str, float] = {}
        start = time.perf_counter()
        for _ in range(repeat):
            for k, v in scorer.score(clip)["seconds"].items():
                steps[k] = steps.get(k, 0.0) + v
        warm = {"videos": repeat, "seconds": time.perf_counter() - start, "steps": steps}
    return cold, warm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a classifier directory (train_classifier output)")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=40, help="frames per clip (and the frame cap)")
    p.add_argument("--size", default="320x240")
    p.add_argument("--repeat", type=int, default=3, help="score-video calls after the first")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-bench"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "model.json")):
        p.error(f"no classifier at {args.model}: run `make demo` first (it trains one) or pass --model DIR")
    cpus = len(os.sched_getaffinity(0))
    data = dataset(args.workdir, args.videos, args.frames, args.size)
    clip = sorted(
        os.path.join(root, f) for root, _, files in os.walk(data) for f in files if f.endswith(".mp4")
    )[0]
    runs = {
        "score job": score_job(data, args.model, os.path.join(args.workdir, "score-out"), cpus, args.frames)
    }
    runs["score-video cold"], runs["score-video warm"] = score_video(
        clip, args.model, args.repeat, args.frames
    )
    for r in runs.values():
        r["videos_per_s"] = r["videos"] / r["seconds"]
        r["share"] = {k: v / r["seconds"] for k, v in r["steps"].items()}
    meta = {
        "videos": args.videos,
        "frames": args.frames,
        "size": args.size,
        "cpus": cpus,
        "model": args.model,
    }
    if args.json:
        print(json.dumps({"meta": meta, "runs": runs}, indent=2))
        return 0
    print(f"\n{args.videos} clips of {args.frames} frames at {args.size}, {cpus} CPUs, model {args.model}")
    print(f"{'run':<18} {'videos':>6} {'seconds':>8} {'videos/s':>9}  share of time per step")
    for name, r in runs.items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        print(f"{name:<18} {r['videos']:>6} {r['seconds']:>8.2f} {r['videos_per_s']:>9.3f}  {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
