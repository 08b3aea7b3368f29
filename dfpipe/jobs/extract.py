"""Face extraction: a dataset URI in, ``faces/`` shards, a ``videos/`` manifest and ``stats.json`` out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import outputs, runner, storage
from dfpipe import records as R
from dfpipe.extract.catalog import build_catalog
from dfpipe.extract.options import CropOptions, DecodeOptions, DetectOptions, TrackOptions
from dfpipe.extract.stage import FaceExtractStage, manifest_row
from dfpipe.stage import Later, Resources
from dfpipe.step import Step, run_step, write_stats

log = logging.getLogger(__name__)

NAME = "extract"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Detect and crop faces in every video of a dataset into Parquet shards with per-frame flags."

GPU_VIDEOS_IN_FLIGHT = 16


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(C.RunOptions, TrackOptions, CropOptions, DetectOptions, DecodeOptions):
    """The extract job: where from and to, how it runs, and the stage's option groups
    (:mod:`dfpipe.extract.options`, inherited so that every key stays flat; listed last to first,
    as a dataclass takes the fields of its last base first)."""

    input: str = C.option(
        help="dataset URI (local path, file:// or s3://): DFDC metadata.json parts, a labels.csv, or a folder of videos"
    )
    output: str = C.option(
        help="output URI; faces/, videos/, stats.json and config.json are written under it"
    )
    overwrite: bool = C.option(False, "redo every video instead of only those missing from the manifest")
    device: Literal["auto", "cpu", "cuda"] = C.option(
        "auto", "where MTCNN runs: auto uses the GPU Ray gives an actor"
    )
    num_workers: int | None = C.option(None, "actors in the pool (default: as many as the cluster fits)")
    cpus_per_worker: float = C.option(
        1.0, "CPUs per extraction actor (also its decoder, OpenCV and torch threads)"
    )
    gpus_per_worker: float | None = C.option(
        None, "GPUs per actor (default: 1 when the cluster has GPUs, else 0)"
    )
    videos_in_flight: int | None = C.option(
        None,
        "videos an actor processes at once, one thread each (default: 16 on a GPU, their detections batched into "
        "shared calls, as one keyframe per call wastes a GPU; on CPUs one per CPU of the actor); each holds about "
        "detect_batch + 16 decoded frames",
    )
    manifest_flush_rows: int = C.option(500, "manifest rows per videos/ file (also flushed every 60 s)")

    def check(self) -> None:
        if storage.normalize(self.input) == storage.normalize(self.output):
            raise ValueError("output must differ from input: write results beside the dataset, not into it")


# Fields that change the rows written (declared ``rows=True``); their hash goes on every manifest
# row, and a model records their values as its recipe (:mod:`dfpipe.jobs.recipe`).
OUTPUT_FIELDS = C.row_fields(ExtractConfig)


def build_stage(cfg: ExtractConfig, faces: storage.Folder, num_gpus: float) -> FaceExtractStage:
    threads = max(1, int(cfg.cpus_per_worker))
    in_flight = cfg.videos_in_flight or (GPU_VIDEOS_IN_FLIGHT if num_gpus > 0 else threads)
    return FaceExtractStage(
        faces=faces,
        config_hash=C.config_hash(cfg, OUTPUT_FIELDS),
        decode=C.part(DecodeOptions, cfg),
        detect=C.part(DetectOptions, cfg),
        crop=C.part(CropOptions, cfg),
        track=C.part(TrackOptions, cfg),
        device="cuda" if num_gpus > 0 and cfg.device == "auto" else cfg.device,
        threads=threads,
        videos_in_flight=in_flight,
        video_options=cfg.storage_options,
        resources=Resources(
            num_cpus=cfg.cpus_per_worker,
            num_gpus=num_gpus,
            batch_size=in_flight,
            max_workers=cfg.num_workers,
            tasks_in_flight=1,  # a task is videos_in_flight whole videos: none queued behind another
        ),
    )


def worker_gpus(cfg: ExtractConfig) -> float:
    """GPUs per extraction actor: as given, else one where the cluster has GPUs (asks the cluster)."""
    if cfg.gpus_per_worker is not None:
        return cfg.gpus_per_worker
    return 1.0 if cfg.device != "cpu" and runner.cluster_gpus() > 0 else 0.0


def run(cfg: ExtractConfig) -> dict:
    """Extract every video of ``cfg.input`` not yet in the manifest under ``cfg.output``."""
    source, out = cfg.folder(cfg.input), cfg.folder(cfg.output)
    faces = out.sub("faces")
    if not source.exists():
        raise C.ConfigError(
            f"input {cfg.input!r} does not exist: check the path (and for s3:// the endpoint and credentials)"
        )
    if cfg.overwrite:
        faces.delete()
    catalog = build_catalog(source)
    config_hash = C.config_hash(cfg, OUTPUT_FIELDS)

    def settle(pending: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Entries the catalog already knows are broken go straight to the manifest."""
        broken = pending.filter(pc.is_valid(pending.column("error")))
        rows = [manifest_row(r, config_hash) for r in broken.to_pylist()]
        return (
            pa.Table.from_pylist(rows, schema=R.VIDEOS_SCHEMA),
            pending.filter(pc.is_null(pending.column("error"))),
        )

    # Workers write each video's face shard; the manifest rows (one small row per video) come back
    # and the driver writes them in chunks, so the manifest is not one file per video.
    run = run_step(
        Step(
            name=NAME,
            cfg=cfg,
            todo=catalog,
            # Made once Ray is joined: its GPUs (and so its videos in flight) depend on the cluster.
            stage=Later(FaceExtractStage, lambda: build_stage(cfg, faces, worker_gpus(cfg))),
            folders={"videos": (out.sub("videos"), R.VIDEOS_SCHEMA)},
            fields=OUTPUT_FIELDS,
            marker_on_driver=True,
            flush_rows=cfg.manifest_flush_rows,
            settle=settle,
            sums=("n_frames",),
            say=lambda total, done, todo, broken: (
                f"{total} videos in catalog, {done} already in manifest, {todo} to process, {broken} unusable entries"
            ),
        )
    )
    frames = run.sums["n_frames"]
    steady = run.steady_rate("n_frames")
    return write_stats(
        out,
        outputs.extraction_stats(out, catalog.num_rows),
        {
            "videos_processed": run.processed,
            "frames": frames,
            "seconds": round(run.seconds, 2),
            "frames_per_s": round(frames / run.seconds, 2) if run.seconds > 0 else None,
            # Start-up (Ray, actors loading MTCNN) and the first video, apart from the rate after it.
            "first_video_s": None if run.first_s is None else round(run.first_s, 2),
            "steady_frames_per_s": None if steady is None else round(steady, 2),
        },
        config_hash,
    )


