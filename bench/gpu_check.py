"""The GPU check: extraction, training and scoring rates on one CUDA GPU, each beside the same run on CPUs.

    bash bench/gpu_check.sh [--real ../shared/data] [--clips DIR] [--json FILE] [--tiny]

One process, no downloads, no Ray (it measures what one GPU worker does; the runner adds
scheduling on top), sized to finish in about 8 minutes on a GPU machine. It prints one table:

  extraction       frames/s including decode, per GPU (all of the machine's CPUs feeding it), over
                   generated 1080p clips and over the real clips of ``--real``; the decode floor of the
                   same frames beside it, and the frames each detector call carried
  embedder train   faces/s of the triplet loop (bf16 autocast on the GPU), JPEG decoding included
  LSTM train       windows/s of the classifier loop
  bulk scoring     videos/s: extract (videos in flight), segment, embed and classify, per GPU
  score-video      seconds for one 10-s 1080p clip: cold (models loaded first) and warm

Models are random-init with the default recipe: speed does not depend on the weights, and nothing
is downloaded. Without CUDA only the CPU column is measured (``--tiny`` makes it a seconds-long
smoke test, which the test suite runs). Targets (issue 16): >= 300 frames/s per GPU including
decode; a 10-s clip scored in <= 1 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dfpipe import config as C  # noqa: E402
from dfpipe.extract.decode import DecodeLimits, VideoReader  # noqa: E402
from dfpipe.jobs import recipe  # noqa: E402
from dfpipe.storage import Folder  # noqa: E402
from dfpipe.train import modelio  # noqa: E402

TARGET_FRAMES_PER_S = 300.0
TARGET_CLIP_SECONDS = 1.0


@dataclass(frozen=True)
class Size:
    """How much work each measurement gets, per device."""

    clips: int  # generated clips (one of them is the score-video clip)
    width: int
    height: int
    frames: int  # frames per generated clip (300 at 30 fps: a 10-s clip)
    extract_frames: int  # frame cap per clip in the extraction runs
    embed_steps: int
    embed_batch: int
    lstm_steps: int
    lstm_batch: int
    score_videos: int
    warm_calls: int


FULL = {
    "cuda": Size(8, 1920, 1080, 300, 300, 30, 128, 200, 512, 8, 3),
    "cpu": Size(8, 1920, 1080, 300, 60, 3, 32, 50, 512, 2, 1),
}
TINY = Size(2, 320, 240, 20, 20, 1, 4, 2, 8, 2, 1)


# --- data and models ---------------------------------------------------------------------------


def generate_clips(out: str, size: Size) -> list[str]:
    """Regular generated clips (a face moving, 30 fps, H.264) at ``size``; reused when present."""
    from dfpipe.sampledata import generate as sample

    if not glob.glob(os.path.join(out, "**", "*.mp4"), recursive=True):
        sample.main(
            [out, "--videos", str(size.clips), "--width", str(size.width), "--height", str(size.height)]
            + ["--fps", "30", "--frames", str(size.frames), "--parts", "1", "--portrait-frames", "2"]
        )
    return regular_clips(out)


def regular_clips(folder: str) -> list[str]:
    """The clips of a generated folder at its regular size (the portrait and odd-size extras left out)."""
    import cv2

    clips = sorted(glob.glob(os.path.join(folder, "**", "*.mp4"), recursive=True))
    sizes = {}
    for c in clips:
        cap = cv2.VideoCapture(c)
        sizes[c] = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        cap.release()
    common = max(set(sizes.values()), key=list(sizes.values()).count)
    return [c for c in clips if sizes[c] == common]


def random_model(out: str) -> str:
    """A classifier directory (with its embedder) of random weights and the default recipe."""
    from dfpipe.jobs.extract import ExtractConfig
    from dfpipe.jobs.segment import SegmentConfig

    if os.path.isfile(os.path.join(out, "model.json")):
        return out
    ext = C.to_dict(C.build(ExtractConfig, {"input": "in", "output": "out"}))
    seg = C.to_dict(C.build(SegmentConfig, {"input": "in", "output": "out"}))
    emb_meta = {
        "architecture": "face_embedder",
        "code_dim": 128,
        "face_size": ext["face_size"],
        "dropout": 0.2,
    }
    cls_meta = {
        "architecture": "window_classifier",
        "code_dim": 128,
        "n_frames": seg["window_len"],
        "window_len": seg["window_len"],
        "hidden_size": 64,
        "num_layers": 1,
        "bidirectional": True,
        "dropout": 0.2,
        "face_size": ext["face_size"],
        "frame_stride": ext["frame_stride"],
        "prior_fake": 0.5,
        "temperature": 1.0,
        "aggregation": "max_track_mean",
        "recipe": recipe.build(ext, seg),
    }
    modelio.save_model(Folder(os.path.join(out, "embedder")), modelio.build(emb_meta).state_dict(), emb_meta)
    modelio.save_model(Folder(out), modelio.build(cls_meta).state_dict(), cls_meta)
    return out


def face_jpegs(n: int, size: int = 160) -> list[bytes]:
    """``n`` distinct face crops (the sample photograph, shifted and tinted) as JPEG bytes."""
    import cv2

    from dfpipe.extract.faces import encode_jpeg
    from dfpipe.sampledata.generate import _astronaut_bgr

    photo = _astronaut_bgr()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x, y = rng.integers(150, 200), rng.integers(20, 60)
        crop = photo[y : y + 200, x : x + 200].astype(np.float32) * rng.uniform(0.8, 1.2, 3)
        crop = cv2.resize(np.clip(crop, 0, 255).astype(np.uint8), (size, size))
        out.append(encode_jpeg(crop, bgr=True))
    return out


# --- measurements -----------------------------------------------------------------------------


def decode_floor(clips: list[str], max_frames: int, threads: int) -> float:
    """Frames/s of decoding alone, the clips in parallel on ``threads`` threads (one decoder thread each)."""

    def read(path: str) -> int:
        reader = VideoReader(path, 1, DecodeLimits(max_frames=max_frames), chunk=8, threads=1)
        return sum(len(frames) for _, frames in reader)

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        n = sum(pool.map(read, clips))
    return n / (time.perf_counter() - start)


def extraction(clips: list[str], device: str, max_frames: int, threads: int, workdir: str) -> dict:
    """The extraction stage over ``clips``: frames/s including decode, detector frames per call."""
    from dfpipe.extract.stage import FaceExtractStage

    in_flight = min(len(clips), 16 if device == "cuda" else threads)
    stage = FaceExtractStage.of(
        Folder(tempfile.mkdtemp(dir=workdir)),
        max_frames=max_frames,
        device=device,
        threads=threads,
        videos_in_flight=in_flight,
    )
    stage.setup()
    # Warm-up outside the clock: the first calls build kernels (and CUDA's context on a GPU).
    warm = [np.zeros((1080, 1920, 3), np.uint8) + 90 for _ in range(2)]
    stage.detector.detect(warm)
    stage.detector.verify(warm, [np.array([[800, 300, 1000, 560]], np.float32)] * 2)
    stage.detector.detect_regions(warm, [np.array([[800, 300, 1000, 560]], np.float32)] * 2)
    stage.detector.n_calls = stage.detector.n_frames = 0
    stage.detector.n_region_calls = stage.detector.n_regions = 0
    rows = [
        {
            "video_id": f"v{i}",
            "uri": c,
            "filename": c,
            "part": ".",
            "label": None,
            "original": None,
            "error": None,
        }
        for i, c in enumerate(clips)
    ]
    start = time.perf_counter()
    manifests = stage.process_many(rows)
    seconds = time.perf_counter() - start
    failed = [m["error"] for m in manifests if m["status"] != "ok"]
    frames = sum(m["n_frames"] for m in manifests)
    det = stage.detector
    return {
        "videos": len(clips),
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "decode_floor_per_s": round(decode_floor(clips, max_frames, threads), 1),
        # Whole frames per full-scan call, and regions around known faces per region call.
        "frames_per_detector_call": round(det.n_frames / max(1, det.n_calls), 1),
        "regions_per_call": round(det.n_regions / max(1, det.n_region_calls), 1),
        "videos_in_flight": in_flight,
        "failed": failed,
    }


def _context(datasets: dict, device: str):
    import torch

    from dfpipe.train.loops import LocalContext

    ctx = LocalContext(datasets)
    ctx.device = torch.device(device)
    return ctx


def train_embedder(device: str, size: Size) -> dict:
    """Faces/s of the embedder's training loop (second epoch, after warm-up)."""
    from dfpipe.train.loops import embedder_loop

    jpegs = face_jpegs(64)
    n = max(size.embed_batch, 64)

    def part(label: float) -> dict:
        faces = np.empty(n, dtype=object)  # one list of one JPEG per row, as the training rows hold
        for i in range(n):
            faces[i] = [jpegs[i % len(jpegs)]]
        video_id = np.array([f"{label:.0f}-{i % 16}" for i in range(n)])
        return {"faces": faces, "label": np.full(n, label, np.float32), "video_id": video_id}

    val = {k: np.concatenate([part(0)[k][:8], part(1)[k][:8]]) for k in ("faces", "label", "video_id")}
    ctx = _context({"train_real": part(0), "train_fake": part(1), "val": val}, device)
    meta = {"architecture": "face_embedder", "code_dim": 128, "face_size": 160, "dropout": 0.2}
    cfg = {
        "meta": meta,
        "init_state": None,
        "lr": 3e-4,
        "weight_decay": 1e-5,
        "loss": "triplet",
        "margin": 0.5,
        "epochs": 2,
        "batch_size": size.embed_batch,
        "steps_per_epoch": size.embed_steps,
        "face_size": 160,
        "seed": 0,
    }
    embedder_loop(cfg, ctx)
    return {"faces_per_s": ctx.reports[-1]["train_per_s"], "batch": size.embed_batch}


