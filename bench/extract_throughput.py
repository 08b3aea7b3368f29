"""Extraction speed against the decode floor and the seed's loop, side by side in one run.

    python bench/extract_throughput.py [--videos 2] [--frames 300] [--size 1920x1080] [--json]

Generates H.264 clips (30 fps) of the sample generator's face scene, then measures in the same run:
  decode       OpenCV decode of every frame, every core (the floor)
  seed         the seed project's loop: an MTCNN built per frame, full resolution
  facenet      plain facenet-pytorch: one MTCNN, full resolution, detect + extract frame by frame,
               timed on --baseline-frames per clip; the same on every frame is the agreement
               reference (kept in WORKDIR/reference: at ~2 frames/s it is computed once per clip)
  dfdc         what DFDC practitioners ran: one MTCNN on every frame at half size, batches of 16,
               crops from the full frame (the baseline dfpipe's ratio is printed against)
  stage        dfpipe's FaceExtractStage in this process, every core, at the job's defaults
  stage before the stage as dfpipe ran before regions and its own cascade (scan_every=0, mtcnn=facenet)
  job 2cpu     the extraction job through Ray Data on N videos, then on 4N videos (peak memory of both),
               and on the real clips with --real; wall (start-up included) and after the first video
  job 1cpu     the job on 4N videos with one CPU given to Ray
Agreement: over frames where full-resolution detection finds a face, the share where dfpipe's
primary box overlaps the reference's by IoU >= 0.8, and the share whose frame flag is the same.
``--sweep`` adds the stage with other keyframe spacings and detection sizes (the approaches).
The DFDC baseline runs on the same frames as dfpipe, the facenet and seed loops (~2 frames/s) on
the first ``--baseline-frames``/``--seed-frames`` of each clip, all after the same warm-up: one
detection before the clock starts.
Ratios are taken within this run only; rerun the whole thing to compare machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _memory import PeakMemory  # noqa: E402

from dfpipe.sampledata.generate import ClipSpec, write_clip  # noqa: E402
from dfpipe.storage import Folder  # noqa: E402

TARGETS = {
    "stage_x_decode": 0.5,
    "job_x_decode_real": 0.5,
    "stage_x_decode_real": 0.5,
    "stage_x_dfdc": 1.0,  # no stated target: faster than practice at least
    "stage_x_dfdc_real": 1.0,
    "job_x_decode": 0.5,
    "stage_x_seed": 60.0,
    "stage_x_facenet": 15.0,
    "iou_share": 0.95,
    "iou_share_real": 0.95,
    "flag_share_real": 0.95,
    "rss_4n_x_n": 1.2,  # at most
    "cpus_2_x_1": 1.7,
}


def make_clips(folder: str, n: int, frames: int, width: int, height: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"bench{i:03d}.mp4")
        if not os.path.exists(path):
            write_clip(
                ClipSpec(f"bench{i:03d}", "REAL", 0, width, height, frames, 30.0, scene_seed=100 + i), path
            )
        paths.append(path)
    return paths


def read_frames(path: str, limit: int | None):
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        for _ in range(limit if limit is not None else 10**9):
            ok, bgr = cap.read()
            if not ok:
                return
            yield bgr
    finally:
        cap.release()


# --- the runs ---------------------------------------------------------------------------------

# The stage as dfpipe ran it before regions around faces and its own cascade: this change's baseline.
BEFORE = {"scan_every": 0, "mtcnn": "facenet"}


def _job_rates(r: dict) -> dict:
    return {"steady_frames_per_s": r["frames"] / r["actor_seconds"], "first_video_s": r["first_video_s"]}


def decode_only(paths: list[str], threads: int = 0) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for p in paths:
        cap = cv2.VideoCapture(p, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
        while cap.read()[0]:
            n += 1
        cap.release()
    return n, time.perf_counter() - start


def _warm_up(detect) -> None:
    """The warm-up every run gets: one call before the clock starts (torch's first calls are slow)."""
    detect(np.full((240, 320, 3), 90, np.uint8))


def seed_loop(paths: list[str], frames: int | None) -> tuple[int, float]:
    """The student project's loop: a new MTCNN per frame, full-resolution PIL frames, crops returned."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    _warm_up(lambda f: MTCNN(keep_all=True, device="cpu")(Image.fromarray(f)))
    start, n = time.perf_counter(), 0
    for p in paths:
        for bgr in read_frames(p, frames):
            mtcnn = MTCNN(keep_all=True, device="cpu")
            mtcnn(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            n += 1
    return n, time.perf_counter() - start


def plain_facenet(paths: list[str], frames: int | None) -> tuple[int, float, dict]:
    """One MTCNN at full resolution, frame by frame; returns reference boxes per (video, frame)."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    mtcnn = MTCNN(keep_all=True, device="cpu", post_process=False)
    _warm_up(lambda f: mtcnn.detect(Image.fromarray(f)))
    ref: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    start, n = time.perf_counter(), 0
    for p in paths:
        video_id = os.path.basename(p)[:-4]
        for i, bgr in enumerate(read_frames(p, frames)):
            img = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            boxes, probs = mtcnn.detect(img)
            if boxes is not None:
                mtcnn.extract(img, boxes, None)
                ref[(video_id, i)] = (np.asarray(boxes, np.float32), np.asarray(probs, np.float32))
            else:
                ref[(video_id, i)] = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
            n += 1
    return n, time.perf_counter() - start, ref


def reference(paths: list[str], frames: int | None, cache: str) -> dict:
    """Full-resolution MTCNN boxes of every frame (the agreement reference), computed once per clip.

    At about 2 frames/s on a CPU the reference of the real clips takes longer than everything else
    in the run, and it depends only on the clip and the frame cap: it is kept in ``cache`` under
    the clip's name, size and modification time, and the frame cap.
    """
    os.makedirs(cache, exist_ok=True)
    ref: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for p in paths:
        st = os.stat(p)
        name = f"{os.path.basename(p)}-{st.st_size}-{int(st.st_mtime)}-{frames}.npz"
        path = os.path.join(cache, name)
        if not os.path.exists(path):
            _, _, found = plain_facenet([p], frames)
            arrays = {}
            for (_, i), (b, pr) in found.items():
                arrays[f"b{i}"], arrays[f"p{i}"] = b, pr
            np.savez(path + ".tmp.npz", **arrays)
            os.replace(path + ".tmp.npz", path)
        with np.load(path) as z:
            video_id = os.path.basename(p)[:-4]
            for key in z.files:
                if key[0] == "b":
                    ref[(video_id, int(key[1:]))] = (z[key], z["p" + key[1:]])
    return ref


def dfdc_practice(
    paths: list[str], frames: int | None, batch: int = 16, scale: float = 0.5
) -> tuple[int, float]:
    """The DFDC practitioners' loop: one MTCNN, every frame shrunk to ``scale``, ``batch`` frames per
    call, each face cropped from the full-resolution frame (160 px, margin 0.2, as dfpipe crops)."""
    from facenet_pytorch import MTCNN

    from dfpipe.extract.faces import crop_face

    mtcnn = MTCNN(keep_all=True, device="cpu", post_process=False)
    _warm_up(lambda f: mtcnn.detect(f[None]))
    start, n = time.perf_counter(), 0

    def run(full: list[np.ndarray]) -> None:
        h, w = full[0].shape[:2]
        small = np.stack(
            [
                cv2.cvtColor(cv2.resize(f, (round(w * scale), round(h * scale))), cv2.COLOR_BGR2RGB)
                for f in full
            ]
        )
        boxes, _ = mtcnn.detect(small)
        for f, b in zip(full, boxes, strict=True):
            for box in [] if b is None else np.asarray(b) / scale:
                crop_face(f, box, 0.2, 160)

    for p in paths:
        pending: list[np.ndarray] = []
        for bgr in read_frames(p, frames):
            pending.append(bgr)
            n += 1
            if len(pending) == batch:
                run(pending)
                pending = []
        if pending:
            run(pending)
    return n, time.perf_counter() - start


def catalog_rows(paths: list[str]):
    import pyarrow as pa

    from dfpipe import records as R

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
    return pa.Table.from_pylist(rows, schema=R.CATALOG_SCHEMA)


def stage_in_process(paths: list[str], out: str, threads: int, **settings) -> tuple[int, float, int, int]:
    """Frames, seconds, frames detected (whole or in regions) and frames scanned whole."""
    from dfpipe.extract.stage import FaceExtractStage

    # As the job runs it on a CPU worker of ``threads`` CPUs: one video per CPU at a time.
    stage = FaceExtractStage.of(Folder(out), threads=threads, videos_in_flight=threads, **settings)
    stage.setup()
    stage(
        catalog_rows(paths[:threads])
    )  # warm-up: torch's first calls are slow (the job pays this once per actor)
    warm_scans = stage.detector.n_frames
    start = time.perf_counter()
    res = stage(catalog_rows(paths))
    seconds = time.perf_counter() - start
    if set(res.column("status").to_pylist()) != {"ok"}:
        raise RuntimeError(f"the stage failed: {res.column('error').to_pylist()}")
    scanned = stage.detector.n_frames - warm_scans
    return (
        sum(res.column("n_frames").to_pylist()),
        seconds,
        sum(res.column("n_detected").to_pylist()),
        scanned,
    )


def job_subprocess(folder: str, out: str, num_cpus: int) -> dict:
    """The extraction job in a fresh process (its own local Ray), with the peak memory of its process tree."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_job", folder, out, str(num_cpus)]
    log_path = out.rstrip("/") + ".log"  # the job's stderr (Ray's and dfpipe's logs), kept beside its output
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        peak = PeakMemory(proc.pid)
        peak.start()
        stdout, _ = proc.communicate()
        peak.stop()
    if proc.returncode != 0:
        with open(log_path) as fh:
            tail = fh.read()[-4000:]
        raise RuntimeError(
            f"the extraction job failed (exit {proc.returncode}); its log {log_path} ends:\n{tail}"
        )
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib"] = peak.peak / 2**20
    return result


def _job_main(folder: str, out: str, num_cpus: int) -> None:
    import ray

    from dfpipe import outputs
    from dfpipe.cli import parse_args
    from dfpipe.jobs import extract

    # Ray given k CPUs gets k cores: without pinning, a "1 CPU" run still decodes on every core.
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:num_cpus]))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    cfg = parse_args(extract.ExtractConfig, ["--input", folder, "--output", out, "--overwrite"])
    start = time.perf_counter()
    stats = extract.run(cfg)
    seconds = time.perf_counter() - start
    ray.shutdown()
    manifest = outputs.read_manifest(Folder(out), columns=["n_frames", "elapsed_s"])
    busy = sum(manifest.column("elapsed_s").to_pylist())  # seconds actors spent on videos
    workers = min(num_cpus, manifest.num_rows)
    run = stats["run"]
    print(
        json.dumps(
            {
                "frames": run["frames"],
                "seconds": seconds,
                "actor_seconds": busy / workers,
                "first_video_s": run["first_video_s"],
                "after_first_per_s": run["steady_frames_per_s"],
            }
        )
    )


# --- agreement ---------------------------------------------------------------------------------


def agreement(faces_dir: str, ref: dict, min_prob: float, min_face_px: int) -> dict:
    """IoU >= 0.8 share of dfpipe's primary box against the full-resolution one, and flag agreement
    (of the primary face's flag, or no_face)."""
    import pyarrow.parquet as pq

    from dfpipe import records as R
    from dfpipe.extract.faces import face_flags
    from dfpipe.extract.tracks import iou_matrix

    ours: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for name in sorted(os.listdir(faces_dir)):
        t = pq.read_table(os.path.join(faces_dir, name)).to_pandas()
        for (vid, idx), g in t.groupby(["video_id", "frame_idx"]):
            g = g[g.prob.notna()]
            ours[(vid, int(idx))] = (
                g[["box_x1", "box_y1", "box_x2", "box_y2"]].to_numpy(np.float32),
                g.prob.to_numpy(np.float32),
            )

    def frame_flag(boxes, probs):
        """The primary face: the largest confident one (the highest probability is no rule when
        several faces score 1.000), else the most probable; its flag and box."""
        if len(boxes) == 0:
            return R.FLAG_NO_FACE, None
        confident = np.flatnonzero(probs >= min_prob)
        if len(confident):
            area = (boxes[confident, 2] - boxes[confident, 0]) * (boxes[confident, 3] - boxes[confident, 1])
            k = int(confident[np.argmax(area)])
        else:
            k = int(np.argmax(probs))
        return face_flags(boxes, probs, min_prob, min_face_px)[k], boxes[k]

    with_face = iou_ok = flags_same = frames = 0
    for key, (rb, rp) in ref.items():
        if key not in ours:
            continue
        frames += 1
        ref_flag, ref_box = frame_flag(rb, rp)
        our_flag, our_box = frame_flag(*ours[key])
        flags_same += ref_flag == our_flag
        if ref_box is not None:
            with_face += 1
            if our_box is not None and iou_matrix(ref_box[None], our_box[None])[0, 0] >= 0.8:
                iou_ok += 1
    return {
        "frames": frames,
        "frames_with_face": with_face,
        "iou_share": iou_ok / max(1, with_face),
        "flag_share": flags_same / max(1, frames),
    }


# --- report ------------------------------------------------------------------------------------


def real_clips(folder: str, limit: int) -> list[str]:
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(".mp4")]
    return sorted(found)[:limit]


def compare_stage(paths, workdir, tag, variants, ref, threads, record) -> dict:
    """Time each stage variant on ``paths`` and measure its agreement with the reference boxes."""
    from dfpipe.extract.options import DetectOptions

    defaults = DetectOptions()
    agree = {}
    for name, settings in variants.items():
        out = os.path.join(workdir, "stage-out", (f"{tag}-{name}" if tag else name).replace(" ", "_"))
        frames, seconds, detected, scanned = stage_in_process(paths, out, threads, **settings)
        record(f"{name}{' ' + tag if tag else ''}", frames, seconds, detected=detected, scanned=scanned)
        agree[f"{name}{' ' + tag if tag else ''}"] = agreement(
            out, ref, defaults.min_prob, defaults.min_face_px
        )
    return agree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=2, help="N: clips for the stage and the first job run")
    p.add_argument("--frames", type=int, default=300, help="frames per clip")
    p.add_argument("--size", default="1920x1080")
    p.add_argument(
        "--baseline-frames",
        type=int,
        default=30,
        help="frames per clip the facenet baseline is timed on (the DFDC baseline gets every frame dfpipe gets)",
    )
    p.add_argument(
        "--seed-frames", type=int, default=None, help="frames per clip for the seed's loop (default: all)"
    )
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-bench"))
    p.add_argument("--skip-job", action="store_true", help="leave out the Ray job runs")
    p.add_argument("--sweep", action="store_true", help="also time the stage with other keyframe settings")
    p.add_argument(
        "--real",
        metavar="DIR",
        help="also measure speed and agreement on the .mp4 files under DIR (e.g. ../shared/data)",
    )
    p.add_argument("--real-clips", type=int, default=6, help="at most this many clips from --real")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--_job", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._job:
        from dfpipe.cli import exit_process

        _job_main(args._job[0], args._job[1], int(args._job[2]))
        exit_process(0)  # as the jobs do: no abort at interpreter exit after the work is done

    width, height = (int(v) for v in args.size.split("x"))
    cpus = len(os.sched_getaffinity(0))
    n = args.videos
    clips = os.path.join(args.workdir, f"clips-{args.size}-{args.frames}")
    paths = make_clips(clips, 4 * n, args.frames, width, height)

    from dfpipe.extract.options import DecodeOptions, DetectOptions

    defaults = DecodeOptions()
    rates: dict[str, dict] = {}

    def record(name: str, frames: int, seconds: float, **extra) -> None:
        rates[name] = {
            "frames": frames,
            "seconds": round(seconds, 2),
            "frames_per_s": frames / seconds,
            **extra,
        }

    record("decode", *decode_only(paths[:n]))
    record("decode 1 thread", *decode_only(paths[:n], threads=1))
    # The frames dfpipe gets: every frame up to its per-video cap.
    same = defaults.limits.max_frames
    record("seed", *seed_loop(paths[:n], min(same, args.seed_frames or same)))
    record("facenet", *plain_facenet(paths[:n], min(same, args.baseline_frames))[:2])
    record("dfdc", *dfdc_practice(paths[:n], same))
    cache = os.path.join(args.workdir, "reference")
    ref = reference(paths[:n], same, cache)

    variants = {"stage": {}, "stage before": BEFORE}
    if args.sweep:
        variants.update(
            {
                "stage scan_every=32": {"scan_every": 32},
                "stage scan_every=128": {"scan_every": 128},
                "stage every=8": {"detect_every": 8},
                "stage every=32": {"detect_every": 32},
                "stage long_side=480": {"detect_long_side": 480},
                "stage every=1": {"detect_every": 1, "scan_every": 0},
                "stage every=1 long_side=1920": {
                    "detect_every": 1,
                    "scan_every": 0,
                    "detect_long_side": 1920,
                },
            }
        )
    agree = compare_stage(paths[:n], args.workdir, "", variants, ref, cpus, record)
    real = real_clips(args.real, args.real_clips) if args.real else []
    if real:
        record("decode real", *decode_only(real))
        record("facenet real", *plain_facenet(real, min(same, args.baseline_frames))[:2])
        record("dfdc real", *dfdc_practice(real, same))
        real_ref = reference(real, same, cache)
        real_variants = {k: v for k, v in variants.items() if "1920" not in k}
        agree.update(compare_stage(real, args.workdir, "real", real_variants, real_ref, cpus, record))

    memory = {}
    if not args.skip_job:
        sets = {}
        for k in (n, 4 * n):
            sets[k] = os.path.join(args.workdir, f"set-{args.size}-{args.frames}-{k}")
            os.makedirs(sets[k], exist_ok=True)
            for src in paths[:k]:
                dst = os.path.join(sets[k], os.path.basename(src))
                if not os.path.exists(dst):
                    os.link(src, dst)  # hard links: the catalog refuses symlinks leaving a dataset
        for label, k, num_cpus in (
            ("job 2cpu N", n, min(2, cpus)),
            ("job 2cpu 4N", 4 * n, min(2, cpus)),
            ("job 1cpu 4N", 4 * n, 1),
        ):
            out = os.path.join(args.workdir, "job-out", label.replace(" ", "_"))
            r = job_subprocess(sets[k], out, num_cpus)
            record(label, r["frames"], r["seconds"], **_job_rates(r))
            memory[label] = r["peak_mib"]
        if real:
            folder = os.path.join(args.workdir, "set-real")
            os.makedirs(folder, exist_ok=True)
            for src in real:
                dst = os.path.join(folder, os.path.basename(src))
                if not os.path.exists(dst):
                    try:
                        os.link(src, dst)
                    except OSError:  # another file system: a copy, in the work folder only
                        shutil.copyfile(src, dst)
            r = job_subprocess(folder, os.path.join(args.workdir, "job-out", "job_2cpu_real"), min(2, cpus))
            record("job 2cpu real", r["frames"], r["seconds"], **_job_rates(r))

    for name, r in rates.items():
        real = name.endswith(" real")
        r["x_decode"] = r["frames_per_s"] / rates["decode real" if real else "decode"]["frames_per_s"]
        r["x_dfdc"] = r["frames_per_s"] / rates["dfdc real" if real else "dfdc"]["frames_per_s"]
    stage = rates["stage"]["frames_per_s"]
    checks = {
        "stage_x_decode": rates["stage"]["x_decode"],
        "stage_x_dfdc": rates["stage"]["x_dfdc"],
        "stage_x_seed": stage / rates["seed"]["frames_per_s"],
        "stage_x_facenet": stage / rates["facenet"]["frames_per_s"],
        "iou_share": agree["stage"]["iou_share"],
    }
    if "job 2cpu real" in rates:
        checks["job_x_decode_real"] = rates["job 2cpu real"]["x_decode"]
    if "stage real" in agree:
        checks["iou_share_real"] = agree["stage real"]["iou_share"]
        checks["flag_share_real"] = agree["stage real"]["flag_share"]
        checks["stage_x_decode_real"] = rates["stage real"]["x_decode"]
        checks["stage_x_dfdc_real"] = rates["stage real"]["x_dfdc"]
    if memory:
        checks["job_x_decode"] = rates["job 2cpu 4N"]["x_decode"]
        checks["rss_4n_x_n"] = memory["job 2cpu 4N"] / memory["job 2cpu N"]
        checks["cpus_2_x_1"] = rates["job 2cpu 4N"]["frames_per_s"] / rates["job 1cpu 4N"]["frames_per_s"]
    verdicts = {
        k: {
            "value": v,
            "target": TARGETS[k],
            "met": v <= TARGETS[k] if k == "rss_4n_x_n" else v >= TARGETS[k],
        }
        for k, v in checks.items()
    }
    meta = {
        "videos": n,
        "frames": args.frames,
        "size": args.size,
        "cpus": cpus,
        "baseline_frames": args.baseline_frames,
        "seed_frames": args.seed_frames,
        "settings": {
            k: getattr(DetectOptions(), k)
            for k in ("detect_every", "scan_every", "mtcnn", "detect_long_side", "detect_batch", "agree_iou")
        },
    }
    if args.json:
        report = {"meta": meta, "rates": rates, "agreement": agree, "peak_mib": memory, "targets": verdicts}
        print(json.dumps(report, indent=2))
        return 0
    print(f"\n{n} clip(s) (4N = {4 * n} for the job) of {args.frames} frames at {args.size}, {cpus} CPUs")
    print(f"dfpipe settings: {meta['settings']}")
    print(
        f"\n{'run':<30} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'x decode':>9} {'x dfdc':>7} "
        f"{'detected':>9} {'scanned':>8} {'steady':>7} {'1st s':>6}"
    )
    for k, r in rates.items():
        steady = f"{r['steady_frames_per_s']:.1f}" if "steady_frames_per_s" in r else ""
        first = f"{r['first_video_s']:.1f}" if r.get("first_video_s") is not None else ""
        print(
            f"{k:<30} {r['frames']:>7} {r['seconds']:>8.2f} {r['frames_per_s']:>9.1f} "
            f"{r['x_decode']:>9.3f} {r['x_dfdc']:>7.2f} {r.get('detected', ''):>9} {r.get('scanned', ''):>8} "
            f"{steady:>7} {first:>6}"
        )
    print("(x decode: against the decode floor of the same clips; x dfdc: against the DFDC-practice loop)")
    print("(detected: frames the detector ran on, whole or in regions; scanned: of those, whole frames)")
    print("(steady: frames / the seconds actors spent on videos, without Ray and model start-up;")
    print(" 1st s: seconds to the job's first video, start-up included)")
    print(f"\n{'agreement vs full resolution':<30} {'frames w/ face':>14} {'IoU>=0.8':>9} {'same flag':>9}")
    for k, a in agree.items():
        print(f"{k:<30} {a['frames_with_face']:>14} {a['iou_share']:>9.3f} {a['flag_share']:>9.3f}")
    if memory:
        print(
            "\npeak memory (PSS of the job's process tree, MiB): "
            + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())
        )
    print(f"\n{'target':<18} {'value':>9} {'target':>9}  met")
    for k, v in verdicts.items():
        sign = "<=" if k == "rss_4n_x_n" else ">="
        print(f"{k:<18} {v['value']:>9.3f} {sign}{v['target']:>7}  {'yes' if v['met'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
