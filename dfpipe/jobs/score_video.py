"""Score one local video in-process: extraction, windows and scoring without a cluster."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from dfpipe import config as C
from dfpipe import records as R
from dfpipe import storage
from dfpipe.extract.catalog import dataset_part
from dfpipe.extract.faces import pick_device
from dfpipe.faces.crops import FaceCropsStage, with_frames
from dfpipe.jobs import extract as extract_job
from dfpipe.jobs import score as score_job
from dfpipe.score.embed import WindowEmbedStage
from dfpipe.score.explain import explain_png
from dfpipe.score.stage import VideoRule, WindowScoreStage, video_row
from dfpipe.segment.stage import FACE_COLUMNS
from dfpipe.segment.windows import segment_video, window_id
from dfpipe.step import StepTimer

NAME = "score-video"
SUMMARY = "Score one local video file in-process and print its probability of FAKE (no cluster needed)."
POSITIONAL = "video"  # dfpipe score-video FILE.mp4 --model DIR


@dataclass(frozen=True, kw_only=True)
class ScoreVideoConfig(C.RunOptions):
    video: str = C.option(help="a local video file (given first: dfpipe score-video FILE.mp4 --model DIR)")
    model: str = C.option(help="a classifier model directory (from train_classifier)")
    json: bool = C.option(False, "print the full record as JSON")
    explain: str | None = C.option(
        None, "write a PNG explaining the score (face thumbnails, unusable frames, window probabilities)"
    )
    aggregation: Literal["max_track_mean", "mean", "confident"] | None = C.option(
        None, "window -> video aggregation over the tracks that count (default: the model's)"
    )
    clip_low: float = C.option(0.01, "lowest probability reported")
    clip_high: float = C.option(0.99, "highest probability reported")
    prior_fake: float = C.option(
        0.5,
        "share of FAKE the probability assumes (the model is calibrated for 0.5; see 'dfpipe score --help')",
    )
    fallback: Literal["prior", "half", "train"] = C.option(
        "prior", "probability when no window is usable: prior_fake, 0.5, or the training share (train)"
    )
    device: Literal["auto", "cpu", "cuda"] = C.option(
        "auto", "where MTCNN and the embedder run: auto uses a GPU when one is visible"
    )
    extract: dict = C.option(
        {},
        "extraction options over the model's recipe (printed when they differ), e.g. extract.max_frames=120",
    )
    segment: dict = C.option({}, "segmentation options over the model's recipe, e.g. segment.window_stride=4")

    def __post_init__(self):
        score_job.check_overrides(self.extract, self.segment)
        VideoRule.of(self, {})  # checks clip_low/clip_high and prior_fake


def run(cfg: ScoreVideoConfig) -> dict:
    if not os.path.isfile(cfg.video):
        raise C.JobError(f"{cfg.video}: no such file")
    with Scorer(cfg) as scorer:
        return scorer.score(cfg.video, cfg.explain)


class Scorer:
    """A model loaded once, scoring local video files one at a time: ``score-video``, a service, a notebook.

    ``Scorer(model_dir)`` (or a :class:`ScoreVideoConfig`) loads MTCNN, the embedder and the
    classifier; each :meth:`score` call then pays only for the video. The numbers are the bulk job's:
    the model's recipe, the same stages and the same aggregation.
    """

    def __init__(self, cfg: ScoreVideoConfig | str, **options):
        if isinstance(cfg, str):
            cfg = C.build(ScoreVideoConfig, {"video": "", "model": cfg, **options})
        self.cfg = cfg
        started = time.perf_counter()
        model = cfg.folder(cfg.model)  # the model may live on S3
        self.meta, embedder, self.version = score_job.load_model_meta(model)
        ext_options, seg_options, notes = score_job.data_plan(self.meta, cfg.model, cfg)
        for note in notes:
            print(
                f"score-video: differs from the model's recipe, as given: {note}", file=sys.stderr, flush=True
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="dfpipe-score-video-")
        ext_cfg = score_job.extract_config(
            {"cpus_per_worker": os.cpu_count() or 1, "device": cfg.device, **ext_options},  # every core
            self._tmp.name + "/in",
            self._tmp.name + "/out",
            cfg,
        )
        self.seg_cfg = score_job.segment_config(seg_options, self.meta, "unused", "unused", cfg)
        # On a GPU the stage batches the detections of the videos given to score_many together.
        on_gpu = pick_device(cfg.device) == "cuda"
        self.extract = extract_job.build_stage(
            ext_cfg, storage.Folder(self._tmp.name), num_gpus=1.0 if on_gpu else 0.0
        )
        self.extract.setup()
        self.embed = WindowEmbedStage(embedder, device=cfg.device, torch_threads=os.cpu_count() or 1)
        self.embed.setup()
        self.classify = WindowScoreStage(model)
        self.classify.setup()
        self.rule = VideoRule.of(cfg, self.meta)
        self.load_seconds = time.perf_counter() - started

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def score(self, video: str, explain: str | None = None) -> dict:
        """The scoring record of one local video file; raises :class:`~dfpipe.config.JobError` if it
        cannot be scored (unreadable, no frames)."""
        timer = StepTimer()
        with timer("extract"):
            manifest = self.extract.process(_catalog_row(video))
        (record,) = self._finish([(video, manifest)], timer, explain)
        if isinstance(record, C.JobError):
            raise record
        return record

    def score_many(self, videos: list[str]) -> list[dict | C.JobError]:
        """Records of several local files scored together: on a GPU their detections share calls and
        their faces are embedded in shared batches. A file that cannot be scored gives its
        :class:`~dfpipe.config.JobError` in its place; ``seconds`` on each record is the batch's."""
        names = [_catalog_row(v)["video_id"] for v in videos]
        if len(set(names)) != len(names):
            raise ValueError(
                "score_many: two files share a name (their faces would collide); score them apart"
            )
        timer = StepTimer()
        with timer("extract"):
            manifests = self.extract.process_many([_catalog_row(v) for v in videos])
        return self._finish(list(zip(videos, manifests, strict=True)), timer)

    def _finish(
        self, extracted: list[tuple[str, dict]], timer: StepTimer, explain: str | None = None
    ) -> list[dict | C.JobError]:
        """Segment every extracted video, embed and classify all their windows in shared batches, and
        make one record per video; each face shard is removed afterwards."""
        out: dict[int, dict | C.JobError] = {}
        segmented = []  # (position, manifest, track counts, windows, faces)
        try:
            with timer("segment"):
                for k, (video, manifest) in enumerate(extracted):
                    if manifest["status"] != R.STATUS_OK:
                        out[k] = C.JobError(f"{video}: cannot be scored: {manifest['error']}")
                        continue
                    faces = pq.read_table(manifest["faces_uri"])
                    wins, counts = segment_video(
                        faces.select(FACE_COLUMNS),
                        self.seg_cfg.usable_flags,
                        self.seg_cfg.window_spec,
                        manifest["frame_stride"],
                        self.seg_cfg.track_rule,
                    )
                    windows = window_table(wins, manifest["video_id"], manifest)
                    segmented.append((k, manifest, counts, windows, faces if explain else None))
            windows = pa.concat_tables([w for *_, w, _ in segmented]) if segmented else None
            scored: list[dict] = []
            if windows is not None and windows.num_rows:
                with timer("crops"):
                    crops = FaceCropsStage()(with_frames(windows))
                with timer("embed"):
                    codes = self.embed(crops)
                with timer("classify"):
                    scored = self.classify(codes).to_pylist()
        finally:
            for _, manifest in extracted:  # a service scoring many files must not fill the disk
                if manifest.get("faces_uri") and os.path.exists(manifest["faces_uri"]):
                    os.remove(manifest["faces_uri"])
        by_video: dict[str, list[dict]] = {}
        for r in sorted(scored, key=lambda r: (r["video_id"], r["track_id"], r["start_frame"])):
            by_video.setdefault(r["video_id"], []).append(r)
        for k, manifest, counts, _, faces in segmented:
            record = self._record(manifest, counts, by_video.get(manifest["video_id"], []))
            record["seconds"] = timer.rounded()
            if explain:
                window_frames = self.seg_cfg.window_spec.window_len * manifest["frame_stride"]
                explain_png(faces, record, window_frames, explain)
                record["explain"] = explain
            out[k] = record
        return [out[k] for k in range(len(extracted))]

    def _record(self, manifest: dict, counts: dict, scored: list[dict]) -> dict:
        video = {
            **manifest,
            "split": None,
            "n_tracks": counts["n_tracks"],
            "n_tracks_counted": counts["n_tracks_counted"],
            "segment_reason": None if scored else "no usable window",
        }
        row, probs = video_row(
            video, scored, self.meta, self.rule, self.version, datetime.now(UTC).isoformat(timespec="seconds")
        )
        window_records = [
            {"track_id": w["track_id"], "start_frame": w["start_frame"], "prob_fake": float(p)}
            for w, p in zip(scored, probs, strict=True)
        ]
        return {
            **row,
            "n_frames": manifest["n_frames"],
            "n_faces": sum(manifest[f"n_{f}"] for f in R.FRAME_FLAGS if f != R.FLAG_NO_FACE),
            "flags": {f: manifest[f"n_{f}"] for f in R.FRAME_FLAGS},
            "tracks": track_records(counts["tracks"], window_records),
            "windows": window_records,
        }