def train_lstm(device: str, size: Size) -> dict:
    """Windows/s of the classifier's training loop (second epoch, after warm-up)."""
    from dfpipe.train.loops import classifier_loop

    rng = np.random.default_rng(0)
    n, t, d = max(size.lstm_batch, 64), 16, 128

    def windows(k: int) -> dict:
        return {
            "codes": rng.standard_normal((k, t * d)).astype(np.float32),
            "label": rng.integers(0, 2, k).astype(np.float32),
            "video_id": np.array([f"v{i % 8}" for i in range(k)], dtype=object),
            "track_id": np.zeros(k, np.int32),
        }

    ctx = _context({"train": windows(n), "val": windows(64)}, device)
    meta = {
        "architecture": "window_classifier",
        "code_dim": d,
        "n_frames": t,
        "hidden_size": 64,
        "num_layers": 1,
        "bidirectional": True,
        "dropout": 0.2,
    }
    cfg = {
        "meta": meta,
        "lr": 3e-3,
        "weight_decay": 1e-5,
        "epochs": 2,
        "batch_size": size.lstm_batch,
        "steps_per_epoch": size.lstm_steps,
        "seed": 0,
        "pos_weight": 1.0,
    }
    classifier_loop(cfg, ctx)
    return {"windows_per_s": ctx.reports[-1]["train_per_s"], "batch": size.lstm_batch}


