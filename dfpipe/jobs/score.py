"""Bulk scoring: every video of a dataset to a calibrated, clipped probability of FAKE.

Extraction and segmentation run first for videos not yet done (their outputs are reused); only
videos with no score for this model version are scored, so a rerun, or a new dump under the same
output, touches only what is new.

The run is a declaration, :data:`SCORE` (at the end of this module): its steps in order, each a
function below whose parameters name what it reads; docs/score.md prints the list.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import posixpath
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import console, outputs, runner, storage
from dfpipe import records as R
from dfpipe.jobs import evaluate, recipe
from dfpipe.jobs import extract as extract_job
from dfpipe.jobs import segment as segment_job
from dfpipe.jobs._codes import cache_for, embed_videos, faces_version, segmented_videos
from dfpipe.pipeline import Pipeline, Task
from dfpipe.score import review
from dfpipe.score.stage import (
    VIDEO_COLUMNS,
    VideoRule,
    VideoScoreStage,
    WindowLogitsStage,
    score_tables,
)
from dfpipe.stage import Resources
from dfpipe.step import Step, run_step
from dfpipe.train import modelio
from dfpipe.train.calibration import fit_calibration

log = logging.getLogger(__name__)

NAME = "score"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Score every video of a dataset (or an extraction output) to a calibrated probability of FAKE."


@dataclass(frozen=True, kw_only=True)
class ScoreConfig(C.RunOptions):
    input: str = C.option(
        help="a dataset URI (extracted first, reusing what exists) or an extraction output URI"
    )
    model: str = C.option(help="a classifier model directory (from train_classifier; carries its embedder)")
    output: str = C.option(
        help="output URI: scores/, window_scores/, submission.csv, report/ and the intermediate steps"
    )
    all: bool = C.option(False, "score every video again, even those already scored by this model version")
    aggregation: Literal["max_track_mean", "mean", "confident"] | None = C.option(
        None,
        "window -> video over the tracks that count: max_track_mean (the most suspicious person decides), mean, "
        "or confident (DFDC winner's rule); default: the rule the model was validated with",
    )
    clip_low: float = C.option(0.01, "lowest probability written (one confident mistake dominates log loss)")
    clip_high: float = C.option(0.99, "highest probability written")
    prior_fake: float = C.option(
        0.5,
        "share of FAKE videos the probabilities assume: the model is calibrated for 0.5 (balanced); give the "
        "share expected in what you score to shift every probability and the fallback by Bayes' rule",
    )
    fallback: Literal["prior", "half", "train"] = C.option(
        "prior",
        "probability of videos with no usable window: prior_fake (default; DFDC practice is 0.5), 0.5, or "
        "the share of FAKE among the training windows (train)",
    )
    calibrate: bool = C.option(
        False,
        "fit the calibration (temperature and offset) again on this dataset's labelled videos (log loss before "
        "and after is printed and kept in stats.json); every video is then scored again with it",
    )
    extract: dict = C.option(
        {},
        "extraction options; the model's recipe (model.json) sets every option that changes rows, and one "
        "given here overrides it knowingly (the run prints it), e.g. extract.max_frames=120 extract.cpus_per_worker=2",
    )
    segment: dict = C.option(
        {}, "segmentation options over the model's recipe, printed the same way, e.g. segment.window_stride=4"
    )
    evaluate: bool = C.option(True, "write an evaluation report when labels are known")
    review_top: int = C.option(
        500,
        "videos with a full row on the review page (report/index.html: faces, timeline, unusable frames): "
        "the most suspicious, then labelled mistakes up to as many again",
    )
    review_rows: int = C.option(
        10000,
        "videos listed on the review page, the most suspicious first (about 400 bytes each); the rest are "
        "counted, and all are in scores/",
    )
    num_workers: int | None = C.option(None, "workers per stage (default: as many as the cluster fits)")
    use_gpu: bool | None = C.option(None, "use GPUs (default: when the cluster has them)")

    def __post_init__(self):
        VideoRule.of(self, {})  # checks clip_low/clip_high and prior_fake
        check_overrides(self.extract, self.segment)
        if self.review_top < 0 or self.review_rows < 0:
            raise ValueError("review_top and review_rows must be >= 0 (0 lists no video on the review page)")

    def video_rule(self, meta: dict) -> VideoRule:
        return VideoRule.of(self, meta)


# Options a scoring run may give for its extraction and segmentation: all but what the run fixes
# (and the splits, which come from the model).
FIXED = {"input", "output", "overwrite", *C.RUN_OPTIONS}
EXTRACT_ALLOWED = set(C.fields_of(extract_job.ExtractConfig)) - FIXED
SEGMENT_ALLOWED = set(C.fields_of(segment_job.SegmentConfig)) - FIXED - set(recipe.SPLIT_OPTIONS)


def check_overrides(extract: dict, segment: dict) -> None:
    bad = sorted(set(extract) - EXTRACT_ALLOWED)
    if bad:
        raise ValueError(
            f"extract.{bad[0]} cannot be set for scoring; extraction options are: "
            + ", ".join(sorted(EXTRACT_ALLOWED))
        )
    bad = sorted(set(segment) - SEGMENT_ALLOWED)
    if bad:
        raise ValueError(
            f"segment.{bad[0]} cannot be set for scoring (splits come from the model); "
            f"segmentation options are: {', '.join(sorted(SEGMENT_ALLOWED))}"
        )


def load_model_meta(model: storage.Folder) -> tuple[dict, storage.Folder, str]:
    """The classifier's meta, its embedder's folder and the combined model version."""
    embedder = model.sub("embedder")
    try:
        meta = modelio.read_meta(model)
        modelio.read_meta(embedder)
    except modelio.ModelError as exc:
        raise C.ConfigError(f"--model: {exc}") from None
    if meta.get("architecture") != "window_classifier":
        raise C.ConfigError(
            f"--model {model.uri} holds a {meta.get('architecture')} model; give a train_classifier output"
        )
    version = hashlib.sha256(
        (modelio.model_version(model) + modelio.model_version(embedder)).encode()
    ).hexdigest()[:12]
    return meta, embedder, version


def data_plan(meta: dict, model: str, cfg) -> tuple[dict, dict, list[str]]:
    """Extraction and segmentation options for scoring with this model: its recipe, then ``cfg``'s
    ``extract``/``segment`` overrides; and one note per option that differs from the recipe."""
    try:
        rec = recipe.of_model(meta, model)
    except recipe.RecipeError as exc:
        raise C.ConfigError(f"--model: {exc}") from None
    options, notes = recipe.resolve(rec, {"extract": cfg.extract, "segment": cfg.segment})
    return options["extract"], options["segment"], notes


def extract_config(chosen: dict, input_uri: str, output: str, cfg) -> extract_job.ExtractConfig:
    """The scoring extraction: the ``chosen`` options (the recipe's, and the user's), run where ``cfg`` runs."""
    workers = {"num_workers": getattr(cfg, "num_workers", None)}
    values = {**workers, **chosen, **C.run_options_of(cfg), "input": input_uri, "output": output}
    return C.build(extract_job.ExtractConfig, values)


def check_extraction(
    extraction: storage.Folder, ext_cfg: extract_job.ExtractConfig, given: bool = True
) -> None:
    """Stop at start-up if the faces in ``extraction`` were extracted with other row-changing options
    than the ones scoring uses (the model's recipe, plus what the user overrode). ``given``: the
    user passed it as input (else it is this output's own extraction, left by an earlier run)."""
    uri = extraction.uri
    fix = (
        "Score the dataset itself (it is extracted with the recipe), or give these as extract.OPTION=VALUE "
        "to score with them knowingly"
        if given
        else "an earlier scoring run into this --output extracted them for another recipe: choose another --output"
    )
    info = extraction.read_json("config.json")
    expected = {k: C.to_dict(ext_cfg)[k] for k in recipe.EXTRACT_OPTIONS}
    diffs = recipe.differences(expected, recipe.with_added(info.get("config", {})))
    if diffs:
        raise C.ConfigError(
            f"{uri} holds faces extracted with options that differ from the model's recipe: "
            f"{recipe.describe(diffs, 'extract', 'recipe', 'extraction')}. {fix}"
        )
    expected_hash = C.config_hash(ext_cfg, extract_job.OUTPUT_FIELDS)
    hashes = outputs.read_manifest(extraction, columns=["config_hash"]).column("config_hash")
    stale = pc.sum(pc.not_equal(hashes, expected_hash)).as_py() or 0
    if stale:
        raise C.ConfigError(
            f"{uri}: {stale} videos were extracted with other options than its config.json says (an earlier "
            "run with other settings); re-extract them with --overwrite before scoring"
        )


def segment_config(chosen: dict, meta: dict, extract_uri: str, output: str, cfg) -> segment_job.SegmentConfig:
    """The scoring segmentation: the ``chosen`` window options (the recipe's, and the user's) and the
    model's splits, in a folder named by their hash (so models with other recipes never share windows)."""
    split = meta.get("segment", {}).get("split", {})
    values = {
        **{k: split[k] for k in recipe.SPLIT_OPTIONS if k in split},
        **chosen,
        **C.run_options_of(cfg),
        "input": extract_uri,
        "output": storage.join(output, "segment"),  # named by its hash below
    }
    seg = C.build(segment_job.SegmentConfig, values)
    digest = C.config_hash(seg, segment_job.OUTPUT_FIELDS)
    return dataclasses.replace(seg, output=storage.join(output, f"segment-{digest}"))


def model_splits(segmentation: storage.Folder | None) -> pa.Table:
    """``video_id``, ``learned_split``: the split of each video the model was trained and validated
    on, or tested against (``segmentation``, its segmentation's summary; None where the model names
    none), as Arrow columns to join on, never a Python object per video. No rows (every scored video
    unsplit) when that output is gone."""
    table = None
    try:
        if segmentation is not None:
            table = outputs.read_summary(segmentation, columns=["video_id", "split"])
    except (OSError, ValueError) as exc:
        log.warning(
            "the model's segmentation %s cannot be read (%s): every video is reported unsplit",
            segmentation.uri,
            exc,
        )
    if table is None:
        return pa.table({"video_id": pa.array([], pa.string()), "learned_split": pa.array([], pa.string())})
    return pa.table(
        {"video_id": table.column("video_id"), "learned_split": table.column("split").cast(pa.string())}
    )


def load_model(cfg: ScoreConfig) -> tuple[storage.Folder, dict, storage.Folder, str]:
    """Step 1: the classifier (``--model``), its meta, its embedder and the combined model version."""
    model = cfg.folder(cfg.model)
    return (model, *load_model_meta(model))


def plan_data(
    cfg: ScoreConfig, meta: dict
) -> tuple[extract_job.ExtractConfig | None, storage.Folder, segment_job.SegmentConfig, storage.Folder]:
    """Step 2: the extraction and segmentation this scoring needs, both following the model's recipe
    (options given on purpose are printed). An extraction output given as input is used as it is
    (no extraction config), else the dataset is extracted under OUTPUT/extract, reusing what an
    earlier run did there; faces made otherwise stop the run here, before any work. Returns the
    extraction's config and folder, and the segmentation's."""
    source, out = cfg.folder(cfg.input), cfg.folder(cfg.output)
    if not source.exists():
        raise C.ConfigError(f"input {cfg.input!r} does not exist")
    ext_options, seg_options, notes = data_plan(meta, cfg.model, cfg)
    given_faces = outputs.is_extraction(source)
    extraction = source if given_faces else out.sub("extract")
    ext_cfg = extract_config(ext_options, cfg.input, out.join("extract"), cfg)
    if given_faces or outputs.is_extraction(extraction):
        check_extraction(extraction, ext_cfg, given=given_faces)
    for note in notes:
        console.say(f"score: differs from the model's recipe, as given: {note}")
    seg_cfg = segment_config(seg_options, meta, extraction.uri, cfg.output, cfg)
    return (None if given_faces else ext_cfg), extraction, seg_cfg, cfg.folder(seg_cfg.output)


def pending_videos(
    cfg: ScoreConfig, extraction: storage.Folder, version: str
) -> tuple[pa.Table, pa.Table, int, bool]:
    """Step 5: the manifest, the videos that need a score from this model version, how many have
    one, and whether this version's scores are all made again (``all`` or ``calibrate``: removed
    when scoring starts)."""
    manifest = outputs.read_manifest(extraction, columns=[*VIDEO_COLUMNS, "n_frames"])
    scored = outputs.read_scores(cfg.folder(cfg.output), version, columns=["video_id", "model_version"])
    rescore_all = cfg.all or cfg.calibrate  # a calibration fitted now applies to every video
    if cfg.calibrate and not cfg.all and scored.num_rows:
        console.say("score: calibrate=true: every video is scored again with the calibration fitted now")
    if rescore_all:
        return manifest, manifest, 0, scored.num_rows > 0
    done = pc.is_in(manifest.column("video_id"), scored.column("video_id"))
    return manifest, manifest.filter(pc.invert(done)), scored.num_rows, False


def embed_pending(
    cfg: ScoreConfig, pending: pa.Table, segment: storage.Folder, embedder: storage.Folder
) -> storage.Folder:
    """Step 6: the codes of every window of the pending videos, in the embedding cache (returned)."""
    cache = cache_for(segment, embedder)
    with_windows = segmented_videos(segment, pending.column("video_id"))
    if with_windows.num_rows:
        runner.ensure_ray(cfg.ray_address, cfg.capacity_wait_s)
        use_gpu = runner.use_gpus(cfg.use_gpu)
        embed_videos(with_windows, segment, embedder, cache, use_gpu, 128, faces_version(segment))
    return cache


def score_inputs(pending: pa.Table, segment: storage.Folder, cache: storage.Folder, meta: dict) -> pa.Table:
    """Step 7: the rows :class:`dfpipe.score.stage.VideoScoreStage` scores: each pending video's manifest fields,
    its segmentation, the split the model learned it in and the cache chunk of its codes (one small
    row per video: the driver never holds a window)."""
    summary = outputs.read_summary(
        segment, columns=["video_id", "split", "n_tracks", "n_tracks_counted", "reason"]
    ).rename_columns(["video_id", "seg_split", "seg_n_tracks", "n_tracks_counted", "segment_reason"])
    codes = outputs.with_chunks(cache.sub("videos"), R.EMBEDDED_VIDEOS_SCHEMA, ["video_id"])
    uri = meta.get("segment", {}).get("uri")  # the model's segmentation, in the same storage
    learned = model_splits(storage.Folder(uri, segment.options) if uri else None)
    todo = pending.select(list(VIDEO_COLUMNS)).join(summary, "video_id", join_type="left outer")
    todo = todo.join(codes, "video_id", join_type="left outer")
    todo = todo.join(learned, "video_id", join_type="left outer")
    # Arrow's joins keep no row order: chunk, then video, makes the score files the same every run.
    return todo.sort_by([("chunk", "ascending"), ("video_id", "ascending")])


def classify(
    cfg: ScoreConfig,
    model: storage.Folder,
    meta: dict,
    version: str,
    cache: storage.Folder,
    todo: pa.Table,
    manifest: pa.Table,
    already: int,
    replace: bool,
) -> dict | None:
    """Step 8: one row per pending video (``todo``), windows or not, written with its window scores
    by the workers. ``already``: videos this version scored before; ``replace``: its scores are
    made again. With ``calibrate=true`` the calibration is fitted first (returned)."""
    if replace:
        remove_version(cfg.folder(cfg.output), version)
    rule = cfg.video_rule(meta)
    scorer = VideoScoreStage(
        model,
        cache.sub("windows"),
        meta,
        rule,
        version,
        datetime.now(UTC).isoformat(timespec="seconds"),
        resources=Resources(num_cpus=1, batch_size=VIDEOS_PER_BATCH, max_workers=cfg.num_workers),
    )
    calibration = None
    if cfg.calibrate:
        calibration = refit_calibration(todo, scorer, meta, rule, cfg.ray_address)
        scorer.meta = {**meta, "temperature": calibration["temperature"], "offset": calibration["offset"]}
    run_step(
        Step(
            name=NAME,
            cfg=cfg,
            todo=todo,
            stage=scorer,
            folders=outputs.scoring_folders(cfg.folder(cfg.output)),
            split=score_tables,
            salt=version,
            redo=True,  # ``todo`` is already what this model version has not scored
            rows_per_block=VIDEOS_PER_BATCH,
            config={"model_version": version, "recipe": meta["recipe"]},
            say=lambda total, *_: (
                f"{manifest.num_rows} videos, {already} already scored by model {version}, {total} to score"
            ),
        )
    )
    return calibration


def write_outputs(
    cfg: ScoreConfig, version: str, pending: pa.Table, calibration: dict | None, seconds: dict
) -> tuple[dict, set]:
    """Step 9: the submission (every video this model version scored) and ``stats.json`` (counts,
    fallbacks by reason, rates and each step's seconds so far); returns those and the labels seen."""
    out = cfg.folder(cfg.output)
    write_started = time.perf_counter()
    all_scores = outputs.read_scores(out, version)
    write_submission(all_scores, out)
    step_seconds = {**seconds, "write": time.perf_counter() - write_started}
    elapsed = sum(step_seconds.values())
    n_scored = pending.num_rows
    n_frames = int(pc.sum(pending.column("n_frames")).as_py() or 0)
    stats = {
        "model_version": version,
        "videos": all_scores.num_rows,
        "scored_this_run": n_scored,
        "fallback_by_reason": _reasons(all_scores),
        "seconds": round(elapsed, 2),
        "videos_per_s": round(n_scored / elapsed, 3) if elapsed else None,
        "frames_per_s": round(n_frames / elapsed, 2) if elapsed else None,
        "step_seconds": {k: round(v, 3) for k, v in step_seconds.items()},
    }
    if calibration:
        stats["calibration"] = calibration
    out.write_json("stats.json", stats)
    return stats, {x for x in all_scores.column("label").to_pylist() if x is not None}


def evaluation(cfg: ScoreConfig, version: str, labels: set) -> dict | None:
    """Step 10: the evaluation report (``report/``), where both classes are labelled."""
    if cfg.evaluate and labels == {R.LABEL_REAL, R.LABEL_FAKE}:
        out = cfg.folder(cfg.output)
        return evaluate.write_report(out, out.sub("report"), version)
    if cfg.evaluate and labels:
        console.say("score: evaluation skipped: the labelled videos are all of one class")
    return None


def write_review(
    cfg: ScoreConfig,
    meta: dict,
    version: str,
    stats: dict,
    report: dict | None,
    extraction: storage.Folder,
    segment: storage.Folder,
) -> str:
    """Step 11: the review page, ``report/index.html`` (:mod:`dfpipe.score.review`). The driver reads
    the score rows' table columns; the workers read the faces of the videos with full rows, write
    their thumbnails and return their details. Returns the page's URI.

    A run that scored nothing leaves a page made from the same scores and options as it is (a no-op
    rerun stays a no-op: ``report/review.json`` says what the page was made from)."""
    out = cfg.folder(cfg.output)
    pages = out.sub("report")
    uri = pages.join("index.html")
    made_from = {
        "model_version": version,
        "videos": stats["videos"],
        "review_top": cfg.review_top,
        "review_rows": cfg.review_rows,
        "evaluated": report is not None,
    }
    if not stats["scored_this_run"] and pages.exists("index.html") and pages.exists("review.json"):
        if pages.read_json("review.json") == made_from:
            console.say(f"score: review page up to date: {uri}")
            return uri
    scores = outputs.read_scores(out, version, columns=[*review.TABLE_COLUMNS, "model_version"])
    chosen = review.selection(scores, cfg.review_top)
    listed = review.listed(scores, cfg.review_rows, chosen)
    details = review_details(cfg, meta, version, chosen, extraction, segment, pages)
    labelled = pc.sum(pc.is_valid(scores.column("label"))).as_py() or 0
    fallback = sum(stats["fallback_by_reason"].values())
    counts = {
        "videos scored by this model": stats["videos"],
        "scored by the run that made this page": stats["scored_this_run"],
        "labelled": labelled,
        "with the fallback probability (no usable window, failed extraction)": fallback,
        **{f"  fallback, {k}": n for k, n in stats["fallback_by_reason"].items()},
        "with a full row below": len(details),
        "scoring rule": f"{cfg.video_rule(meta).aggregation}, clipped to [{cfg.clip_low}, {cfg.clip_high}]",
    }
    page = review.page(
        model_version=version,
        recipe=meta.get("recipe", {}),
        counts=counts,
        report=report,
        rows=listed.select(list(review.TABLE_COLUMNS)),
        details=details,
        left_out=scores.num_rows - listed.num_rows,
        top=cfg.review_top,
    )
    pages.write_text("index.html", page)
    pages.write_json("review.json", made_from)
    console.say(f"score: review page: {uri} ({len(page) // 1024} KB, {len(details)} videos with full rows)")
    return uri


def review_details(
    cfg: ScoreConfig,
    meta: dict,
    version: str,
    chosen: pa.Table,
    extraction: storage.Folder,
    segment: storage.Folder,
    report: storage.Folder,
) -> dict[str, str]:
    """The detail fragment of each chosen video, made by :class:`~dfpipe.score.review.ReviewStage`
    on the workers (one small row per video goes out, one HTML fragment comes back)."""
    if not chosen.num_rows:
        return {}
    ids = chosen.column("video_id")

    def only_chosen(table: pa.Table) -> pa.Table:
        return table.filter(pc.is_in(table.column("video_id"), ids))

    manifest = outputs.read_manifest(
        extraction, columns=["video_id", "status", "error", "faces_uri", "frame_stride"]
    )
    tracks = outputs.with_chunks(segment.sub("videos"), R.SEGMENTS_SCHEMA, ["video_id"])
    scored = outputs.with_chunks(
        cfg.folder(cfg.output).sub("scores"), R.SCORES_SCHEMA, ["video_id", "model_version"]
    )
    scored = scored.filter(pc.equal(scored.column("model_version"), version)).select(["video_id", "chunk"])
    rows = (
        chosen.select(["video_id", "prob_fake"])
        .join(only_chosen(manifest), "video_id", join_type="left outer")
        .join(
            only_chosen(tracks).rename_columns(["video_id", "tracks_chunk"]),
            "video_id",
            join_type="left outer",
        )
        .join(
            only_chosen(scored).rename_columns(["video_id", "scores_chunk"]),
            "video_id",
            join_type="left outer",
        )
    )
    seg = segment.read_json("config.json")["config"]
    stage = review.ReviewStage(
        tracks=segment.sub("tracks"),
        window_scores=cfg.folder(cfg.output).sub("window_scores"),
        images=report.sub(review.IMAGES),
        model_version=version,
        window_len=int(seg["window_len"]),
        usable_flags=tuple(seg["usable_flags"]),
        aggregation=cfg.video_rule(meta).aggregation,
        resources=Resources(num_cpus=1, batch_size=REVIEW_BATCH, max_workers=cfg.num_workers),
    )
    runner.ensure_ray(cfg.ray_address, cfg.capacity_wait_s)
    details: dict[str, str] = {}
    for table in runner.map_rows(rows, stage, REVIEW_BATCH):
        details.update(
            zip(table.column("video_id").to_pylist(), table.column("detail").to_pylist(), strict=True)
        )
    return details


REVIEW_BATCH = 16
VIDEOS_PER_BATCH = 64


def refit_calibration(
    todo: pa.Table, scorer: VideoScoreStage, meta: dict, rule: VideoRule, ray_address
) -> dict:
    """``calibrate=true``: the temperature and offset that minimise the video log loss of this
    dataset's labelled videos under the scoring rule (counted windows, the prior shift;
    :func:`dfpipe.train.calibration.fit_calibration`), said out loud. Only the labelled videos'
    window logits come back to the driver (five compact columns)."""
    labelled = todo.filter(pc.and_(pc.is_valid(todo.column("label")), pc.is_valid(todo.column("chunk"))))
    current = (float(meta.get("temperature", 1.0)), float(meta.get("offset", 0.0)))
    tables = []
    if labelled.num_rows:
        runner.ensure_ray(ray_address)
        stage = WindowLogitsStage(scorer)
        tables = [t for t in runner.map_rows(labelled, stage, VIDEOS_PER_BATCH) if t.num_rows]
    logits = pa.concat_tables(tables) if tables else None
    if logits is not None:
        logits = logits.filter(pc.fill_null(logits.column("counted"), True))
    n_videos = len(set(logits.column("video_id").to_pylist())) if logits is not None else 0
    ys = np.asarray(logits.column("label").to_pylist()) if logits is not None else np.zeros(0)
    model = {"model_temperature": current[0], "model_offset": current[1], "videos": n_videos}
    if len(set(ys.tolist())) < 2:
        console.say(
            "score: calibrate=true: needs labelled videos of both classes with windows; the model's calibration "
            f"(temperature {current[0]:.3f}, offset {current[1]:+.3f}) stays"
        )
        return {"temperature": current[0], "offset": current[1], **model, "fitted": False}
    fit = fit_calibration(
        logits.column("logit").to_numpy(zero_copy_only=False), ys,
        np.asarray(logits.column("video_id").to_pylist()), np.asarray(logits.column("track_id").to_pylist()),
        rule.aggregation, shift=rule.shift(meta), balanced=False, current=current,
    )  # fmt: skip
    console.say(
        f"score: calibrate=true: temperature {current[0]:.3f} -> {fit.temperature:.3f}, offset {current[1]:+.3f} -> "
        f"{fit.offset:+.3f}, fitted on {n_videos} labelled videos of this dataset: {fit.describe()} (videos "
        "without windows aside; the report now evaluates on the videos the calibration was fitted on)"
    )
    return {
        "temperature": fit.temperature,
        "offset": fit.offset,
        **model,
        "log_loss_before": fit.before,
        "log_loss_after": fit.after,
        "smoothed_log_loss_before": fit.objective[0],  # what the fit minimises (Fit.smoothing)
        "smoothed_log_loss_after": fit.objective[1],
        "smoothing": fit.smoothing,
        "at_bound": list(fit.at_bound),
        "fitted": True,
    }


def remove_version(output: storage.Folder, version: str) -> int:
    """Delete the score chunks of one model version (``--all``); the rows are written again right after."""
    folders = outputs.scoring_folders(output)
    marker, schema = folders["scores"]
    rows = marker.read_parquet(columns=["model_version"], schema=schema, file_column="chunk")
    mine = pc.equal(rows.column("model_version"), version)
    others = set(rows.filter(pc.invert(mine)).column("chunk").to_pylist())
    chunks = sorted(set(rows.filter(mine).column("chunk").to_pylist()) - others)
    for name in chunks:
        for folder, _ in folders.values():  # the marker last
            folder.delete(name)
    return len(chunks)


def write_submission(scores: pa.Table, output: storage.Folder) -> None:
    """``filename,label`` with label = probability of FAKE, as the DFDC competition asked."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["filename", "label"])
    for name, vid, p in sorted(
        zip(
            scores.column("filename").to_pylist(),
            scores.column("video_id").to_pylist(),
            scores.column("prob_fake").to_pylist(),
            strict=True,
        ),
        key=lambda r: r[1],
    ):
        w.writerow([name or f"{vid}.mp4", f"{p:.6f}"])
    output.write_text("submission.csv", buf.getvalue())


def _reasons(scores: pa.Table) -> dict:
    out: dict[str, int] = {}
    for r in scores.column("reason").to_pylist():
        if r:
            key = R.reason_of(r) or r
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# What a scoring run does, in order; each task reads the values its parameters name (what the run
# is given, ``cfg``, and what the tasks before it made) and makes those it lists (dfpipe.pipeline).
SCORE = Pipeline(
    NAME,
    [
        Task("model", load_model, makes=("model", "meta", "embedder", "version")),
        Task("plan", plan_data, makes=("extract_cfg", "extraction", "segment_cfg", "segment")),
        Task("extract", extract_job.run, reads={"cfg": "extract_cfg"}, when="extract_cfg"),
        Task("segment", segment_job.run, reads={"cfg": "segment_cfg"}),
        Task("pending", pending_videos, makes=("manifest", "pending", "already", "replace")),
        Task("embed", embed_pending, makes="cache"),
        Task("inputs", score_inputs, makes="todo"),
        Task("classify", classify, makes="calibration"),
        Task(
            "write", write_outputs, makes=("stats", "labels"), timed=False
        ),  # it times itself, in stats.json
        Task("evaluate", evaluation, makes="report"),
        Task("review", write_review, makes="review"),
    ],
)


def run(cfg: ScoreConfig) -> dict:
    """Score every video of ``cfg.input`` this model version has not scored (all with ``all=true``):
    the tasks of :data:`SCORE`. Returns ``stats.json``'s figures, the report and the review page's URI."""
    done = SCORE.run(cfg=cfg)
    report = {"report": done["report"]} if done["report"] is not None else {}
    return {**done["stats"], **report, "review": done["review"]}


def format_summary(stats: dict, report: bool = True) -> str:
    """The scoring summary, with the evaluation table when there is one and ``report``."""
    lines = [
        f"scores: {stats['videos']} videos by model {stats['model_version']} ({stats['scored_this_run']} this run, "
        f"{stats['videos_per_s']} videos/s, {stats['frames_per_s']} frames/s)"
    ]
    for reason, n in stats["fallback_by_reason"].items():
        lines.append(f"  fallback probability, {reason}: {n}")
    cal = stats.get("calibration")
    if cal and cal.get("fitted"):
        lines.append(
            f"  calibrate=true: temperature {cal['model_temperature']:.3f} -> {cal['temperature']:.3f}, offset "
            f"{cal['model_offset']:+.3f} -> {cal['offset']:+.3f} on "
            f"{cal['videos']} labelled videos, video log loss {cal['log_loss_before']:.4f} -> {cal['log_loss_after']:.4f}"
        )
    if report and "report" in stats:
        lines.append(evaluate.format_summary(stats["report"]))
    if stats.get("review"):
        lines.extend(review_lines(stats["review"]))
    return "\n".join(lines)


def review_lines(uri: str) -> list[str]:
    """Where the review page is, and the command that opens it."""
    if storage.is_local(uri):
        path = storage.strip_protocol(uri)
        return [f"review page: {path}", f"open it: python3 -m webbrowser file://{quote(path)}"]
    folder = posixpath.dirname(uri)
    return [
        f"review page: {uri}",
        f"open it: copy {folder}/ to a disk (or serve the prefix as a static site) and open index.html",
    ]
