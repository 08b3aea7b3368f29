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
from dfpipe.pipeline import Pipeline, Task

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


def step_configs(cfg: PipelineConfig) -> tuple:
    """Each step's config (validated when the pipeline's config was made), in :data:`STEPS` order."""
    cfg.folder(cfg.output).write_json("pipeline.json", {"job": NAME, "config": C.to_dict(cfg)})
    configs = cfg.step_configs
    return tuple(configs[step] for step in STEPS)


JOBS = {
    "extract": extract,
    "segment": segment,
    "train_embedder": train_embedder,
    "train_classifier": train_classifier,
    "score": score,
}

# The pipeline: every step a job, run with the config the pipeline made for it, in order; each
# reuses what a previous run produced (dfpipe.pipeline).
RUN = Pipeline(
    NAME,
    [
        Task("configs", step_configs, makes=tuple(f"{step}_cfg" for step in STEPS), timed=False),
        *(Task(step, JOBS[step].run, reads={"cfg": f"{step}_cfg"}, makes=step) for step in STEPS),
    ],
)


def run(cfg: PipelineConfig) -> dict:
    """Run the steps of :data:`RUN`, saying each one's summary and time as it ends."""
    started = time.monotonic()

    def before(task: Task) -> None:
        if task.name in JOBS:
            console.say(f"\n== pipeline step: {task.name} ==")

    def after(task: Task, result, seconds: float) -> None:
        if task.name in JOBS:
            # The evaluation table is printed once, at the end.
            console.say(
                JOBS[task.name].format_summary(result, **({"report": False} if task.name == "score" else {}))
            )
            console.say(f"-- {task.name} took {round(seconds, 1)} s")

    done = RUN.run(cfg=cfg, before=before, after=after)
    timings = {step: round(done["seconds"][step], 1) for step in STEPS}
    total = round(time.monotonic() - started, 1)
    cfg.folder(cfg.output).write_json("pipeline_stats.json", {"timings_s": timings, "total_s": total})
    return {"timings_s": timings, "total_s": total, "score": done["score"], "paths": cfg.paths}


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