def scoring(model: str, clips: list[str], clip: str, device: str, size: Size) -> dict:
    """Bulk scoring videos/s (``Scorer.score_many``) and score-video's cold and warm seconds for ``clip``."""
    from dfpipe.jobs.score_video import Scorer

    start = time.perf_counter()
    with Scorer(model, device=device) as scorer:
        first = scorer.score(clip)
        cold = time.perf_counter() - start
        warm, steps = [], {}
        for _ in range(size.warm_calls):
            t = time.perf_counter()
            steps = scorer.score(clip)["seconds"]
            warm.append(time.perf_counter() - t)
        videos = clips[: size.score_videos]
        t = time.perf_counter()
        records = scorer.score_many(videos)
        bulk = time.perf_counter() - t
    return {
        "clip_frames": first["n_frames"],
        "clip_windows": first["n_windows"],
        "cold_s": round(cold, 2),
        "warm_s": round(float(np.median(warm)), 3),
        "cold_steps": {"load": round(scorer.load_seconds, 3), **first["seconds"]},
        "warm_steps": steps,
        "bulk_videos": len(videos),
        "bulk_videos_per_s": round(len(videos) / bulk, 3),
        "bulk_failed": sum(1 for r in records if not isinstance(r, dict)),
    }


def measure(device: str, size: Size, clips: list[str], real: list[str], model: str, workdir: str) -> dict:
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    out: dict = {"threads": threads}
    out["extract_generated"] = extraction(clips, device, size.extract_frames, threads, workdir)
    if real:
        out["extract_real"] = extraction(real, device, size.extract_frames, threads, workdir)
    out["embedder_train"] = train_embedder(device, size)
    out["lstm_train"] = train_lstm(device, size)
    out["scoring"] = scoring(model, clips, clips[0], device, size)
    return out


