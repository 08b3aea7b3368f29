"""The whole pipeline in one command: extract -> segment -> train embedder -> train classifier -> score -> evaluate.

Each step reuses what a previous run produced (extraction and segmentation only process missing
videos, training returns a finished model, scoring only scores what has no score), so a second
run of the same command is quick and changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dfpipe import config as C
from dfpipe import console, storage
from dfpipe.jobs import evaluate, extract, score, segment, train_classifier, train_embedder

NAME = "run"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Run the whole pipeline: extract, segment, train both models, score and evaluate."

STEPS = ("extract", "segment", "train_embedder", "train_classifier", "score")


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(C.RunOptions):
    input: str = C.option(help="dataset URI (local path, file:// or s3://)")
    output: str = C.option(
        help="root URI: extract/, segment/, models/embedder, models/classifier, score/ go under it"
    )
    extract: dict = C.option(
        {}, "options of the extract step (see 'dfpipe extract --help'), e.g. extract.max_frames=60"
    )
    segment: dict = C.option({}, "options of the segment step, e.g. segment.val_parts=35-39")
    train_embedder: dict = C.option({}, "options of the embedder training, e.g. train_embedder.epochs=10")
    train_classifier: dict = C.option({}, "options of the classifier training")
    score: dict = C.option({}, "options of the scoring step")

    def __post_init__(self):
        self.step_configs  # noqa: B018 - validates every section up front, before any work starts

    @property
    def paths(self) -> dict[str, str]:
        return {
            "extract": storage.join(self.output, "extract"),
            "segment": storage.join(self.output, "segment"),
            "embedder": storage.join(self.output, "models", "embedder"),
            "classifier": storage.join(self.output, "models", "classifier"),
            "score": storage.join(self.output, "score"),
        }

    @property
    def step_configs(self) -> dict:
        p = self.paths
        common = C.run_options_of(self)  # every step runs where and as the pipeline does
        wired = {
            "extract": (extract.ExtractConfig, {"input": self.input, "output": p["extract"]}),
            "segment": (segment.SegmentConfig, {"input": p["extract"], "output": p["segment"]}),
            "train_embedder": (
                train_embedder.TrainEmbedderConfig,
                {"input": p["segment"], "output": p["embedder"]},
            ),
            "train_classifier": (
                train_classifier.TrainClassifierConfig,
                {"input": p["segment"], "embedder": p["embedder"], "output": p["classifier"]},
            ),
            "score": (
                score.ScoreConfig,
                {"input": p["extract"], "model": p["classifier"], "output": p["score"]},
            ),
        }
        out = {}
        for step, (cls, fixed) in wired.items():
            section = dict(getattr(self, step))
            clash = sorted(set(section) & (set(fixed) | set(common)))
            if clash:
                raise ValueError(
                    f"{step}.{clash[0]} is set by the pipeline; set it at the top level or leave it out"
                )
            try:
                out[step] = C.build(cls, {**common, **fixed, **section})
            except C.ConfigError as exc:
                raise ValueError(f"{step}: {exc}") from None
        return out


def run(cfg: PipelineConfig) -> dict:
    modules = {
        "extract": extract,
        "segment": segment,
        "train_embedder": train_embedder,
        "train_classifier": train_classifier,
        "score": score,
    }
    configs = cfg.step_configs
    storage.write_json(
        storage.join(cfg.output, "pipeline.json"),
        {"job": NAME, "config": C.to_dict(cfg)},
        cfg.storage_options,
    )
    timings, results = {}, {}
    total = time.monotonic()
    for step in STEPS:
        console.say(f"\n== pipeline step: {step} ==")
        start = time.monotonic()
        results[step] = modules[step].run(configs[step])
        timings[step] = round(time.monotonic() - start, 1)
        # The evaluation table is printed once, at the end.
        summary = modules[step].format_summary(
            results[step], **({"report": False} if step == "score" else {})
        )
        console.say(summary)
        console.say(f"-- {step} took {timings[step]} s")
    summary = {
        "timings_s": timings,
        "total_s": round(time.monotonic() - total, 1),
        "score": results["score"],
        "paths": cfg.paths,
    }
    storage.write_json(
        storage.join(cfg.output, "pipeline_stats.json"),
        {"timings_s": timings, "total_s": summary["total_s"]},
        cfg.storage_options,
    )
    return summary


def format_summary(summary: dict) -> str:
    t = summary["timings_s"]
    total = summary["total_s"] or 1
    lines = [
        "steps: "
        + ", ".join(f"{k} {v} s ({100 * v / total:.0f}%)" for k, v in t.items())
        + f"; total {summary['total_s']} s"
    ]
    report = summary["score"].get("report")
    if report:
        lines.append(evaluate.format_summary(report))
    lines.append(
        f"scores: {summary['paths']['score']}/scores, submission: {summary['paths']['score']}/submission.csv"
    )
    if summary["score"].get("review"):
        lines.extend(score.review_lines(summary["score"]["review"]))
    return "\n".join(lines)