def _catalog_row(video: str) -> dict:
    return {
        "video_id": os.path.splitext(os.path.basename(video))[0],
        "uri": os.path.abspath(video),
        "filename": os.path.basename(video),
        "part": dataset_part(os.path.dirname(os.path.abspath(video))),
        "label": None,
        "original": None,
        "error": None,
    }


def window_table(wins: list[dict], video_id: str, manifest: dict) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "window_id": window_id(video_id, w["track_id"], w["start_frame"]),
                "video_id": video_id,
                "track_id": w["track_id"],
                "label": None,
                "part": manifest["part"],
                "split": None,
                "start_frame": w["start_frame"],
                "end_frame": w["end_frame"],
                "n_frames": w["n_frames"],
                "frame_stride": manifest["frame_stride"],
                "faces_uri": manifest["faces_uri"],
                "counted": w["counted"],
            }
            for w in wins
        ],
        schema=R.WINDOWS_SCHEMA,
    )


def track_records(tracks: list[dict], windows: list[dict]) -> list[dict]:
    """Each track's evidence and verdict, with the mean probability of its windows (None without any)."""
    out = []
    for t in tracks:
        probs = [w["prob_fake"] for w in windows if w["track_id"] == t["track_id"]]
        out.append(
            {
                "track_id": t["track_id"],
                "n_frames": t["n_frames"],
                "face_px": round(t["face_px"], 1),
                "mean_prob": round(t["mean_prob"], 4),
                "share": round(t["share"], 3),
                "n_windows": t["n_windows"],
                "prob_fake": float(sum(probs) / len(probs)) if probs else None,
                "counted": t["counted"],
                "reason": t["reason"],
            }
        )
    return out


def print_result(record: dict, cfg: ScoreVideoConfig) -> None:
    if cfg.json:
        print(json.dumps(record, indent=2, default=str))
        return
    print(
        f"{record['video_id']}: probability of FAKE {record['prob_fake']:.4f}"
        + (f" ({record['reason']})" if record.get("reason") else "")
    )
    print(
        f"  frames {record['n_frames']}, faces {record['n_faces']}, tracks {record['n_tracks']} "
        f"({record['n_tracks_counted']} counted), windows {record['n_windows']}"
    )
    for t in record["tracks"]:
        p = "no window" if t["prob_fake"] is None else f"FAKE {t['prob_fake']:.3f}"
        verdict = "counted" if t["counted"] else f"not counted: {t['reason']}"
        print(
            f"  track {t['track_id']}: {t['n_frames']} frames, face {t['face_px']:.0f} px, "
            f"prob {t['mean_prob']:.3f}, {p}; {verdict}"
        )
    if record.get("explain"):
        print(f"  explanation: {record['explain']}")
