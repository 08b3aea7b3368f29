"""Every step's cost per video at growing N, side by side: does anything grow with the input?

    python bench/scale.py [--sizes 1000,4000,16000] [--frames 4] [--s3] [--json]

For each N it fabricates a DFDC-layout dataset cheaply: four tiny clips rendered once (two REAL,
two FAKE, the astronaut's face), hard-linked N times into parts of 1,000 videos with their
``metadata.json``. Then it runs every step through the real jobs, each in a fresh process on a
local Ray with 2 CPUs, in this order:

  extract         the extract job (80-px crops, as the models' recipe says)
  extract again   the same job with nothing left to do (catalog, manifest anti-join)
  segment         the segment job over that extraction (4-frame windows, stride 2)
  segment again   nothing left to do
  score           the score job over that extraction with random-init models (segmentation of
                  its own, the embedding cache, classification, writing)
  score again     nothing left to do
  rescore 1%      ``rescore`` of a dump holding every video, after 1% new videos were added to it
                  (the rest scored by an earlier rescore)
  score 1% alone  the score job over a dataset of just those new videos: rescore's baseline

For each step and N: wall time; time per video after start-up (from the step's progress lines:
the time between its first and last update over the videos done in between); the driver's peak
RSS and its RSS before the job (imports and ``ray.init``); the peak PSS of the whole process tree
(driver, Ray's daemons and workers); and the files under the step's output. Then the ratios of the
largest N to the smallest beside the targets of issue 35:

  driver peak at the largest N <= 1.2x at the smallest, every step
  time per video after start-up within 1.2x
  a no-op rerun at 16k <= 10 s
  rescore of 1% new <= 1.5x scoring those videos alone

``--s3`` also runs extract and score with input and output on a moto S3 server (a real HTTP
endpoint) and counts its requests by kind (list, head, get, put) per video; target: constant in N.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _memory import PeakMemory, peak_rss_kib, rss_kib  # noqa: E402
from driver_memory import FACE_SIZE, WINDOW, models  # noqa: E402

PART_SIZE = 1000
CLIP_SIZE = (128, 96)
STEPS = (
    "extract",
    "extract again",
    "segment",
    "segment again",
    "score",
    "score again",
    "rescore 1%",
    "score 1% alone",
)
CONFIGS = {
    "extract": "ExtractConfig",
    "segment": "SegmentConfig",
    "score": "ScoreConfig",
    "rescore": "RescoreConfig",
}
NO_OPS = ("extract again", "segment again", "score again")
# 80-px crops as the models' recipe says; faces of these 128x96 clips are about 30 px, which the
# default min_face_px=40 flags small_face: every frame unusable, no window, nothing embedded or
# classified (the first runs of this bench measured bookkeeping only).
SMALL_FACES = {"min_face_px": 16}  # in the models' recipe too
EXTRACT_OPTIONS = [f"face_size={FACE_SIZE}", *(f"{k}={v}" for k, v in SMALL_FACES.items())]


WORK = ("frames_ok", "windows", "scored", "review_page_kib", "review_images_kib")


def work_done(out: str) -> dict:
    """What a step's output says it did (its stats.json): usable frames, windows, videos scored."""
    path = os.path.join(out, "stats.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        stats = json.load(fh)
    if "frames" in stats:  # extraction
        return {"frames_ok": stats["frames"]["ok"]}
    if "windows" in stats:  # segmentation
        return {"windows": stats["windows"]}
    done = {"scored": stats.get("scored_this_run")}
    page = os.path.join(out, "report", "index.html")
    if os.path.exists(page):  # the review page and its thumbnails (bounded whatever N is)
        done["review_page_kib"] = round(os.path.getsize(page) / 1024, 1)
        done["review_images_kib"] = round(files_size(os.path.join(out, "report", "img")) / 1024, 1)
    return done


def files_size(folder: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(folder)) if os.path.isdir(folder) else 0


# --- data ---------------------------------------------------------------------------------------


def clips(root: str, frames: int) -> list[tuple[str, str]]:
    """Four tiny clips (path, label), rendered once under ``root/_clips``."""
    from dfpipe.sampledata import generate as G

    folder = os.path.join(root, f"_clips-{frames}")
    cfg = G.SampleConfig(
        videos=4, frames=frames, width=CLIP_SIZE[0], height=CLIP_SIZE[1], specials=False, parts=1
    )
    out = []
    photo = None
    for spec in G.plan(cfg):
        path = os.path.join(folder, spec.video_id + ".mp4")
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            photo = G._astronaut_bgr() if photo is None else photo
            G.write_clip(spec, path, photo)
        out.append((path, spec.label))
    return out


def add_videos(dataset: str, sources: list[tuple[str, str]], first: int, count: int) -> None:
    """Videos ``first`` to ``first + count`` (hard links to ``sources`` in turn), into parts of
    ``PART_SIZE`` under ``dataset``, each part's ``metadata.json`` updated."""
    for start in range(first, first + count, PART_SIZE):
        part = os.path.join(dataset, f"dfdc_train_part_{start // PART_SIZE}")
        os.makedirs(part, exist_ok=True)
        meta_path = os.path.join(part, "metadata.json")
        meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
        for i in range(start, min(first + count, (start // PART_SIZE + 1) * PART_SIZE)):
            src, label = sources[i % len(sources)]
            name = f"v{i:07d}.mp4"
            os.link(src, os.path.join(part, name))
            meta[name] = {"label": label, "split": "train"}
        with open(meta_path, "w") as fh:
            json.dump(meta, fh)


def new_share(n: int) -> int:
    return max(1, n // 100)


# --- one step in a fresh process ------------------------------------------------------------------


def child(step: str, args: dict) -> dict:
    """Run one job in this process on a local Ray; its figures."""
    import ray

    from dfpipe import console
    from dfpipe.cli import parse_args

    updates: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    update = console.Progress.update

    def recorded(self, done, detail="", **counts):  # the step's own progress, timed here
        updates[self.label].append((time.monotonic(), done))
        return update(self, done, detail, **counts)

    console.Progress.update = recorded
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    idle = rss_kib(os.getpid())
    tree = PeakMemory(os.getpid())
    tree.start()
    if args.get("window_blocks"):  # a smaller window, so that a small N spans several (the tests' guard)
        from dfpipe import runner

        runner.WINDOW_BLOCKS = args["window_blocks"]
    job = __import__(f"dfpipe.jobs.{args['job']}", fromlist=["run"])
    config = getattr(job, CONFIGS[args["job"]])
    started = time.monotonic()
    try:
        job.run(parse_args(config, args["argv"]))
    finally:
        seconds = time.monotonic() - started
        tree.stop()
        ray.shutdown()
    per_video = 0.0
    # Each progress of the step (segment, embed, score): its time per video after its first update.
    for points in updates.values():
        (t0, d0), (t1, d1) = points[0], points[-1]
        if d1 > d0:
            per_video += (t1 - t0) / (d1 - d0)
    return {
        "seconds": round(seconds, 2),
        "per_video_ms": round(1000 * per_video, 2) if per_video else None,
        "driver_idle_mib": round(idle / 1024, 1),
        "driver_peak_mib": round(peak_rss_kib() / 1024, 1),
        "tree_peak_mib": round(tree.peak / 1024**2, 1),
    }


def run_child(step: str, args: dict, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", step, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{step} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def files_under(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


# --- S3 request counting ----------------------------------------------------------------------------


class MotoServer:
    """A moto S3 server in a subprocess whose request log is counted by kind."""

    def __init__(self, folder: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = os.path.join(folder, f"moto-{self.port}.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(self.port)],
            stdout=open(self.log, "w"),
            stderr=subprocess.STDOUT,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

    def counts(self) -> collections.Counter:
        """Requests so far by kind: list, head, get, put, delete, other."""
        kinds: collections.Counter = collections.Counter()
        pattern = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP')
        with open(self.log) as fh:
            for line in fh:
                m = pattern.search(line)
                if not m:
                    continue
                method, target = m.groups()
                path, _, query = target.partition("?")
                if method == "GET" and (path.count("/") <= 1 or "list-type" in query or "prefix=" in query):
                    kinds["list"] += 1
                else:
                    kinds[
                        {"GET": "get", "HEAD": "head", "PUT": "put", "DELETE": "delete"}.get(method, "other")
                    ] += 1
        return kinds

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def upload(local: str, bucket_uri: str, options: dict) -> None:
    import fsspec

    fs = fsspec.filesystem("s3", **options)
    fs.put(local.rstrip("/") + "/", bucket_uri.replace("s3://", "") + "/", recursive=True)


# --- the benchmark ------------------------------------------------------------------------------------


def progress(n: int, step: str, result: dict) -> None:
    """A step's figures as soon as it ends, on stderr (a long run that is stopped keeps them)."""
    print(f"  {n:>6} {step:<15} " + json.dumps(result), file=sys.stderr, flush=True)


def one_size(root: str, n: int, frames: int, model: str, jobs: tuple[str, ...]) -> dict:
    """The steps of ``jobs`` at ``n`` videos; their figures by step name."""
    sources = clips(root, frames)
    base = os.path.join(root, f"n{n}")
    shutil.rmtree(base, ignore_errors=True)
    dump = os.path.join(base, "dump")
    fresh = new_share(n)
    add_videos(dump, sources, 0, n - fresh)
    new_only = os.path.join(base, "new-only")
    add_videos(new_only, sources, n - fresh, fresh)
    ext, seg, scored, rescored = (os.path.join(base, k) for k in ("extract", "segment", "score", "rescore"))
    face = EXTRACT_OPTIONS
    window = [f"{k}={v}" for k, v in WINDOW.items()]
    plan = {
        "extract": ({"job": "extract", "argv": ["--input", dump, "--output", ext, *face]}, ext),
        "segment": ({"job": "segment", "argv": ["--input", ext, "--output", seg, *window]}, seg),
        "score": (
            {
                "job": "score",
                "argv": ["--input", ext, "--model", model, "--output", scored, "evaluate=false"],
            },
            scored,
        ),
    }
    results = {}
    for step in ("extract", "segment", "score"):
        if step not in jobs:
            continue
        args, out = plan[step]
        for name in (step, f"{step} again"):
            results[name] = run_child(name, args)
            results[name]["files"] = files_under(out)
            results[name].update(work_done(out))
            progress(n, name, results[name])
    if "rescore" not in jobs:
        return results
    # rescore: the dump scored once, 1% new videos added, rescored; the baseline scores them alone.
    rescore = {
        "job": "rescore",
        "argv": ["--input", dump, "--model", model, "--output", rescored, "score.evaluate=false"],
    }
    run_child("rescore (first)", rescore)
    add_videos(dump, sources, n - fresh, fresh)
    results["rescore 1%"] = run_child("rescore 1%", rescore)
    results["rescore 1%"]["files"] = files_under(rescored)
    alone = os.path.join(base, "score-new-only")
    results["score 1% alone"] = run_child(
        "score 1% alone",
        {
            "job": "score",
            "argv": ["--input", new_only, "--model", model, "--output", alone, "evaluate=false"],
        },
    )
    results["score 1% alone"]["files"] = files_under(alone)
    for name in ("rescore 1%", "score 1% alone"):
        progress(n, name, results[name])
    return results


def s3_requests(root: str, n: int, frames: int, model: str) -> dict:
    """Requests per video of extract and score with input and output on a moto S3 server."""
    server = MotoServer(root)
    try:
        options = {"endpoint_url": server.endpoint, "key": "testing", "secret": "testing"}
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": server.endpoint,
        }
        import fsspec

        fsspec.filesystem("s3", **options).mkdir("bench")
        local = os.path.join(root, f"s3-{n}")
        shutil.rmtree(local, ignore_errors=True)
        add_videos(local, clips(root, frames), 0, n)
        upload(local, "s3://bench/data", options)
        opts = [f"s3_endpoint_url={server.endpoint}"]
        jobs = {
            "extract": ["--input", "s3://bench/data", "--output", "s3://bench/extract", *EXTRACT_OPTIONS],
            "score": ["--input", "s3://bench/extract", "--model", model, "--output", "s3://bench/score"],
        }
        out = {}
        for job, argv in jobs.items():
            before = server.counts()
            extra = ["evaluate=false"] if job == "score" else []
            run_child(f"{job} (s3)", {"job": job, "argv": [*argv, *extra, *opts]}, env)
            after = server.counts()
            out[job] = {k: round((after[k] - before[k]) / n, 3) for k in sorted(set(after) | set(before))}
        return out
    finally:
        server.stop()


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,4000,16000", help="comma-separated N")
    p.add_argument("--frames", type=int, default=4, help="frames per clip (a 4-frame window each)")
    p.add_argument(
        "--jobs",
        default="extract,segment,score,rescore",
        help="which steps to run (the benchmark's own order)",
    )
    p.add_argument("--s3", action="store_true", help="also count S3 requests per video on a moto server")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-bench-scale"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("STEP", "ARGS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], json.loads(args.child[1]))), flush=True)
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    os.makedirs(args.workdir, exist_ok=True)
    model = models(args.workdir, SMALL_FACES)
    jobs = tuple(args.jobs.split(","))
    results = {n: one_size(args.workdir, n, args.frames, model, jobs) for n in sizes}
    s3 = {n: s3_requests(args.workdir, n, args.frames, model) for n in sizes} if args.s3 else {}
    small, large = sizes[0], sizes[-1]
    summary = {"sizes": sizes, "steps": {}, "s3_per_video": {str(n): v for n, v in s3.items()}}
    steps = [s for s in STEPS if s in results[small]]
    for step in steps:
        a, b = results[small][step], results[large][step]
        summary["steps"][step] = {
            "runs": {str(n): results[n][step] for n in sizes},
            "driver_peak_ratio": ratio(b["driver_peak_mib"], a["driver_peak_mib"]),
            "driver_growth_kib_per_video": round(
                1024 * (b["driver_peak_mib"] - a["driver_peak_mib"]) / (large - small), 2
            )
            if large > small
            else None,
            "tree_peak_ratio": ratio(b["tree_peak_mib"], a["tree_peak_mib"]),
            "per_video_ratio": ratio(b["per_video_ms"], a["per_video_ms"]),
        }
    summary["rescore_vs_alone"] = {
        str(n): ratio(results[n]["rescore 1%"]["seconds"], results[n]["score 1% alone"]["seconds"])
        for n in sizes
        if "rescore 1%" in results[n]
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"\n{'step':<15} {'videos':>7} {'seconds':>8} {'ms/video':>9} {'driver idle':>11} "
        f"{'driver peak':>11} {'tree peak':>10} {'files':>7}  work done"
    )
    for step in steps:
        for n in sizes:
            r = results[n][step]
            per = f"{r['per_video_ms']:.1f}" if r["per_video_ms"] else "-"
            print(
                f"{step:<15} {n:>7} {r['seconds']:>8.1f} {per:>9} {r['driver_idle_mib']:>9.1f}Mi "
                f"{r['driver_peak_mib']:>9.1f}Mi {r['tree_peak_mib']:>8.1f}Mi {r['files']:>7}  "
                + " ".join(f"{k} {r[k]}" for k in WORK if k in r)
            )
    print(f"\nratios {large}/{small} (targets: driver peak <= 1.2, time per video <= 1.2):")
    for step, s in summary["steps"].items():
        print(
            f"  {step:<15} driver peak {s['driver_peak_ratio']}x ({s['driver_growth_kib_per_video']} KiB a video), "
            f"time per video {s['per_video_ratio'] or '-'}x, tree peak {s['tree_peak_ratio']}x"
        )
    for step in (s for s in NO_OPS if s in steps):
        print(f"  {step} at {large}: {results[large][step]['seconds']} s (target <= 10 s)")
    for n, r in summary["rescore_vs_alone"].items():
        print(f"  rescore of 1% new at {n}: {r}x scoring those videos alone (target <= 1.5x)")
    for n, steps in s3.items():
        for step, kinds in steps.items():
            print(
                f"  S3 requests per video, {step} at {n}: " + ", ".join(f"{k} {v}" for k, v in kinds.items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