def table(results: dict) -> str:
    devices = list(results["devices"])
    rows = [
        ("extraction, generated clips (frames/s)", "extract_generated", "frames_per_s"),
        ("  decode floor of the same frames", "extract_generated", "decode_floor_per_s"),
        ("  frames per detector call", "extract_generated", "frames_per_detector_call"),
        ("  regions per region call", "extract_generated", "regions_per_call"),
        ("extraction, real clips (frames/s)", "extract_real", "frames_per_s"),
        ("  decode floor of the same frames", "extract_real", "decode_floor_per_s"),
        ("  frames per detector call", "extract_real", "frames_per_detector_call"),
        ("  regions per region call", "extract_real", "regions_per_call"),
        ("embedder training (faces/s)", "embedder_train", "faces_per_s"),
        ("LSTM training (windows/s)", "lstm_train", "windows_per_s"),
        ("bulk scoring (videos/s)", "scoring", "bulk_videos_per_s"),
        ("score-video, 10-s clip, warm (s)", "scoring", "warm_s"),
        ("score-video, cold: load + first call (s)", "scoring", "cold_s"),
    ]
    head = f"{'measure':<44}" + "".join(f"{d:>14}" for d in devices)
    lines = [head, "-" * len(head)]
    for label, group, key in rows:
        cells = [results["devices"][d].get(group, {}).get(key) for d in devices]
        if all(c is None for c in cells):
            continue
        lines.append(f"{label:<44}" + "".join(f"{'-' if c is None else c:>14}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--real", default=None, help="a folder of real clips (e.g. ../shared/data), searched for *.mp4"
    )
    p.add_argument("--clips", default=None, help="generated clips made earlier (default: generate them)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dfpipe-gpu-check"))
    p.add_argument("--tiny", action="store_true", help="seconds-long sizes (the test suite's smoke run)")
    p.add_argument("--cpu", action="store_true", help="measure the CPU column even on a GPU machine")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    import torch

    os.makedirs(args.workdir, exist_ok=True)
    devices = ["cuda"] if torch.cuda.is_available() else []
    if args.cpu or not devices:
        devices.append("cpu")
    sizes = {d: TINY if args.tiny else FULL[d] for d in devices}
    clip_size = sizes[devices[0]]
    clips = (
        regular_clips(args.clips)
        if args.clips
        else generate_clips(os.path.join(args.workdir, "clips"), clip_size)
    )
    real = sorted(glob.glob(os.path.join(args.real, "**", "*.mp4"), recursive=True)) if args.real else []
    model = random_model(os.path.join(args.workdir, "model"))
    results: dict = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
        },
        "clips": {"generated": len(clips), "real": len(real)},
        "devices": {},
    }
    for device in devices:
        started = time.perf_counter()
        results["devices"][device] = measure(device, sizes[device], clips, real, model, args.workdir)
        results["devices"][device]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"gpu_check: {device} done in {results['devices'][device]['seconds']} s", flush=True)
    if "cuda" in results["devices"]:
        r = results["devices"]["cuda"]
        results["targets"] = {
            "extract_frames_per_s": [r["extract_generated"]["frames_per_s"], TARGET_FRAMES_PER_S],
            "clip_seconds": [r["scoring"]["warm_s"], TARGET_CLIP_SECONDS],
        }
    m = results["machine"]
    print(
        f"\n{m['gpu'] or 'no GPU'}, {m['cpus']} CPUs, torch {m['torch']}; {len(clips)} generated clips, {len(real)} real"
    )
    print(table(results))
    if "targets" in results:
        for name, (value, target) in results["targets"].items():
            ok = value >= target if name.endswith("per_s") else value <= target
            print(f"target {name}: {value} (target {target}) {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
