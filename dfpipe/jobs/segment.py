"""Segmentation: an extraction output in, ``windows/``, a per-video ``videos/`` summary and ``stats.json`` out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dfpipe import config as C
from dfpipe import outputs, storage
from dfpipe import records as R
from dfpipe.segment.stage import SegmentStage, segment_tables
from dfpipe.segment.windows import SplitRule, TrackRule, WindowSpec
from dfpipe.stage import Resources
from dfpipe.step import Step, run_step, write_stats

log = logging.getLogger(__name__)

NAME = "segment"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Cut each face track into windows of consecutive usable frames and assign leak-free splits."


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(C.RunOptions, SplitRule, TrackRule, WindowSpec):
    """The segment job: where from and to, how it runs, and the stage's option groups (windows, the
    track rule and the splits: :mod:`dfpipe.segment.windows`, inherited so that every key stays flat;
    listed last to first, as a dataclass takes the fields of its last base first)."""

    input: str = C.option(help="an extraction output URI (with faces/ and videos/)")
    output: str = C.option(
        help="output URI; windows/, videos/, stats.json and config.json are written under it"
    )
    overwrite: bool = C.option(False, "redo every video instead of only those missing from the output")
    usable_flags: tuple[str, ...] = C.option(
        (R.FLAG_OK, R.FLAG_MULTI_FACE),
        "flags whose frames count as usable for their track (multi_face rows belong to one track each)",
        rows=True,
    )
    videos_per_task: int = C.option(32, "videos per batch handed to a worker")
    num_workers: int | None = C.option(None, "workers (default: as many as the cluster fits)")
    manifest_flush_rows: int = C.option(2000, "summary rows per videos/ file")

    def check(self) -> None:
        bad = sorted(set(self.usable_flags) - set(R.FRAME_FLAGS))
        if bad:
            raise ValueError(
                f"usable_flags: unknown flag(s) {', '.join(bad)}; flags are {', '.join(R.FRAME_FLAGS)}"
            )
        if storage.normalize(self.input) == storage.normalize(self.output):
            raise ValueError("output must differ from input")

    @property
    def window_spec(self) -> WindowSpec:
        return C.part(WindowSpec, self)

    @property
    def track_rule(self) -> TrackRule:
        return C.part(TrackRule, self)

    @property
    def split_rule(self) -> SplitRule:
        return C.part(SplitRule, self)


# Fields that change the rows written (declared ``rows=True``): the window options, which a model
# records as its recipe (:mod:`dfpipe.jobs.recipe`), and the split rule.
OUTPUT_FIELDS = C.row_fields(SegmentConfig)


def run(cfg: SegmentConfig) -> dict:
    extraction, out = cfg.folder(cfg.input), cfg.folder(cfg.output)
    if not extraction.exists("videos"):
        raise C.ConfigError(
            f"{cfg.input!r} is not an extraction output (no videos/ manifest): run 'dfpipe extract' first"
        )
    source = extraction.read_json("config.json") if extraction.exists("config.json") else {}
    manifest = outputs.read_manifest(
        extraction,
        columns=["video_id", "label", "part", "original", "status", "error", "frame_stride", "faces_uri"],
    )
    stage = SegmentStage(
        spec=cfg.window_spec,
        split_rule=cfg.split_rule,
        usable_flags=cfg.usable_flags,
        track_rule=cfg.track_rule,
        config_hash=C.config_hash(cfg, OUTPUT_FIELDS),
        storage_options=cfg.storage_options,
        resources=Resources(num_cpus=1, batch_size=cfg.videos_per_task, max_workers=cfg.num_workers),
    )
    # Each worker writes the windows, tracks and summary rows of its batch as one chunk, the summary
    # last: a crash leaves at most windows without a summary, removed by the next run.
    run = run_step(
        Step(
            name=NAME,
            cfg=cfg,
            todo=manifest,
            stage=stage,
            folders=outputs.segmentation_folders(out),
            fields=OUTPUT_FIELDS,
            split=segment_tables,
            sums=("n_frames",),
            rows_per_block=cfg.videos_per_task,
            config={
                "source": {"uri": storage.normalize(cfg.input), "config_hash": source.get("config_hash")}
            },
            say=lambda total, done, todo, _: (
                f"{total} videos in manifest, {done} already segmented, {todo} to do"
            ),
        )
    )
    frames = run.sums["n_frames"]
    stats = outputs.segmentation_stats(out)
    return write_stats(
        out,
        stats,
        {
            "videos_processed": run.processed,
            "frame_rows": frames,
            "seconds": round(run.seconds, 2),
            "frames_per_s": round(frames / run.seconds, 1) if run.seconds > 0 else None,
        },
        run.config_hash,
    )


def format_summary(stats: dict) -> str:
    lines = [
        f"videos: {stats['videos']} ({stats['videos_with_windows']} with windows); windows: {stats['windows']}; "
        f"runs: {stats['runs']} ({stats['short_runs']} too short); tracks: {stats['tracks']} "
        f"({stats['tracks_counted']} count towards scores)",
    ]
    for reason, n in stats["no_window_by_reason"].items():
        lines.append(f"  no window, {reason}: {n}")
    lines.append("frames dropped: " + ", ".join(f"{k} {v}" for k, v in stats["frames_dropped"].items() if v))
    lines.append("splits:")
    for split, d in stats["splits"].items():
        lines.append(
            f"  {split:<5} {d['videos']:>6} videos ({d['real']} real, {d['fake']} fake), {d['windows']} windows"
        )
    for split in ("val", "test"):
        if stats["splits"][split]["videos_with_windows"] == 0 and stats["videos_with_windows"]:
            lines.append(f"warning: the {split} split has no windows; adjust val/test parts or fractions")
    r = stats.get("run")
    if r:
        lines.append(
            f"this run: {r['videos_processed']} videos, {r['frame_rows']} frames in {r['seconds']} s"
        )
    return "\n".join(lines)
