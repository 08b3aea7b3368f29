"""Segmentation: an extraction output in, ``windows/``, a per-video ``videos/`` summary and ``stats.json`` out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import console, recipe, runner, storage
from dfpipe import records as R
from dfpipe.extract import Resources
from dfpipe.jobs import extract as extract_job
from dfpipe.segment import SegmentStage, flatten_windows
from dfpipe.windows import SplitRule, TrackRule, WindowSpec

log = logging.getLogger(__name__)

NAME = "segment"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Cut each face track into windows of consecutive usable frames and assign leak-free splits."

OUTPUT_FIELDS = recipe.WINDOW_OPTIONS + recipe.SPLIT_OPTIONS


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(C.RunOptions):
    input: str = C.option(help="an extraction output URI (with faces/ and videos/)")
    output: str = C.option(
        help="output URI; windows/, videos/, stats.json and config.json are written under it"
    )
    overwrite: bool = C.option(False, "redo every video instead of only those missing from the output")
    usable_flags: tuple[str, ...] = C.option(
        (R.FLAG_OK, R.FLAG_MULTI_FACE),
        "flags whose frames count as usable for their track (multi_face rows belong to one track each)",
    )
    window_len: int = C.option(16, "frames per window")
    window_stride: int = C.option(8, "frames between the starts of consecutive windows of a run")
    min_len: int | None = C.option(None, "runs shorter than this are dropped (default: window_len)")
    remainder: Literal["drop", "align_end"] = C.option(
        "drop", "a run's tail that no window covers: drop it, or add one last window aligned to the run's end"
    )
    track_min_share: float = C.option(
        0.25,
        "a track counts towards its video's score only if it is on at least this share of the kept frames",
    )
    track_min_mean_prob: float = C.option(0.95, "... and its mean detection probability is at least this")
    track_min_relative_size: float = C.option(
        0.5, "... and its median face is at least this fraction of the main (largest such) face"
    )
    val_parts: tuple[str, ...] = C.option(
        (), "parts (names or ranges like 35-39) for val; with test_parts, parts decide splits"
    )
    test_parts: tuple[str, ...] = C.option((), "parts (names or ranges like 40-49) for test")
    val_fraction: float = C.option(0.15, "share of groups in val when splitting by hash")
    test_fraction: float = C.option(0.15, "share of groups in test when splitting by hash")
    split_salt: str = C.option("dfpipe", "salt of the split hash (change it to draw other splits)")
    videos_per_task: int = C.option(32, "videos per batch handed to a worker")
    num_workers: int | None = C.option(None, "workers (default: as many as the cluster fits)")
    manifest_flush_rows: int = C.option(2000, "summary rows per videos/ file")

    def __post_init__(self):
        bad = sorted(set(self.usable_flags) - set(R.FRAME_FLAGS))
        if bad:
            raise ValueError(
                f"usable_flags: unknown flag(s) {', '.join(bad)}; flags are {', '.join(R.FRAME_FLAGS)}"
            )
        self.window_spec  # noqa: B018 - validates window_len, window_stride, min_len and remainder
        self.split_rule  # noqa: B018
        self.track_rule  # noqa: B018
        if storage.normalize(self.input) == storage.normalize(self.output):
            raise ValueError("output must differ from input")

    @property
    def window_spec(self) -> WindowSpec:
        return WindowSpec(
            self.window_len, self.window_stride, self.min_len or self.window_len, self.remainder
        )

    @property
    def track_rule(self) -> TrackRule:
        return TrackRule(self.track_min_share, self.track_min_mean_prob, self.track_min_relative_size)

    @property
    def split_rule(self) -> SplitRule:
        return SplitRule(
            self.val_parts, self.test_parts, self.val_fraction, self.test_fraction, self.split_salt
        )


def layout(output: str) -> dict[str, str]:
    return {
        "windows": storage.join(output, "windows"),
        "tracks": storage.join(output, "tracks"),
        "videos": storage.join(output, "videos"),
        "stats": storage.join(output, "stats.json"),
        "config": storage.join(output, "config.json"),
    }


def read_summary(
    output: str, options: storage.StorageOptions | None = None, columns: list[str] | None = None
):
    return storage.read_parquet_dir(
        layout(output)["videos"], columns=columns, schema=R.SEGMENTS_SCHEMA, options=options
    )


def read_windows(
    output: str, options: storage.StorageOptions | None = None, columns: list[str] | None = None
):
    return storage.read_parquet_dir(
        layout(output)["windows"], columns=columns, schema=R.WINDOWS_SCHEMA, options=options
    )


def read_tracks(output: str, options: storage.StorageOptions | None = None, columns: list[str] | None = None):
    return storage.read_parquet_dir(
        layout(output)["tracks"], columns=columns, schema=R.TRACKS_SCHEMA, options=options
    )


def run(cfg: SegmentConfig) -> dict:
    started = time.monotonic()
    opts = cfg.storage_options
    paths = layout(cfg.output)
    if not storage.exists(extract_job.layout(cfg.input)["videos"], opts):
        raise C.ConfigError(
            f"{cfg.input!r} is not an extraction output (no videos/ manifest): run 'dfpipe extract' first"
        )
    config_hash = C.config_hash(cfg, OUTPUT_FIELDS)
    if cfg.overwrite:
        for key in ("videos", "windows", "tracks"):
            storage.delete(paths[key], opts)
    done = read_summary(cfg.output, opts, columns=["video_id", "config_hash"])
    C.refuse_other_settings(cfg, OUTPUT_FIELDS, done, paths["config"])
    source = (
        storage.read_json(extract_job.layout(cfg.input)["config"], opts)
        if storage.exists(extract_job.layout(cfg.input)["config"], opts)
        else {}
    )
    storage.write_json(
        paths["config"],
        {
            "job": NAME,
            "config": C.to_dict(cfg),
            "config_hash": config_hash,
            "source": {"uri": storage.normalize(cfg.input), "config_hash": source.get("config_hash")},
        },
        opts,
    )

    manifest = extract_job.read_manifest(
        cfg.input,
        opts,
        columns=["video_id", "label", "part", "original", "status", "error", "frame_stride", "faces_uri"],
    )
    pending = manifest.filter(pc.invert(pc.is_in(manifest.column("video_id"), done.column("video_id"))))
    console.say(
        f"segment: {manifest.num_rows} videos in manifest, {done.num_rows} already segmented, {pending.num_rows} to do"
    )

    # Windows, tracks and summary rows of the same videos share a chunk name; the summary file is
    # written last and marks the chunk done, so a crash leaves at most files without a summary (removed here).
    writer = storage.ChunkedParquetWriter(
        {
            "windows": (paths["windows"], R.WINDOWS_SCHEMA),
            "tracks": (paths["tracks"], R.TRACKS_SCHEMA),
            "videos": (paths["videos"], R.SEGMENTS_SCHEMA),
        },
        "video_id",
        opts,
        cfg.manifest_flush_rows,
    )
    orphans = writer.remove_orphans()
    if orphans:
        log.warning("removed %d windows files left without their summary by an interrupted run", orphans)
    frames = 0
    if pending.num_rows:
        runner.ensure_ray(cfg.ray_address)
        stage = SegmentStage(
            spec=cfg.window_spec,
            split_rule=cfg.split_rule,
            usable_flags=cfg.usable_flags,
            track_rule=cfg.track_rule,
            config_hash=config_hash,
            storage_options=opts,
            resources=Resources(num_cpus=1, batch_size=cfg.videos_per_task, max_workers=cfg.num_workers),
        )
        ds = runner.map_stage(runner.dataset_from_table(pending, rows_per_block=cfg.videos_per_task), stage)
        progress = console.Progress("segment", pending.num_rows, "videos")
        for table in runner.iter_tables(ds):
            summary, windows, tracks = flatten_windows(table)
            frames += int(pc.sum(summary.column("n_frames")).as_py() or 0)
            writer.add(windows=windows, tracks=tracks, videos=summary)
            progress.update(progress.done + summary.num_rows, frames=frames)
        progress.close()
    writer.flush()
    stats = compute_stats(cfg.output, opts)
    elapsed = time.monotonic() - started
    stats["run"] = {
        "videos_processed": int(pending.num_rows),
        "frame_rows": frames,
        "seconds": round(elapsed, 2),
        "frames_per_s": round(frames / elapsed, 1) if elapsed > 0 else None,
    }
    stats["config_hash"] = config_hash
    storage.write_json(paths["stats"], stats, opts)
    return stats


def compute_stats(output: str, options: storage.StorageOptions | None) -> dict:
    s = read_summary(output, options).to_pandas()
    w = read_windows(output, options, columns=["window_id", "video_id", "split", "label"]).to_pandas()
    reasons = s.reason.dropna().map(lambda r: r.split(":", 1)[0]).value_counts().to_dict()
    splits = {}
    for split in R.SPLITS:
        sv, sw = s[s.split == split], w[w.split == split]
        splits[split] = {
            "videos": int(len(sv)),
            "videos_with_windows": int((sv.n_windows > 0).sum()),
            "fake": int((sv.label == R.LABEL_FAKE).sum()),
            "real": int((sv.label == R.LABEL_REAL).sum()),
            "windows": int(len(sw)),
        }
    return {
        "videos": int(len(s)),
        "videos_with_windows": int((s.n_windows > 0).sum()),
        "no_window_by_reason": {str(k): int(v) for k, v in sorted(reasons.items())},
        "windows": int(len(w)),
        "tracks": int(s.n_tracks.sum()),
        "tracks_counted": int(s.n_tracks_counted.fillna(0).sum()),
        "runs": int(s.n_runs.sum()),
        "short_runs": int(s.n_short_runs.sum()),
        "frames_dropped": {r: int(s[f"dropped_{r}"].sum()) for r in R.DROP_REASONS},
        "splits": splits,
    }


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