def format_summary(stats: dict) -> str:
    v, f, r = stats["videos"], stats["frames"], stats.get("run", {})
    lines = [
        f"videos: {v['manifest']} in manifest ({v['ok']} ok, {v['failed']} failed) of {v['catalog']} in catalog",
    ]
    for reason, n in v["failed_by_reason"].items():
        lines.append(f"  failed {reason}: {n}")
    lines.append("frames: " + ", ".join(f"{k} {f[k]}" for k in ("decoded", *R.FRAME_FLAGS)))
    frag = stats.get("fragmented_tracks") or {}
    if frag.get("videos"):
        lines.append(
            f"warning: {frag['videos']} video(s) have tracks that are mostly one frame long "
            f"(e.g. {', '.join(frag['examples'][:3])}): "
            "faces are not followed from frame to frame, so they give few windows; lower frame_stride or raise "
            "track_max_gap"
        )
    if r:
        fps, steady = r.get("frames_per_s"), r.get("steady_frames_per_s")
        lines.append(
            f"this run: {r['videos_processed']} videos, {r['frames']} frames in {r['seconds']} s"
            + (f" ({fps} frames/s)" if fps else "")
            + (f"; first video after {r['first_video_s']} s, then {steady} frames/s" if steady else "")
        )
    return "\n".join(lines)
