"""Scheduled rescoring: score only the videos of new dumps (or of a new model version).

Each dump gets its own scoring output under ``OUTPUT/dumps/<dump name>/`` (the last component of its
URI; two dumps that would share a name are refused); inside it, scoring
anti-joins against the scores already written for the current model version, so a run with
nothing new does nothing. A lock keeps two overlapping runs (cron) from scoring twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dfpipe import config as C
from dfpipe import console, storage
from dfpipe.jobs import score as score_job
from dfpipe.lock import LockHeld, run_lock
from dfpipe.pipeline import Pipeline, Task

NAME = "rescore"
RAY = True  # runs on Ray: as a process, its Ray output goes to OUTPUT/logs/ (dfpipe.cli.run_job)
SUMMARY = "Score what is new in one or more video dumps (for cron / RayCronJob); a run with nothing new does nothing."


@dataclass(frozen=True, kw_only=True)
class RescoreConfig(C.RunOptions):
    input: tuple[str, ...] = C.option(
        help="dump URIs (repeat --input for several); new prefixes can appear over time"
    )
    model: str = C.option(help="a classifier model directory")
    output: str = C.option(help="root URI; each dump's scores go to OUTPUT/dumps/<dump name>/")
    all: bool = C.option(False, "rescore every video even when this model version already scored it")
    score: dict = C.option(
        {},
        "options of the scoring step (see 'dfpipe score --help'), e.g. score.fallback=half (extraction follows the model's recipe)",
    )
    stale_lock_s: float = C.option(6 * 3600.0, "a lock older than this many seconds is taken over")

    def __post_init__(self):
        if not self.input:
            raise ValueError("give at least one --input dump URI")
        fixed = {"input", "model", "output", "all", *C.run_options_of(self)}
        clash = sorted(set(self.score) & fixed)
        if clash:
            raise ValueError(f"score.{clash[0]} is set by rescore itself; give it at the top level")


def dump_name(dump: str) -> str:
    """A dump's folder name: the last component of its URI (``.../dumps/2026-11-25`` -> ``2026-11-25``)."""
    return storage.safe_name(storage.normalize(dump).split("://")[-1].rstrip("/").rsplit("/", 1)[-1])


def dump_output(root: storage.Folder, dump: str) -> storage.Folder:
    """``OUTPUT/dumps/<dump name>/``; its ``config.json`` keeps the dump's full URI. A folder that an
    older dfpipe named by the whole URI, percent-encoded, is still used where it exists."""
    legacy = root.sub("dumps", storage.safe_name(storage.normalize(dump).split("://")[-1].strip("/")))
    return legacy if legacy.exists() else root.sub("dumps", dump_name(dump))


def check_names(dumps: tuple[str, ...], root: storage.Folder) -> None:
    """Refuse dumps that would share a folder: two inputs of this run, or an input and the dump an
    earlier run scored there (read from that folder's config.json)."""
    seen: dict[str, str] = {}
    for dump in dumps:
        name = dump_name(dump)
        if name in seen and storage.normalize(seen[name]) != storage.normalize(dump):
            raise C.ConfigError(
                f"--input {seen[name]} and --input {dump} would both be scored into {root.uri}/dumps/{name}/: "
                "dumps are named by their last path component; give them distinct names (e.g. dated folders)"
            )
        seen[name] = dump
        scored = dump_output(root, dump)
        if scored.exists("config.json"):
            earlier = scored.read_json("config.json").get("config", {}).get("input")
            if earlier and storage.normalize(earlier) != storage.normalize(dump):
                raise C.ConfigError(
                    f"{root.uri}/dumps/{name}/ holds the scores of {earlier}; --input {dump} has the same last path "
                    "component: rename the dump or give another --output"
                )


def plan_dumps(cfg: RescoreConfig) -> dict[str, score_job.ScoreConfig]:
    """Each dump's scoring config (its folder under OUTPUT/dumps/), after refusing dumps that
    would share a folder."""
    root = cfg.folder(cfg.output)
    common = {"model": cfg.model, "all": cfg.all, **C.run_options_of(cfg)}
    check_names(cfg.input, root)
    return {
        d: C.build(
            score_job.ScoreConfig,
            {**cfg.score, **common, "input": d, "output": dump_output(root, d).uri},
        )
        for d in cfg.input
    }


def score_dumps(cfg: RescoreConfig, configs: dict[str, score_job.ScoreConfig]) -> dict | None:
    """Score each dump (the scoring pipeline, :data:`dfpipe.jobs.score.SCORE`), under the lock
    that keeps two overlapping runs from scoring twice; None when another run holds it."""
    try:
        with run_lock(cfg.folder(cfg.output), "rescore.lock", cfg.stale_lock_s):
            dumps = {}
            for dump, score_cfg in configs.items():
                console.say(f"\n== rescore: {dump} ==")
                stats = score_job.run(score_cfg)
                dumps[dump] = {
                    "output": score_cfg.output,
                    "scored_this_run": stats["scored_this_run"],
                    "videos": stats["videos"],
                    "model_version": stats["model_version"],
                    "review": stats.get("review"),
                }
            return dumps
    except LockHeld as exc:
        console.say(f"rescore: another run is in progress ({exc}); nothing done")
        return None


RESCORE = Pipeline(
    NAME,
    [
        Task("dumps", plan_dumps, makes="configs"),
        Task("score", score_dumps, makes="dumps"),
    ],
)


def run(cfg: RescoreConfig) -> dict:
    started = time.monotonic()
    dumps = RESCORE.run(cfg=cfg)["dumps"]
    seconds = round(time.monotonic() - started, 1)
    if dumps is None:
        return {"locked": True, "dumps": {}, "seconds": seconds}
    summary = {"locked": False, "dumps": dumps, "seconds": seconds}
    cfg.folder(cfg.output).write_json("rescore_stats.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    if summary["locked"]:
        return "another rescore run holds the lock; nothing done"
    new = sum(d["scored_this_run"] for d in summary["dumps"].values())
    lines = []
    for dump, d in summary["dumps"].items():
        lines.append(
            f"{dump}: {d['scored_this_run']} scored now, {d['videos']} scored in all -> {d['output']}"
        )
        if d.get("review"):
            lines.append(f"  review page: {d['review']}")
    lines.append("nothing new to score" if new == 0 else f"{new} videos scored in {summary['seconds']} s")
    return "\n".join(lines)
