"""Evaluation of a scoring output: report.json, report.md and plots."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import records as R
from dfpipe import storage
from dfpipe.score import report as rep

NAME = "evaluate"
SUMMARY = "Evaluate scores against known labels: log loss, accuracy, AUC, AP, EER, per part, with plots."


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(C.RunOptions):
    input: str = C.option(help="a scoring output URI (with scores/ and window_scores/)")
    output: str = C.option(
        help="report folder URI: report.json, report.md, roc.png, histogram.png, reliability.png"
    )
    model_version: str | None = C.option(None, "which model's scores (default: the last scoring run's model)")


def run(cfg: EvaluateConfig) -> dict:
    opts = cfg.storage_options
    scores_uri = storage.join(cfg.input, "scores")
    if not storage.exists(scores_uri, opts):
        raise C.ConfigError(f"{cfg.input!r} has no scores/: run 'dfpipe score' first")
    version = (
        cfg.model_version or storage.read_json(storage.join(cfg.input, "config.json"), opts)["model_version"]
    )
    videos = storage.read_parquet_dir(scores_uri, schema=R.SCORES_SCHEMA, options=opts).to_pandas()
    videos = videos[videos.model_version == version]
    # Window-level metrics need two columns of every window: read only those (a DFDC-sized output
    # holds millions of windows).
    windows = storage.read_parquet_dir(
        storage.join(cfg.input, "window_scores"),
        columns=["label", "prob_fake", "model_version"],
        schema=R.WINDOW_SCORES_SCHEMA,
        options=opts,
    )
    windows = windows.filter(pc.equal(windows.column("model_version"), version)).to_pandas()
    labelled = videos[videos.label.notna()]
    if labelled.empty or labelled.label.nunique() < 2:
        raise C.ConfigError(
            f"{cfg.input}: evaluation needs labelled REAL and FAKE videos scored by model {version}"
        )
    report = rep.evaluate(videos, windows)
    report["model_version"] = version
    storage.write_json(storage.join(cfg.output, "report.json"), report, opts)
    storage.write_text(storage.join(cfg.output, "report.md"), rep.markdown(report, version), opts)
    with tempfile.TemporaryDirectory() as tmp:
        for path in rep.plots(videos, tmp):
            with open(path, "rb") as f:
                storage.write_bytes(storage.join(cfg.output, os.path.basename(path)), f.read(), opts)
    report["report_uri"] = storage.normalize(cfg.output)
    return report


def format_summary(report: dict) -> str:
    return f"{rep.table(report)}\nreport: {report['report_uri']}/report.md (plots: roc.png, histogram.png, reliability.png)"
