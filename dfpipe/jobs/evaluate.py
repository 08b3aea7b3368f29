"""Evaluation of a scoring output: report.json, report.md and plots."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import outputs, storage
from dfpipe import records as R
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
    scored = cfg.folder(cfg.input)
    if not scored.exists("scores"):
        raise C.ConfigError(f"{cfg.input!r} has no scores/: run 'dfpipe score' first")
    version = cfg.model_version or scored.read_json("config.json")["model_version"]
    return write_report(scored, cfg.folder(cfg.output), version)


def write_report(scored: storage.Folder, out: storage.Folder, version: str) -> dict:
    """The report of model ``version``'s scores in ``scored`` (a scoring output), written to ``out``
    (``report.json``, ``report.md`` and the plots) and returned. Scoring runs it as its last step
    but one, where both classes are labelled."""
    videos = outputs.read_scores(scored).to_pandas()
    videos = videos[videos.model_version == version]
    # Window-level metrics need two columns of every window: read only those (a DFDC-sized output
    # holds millions of windows).
    windows = scored.read_parquet(
        "window_scores", columns=["label", "prob_fake", "model_version"], schema=R.WINDOW_SCORES_SCHEMA
    )
    windows = windows.filter(pc.equal(windows.column("model_version"), version)).to_pandas()
    labelled = videos[videos.label.notna()]
    if labelled.empty or labelled.label.nunique() < 2:
        raise C.ConfigError(
            f"{scored.uri}: evaluation needs labelled REAL and FAKE videos scored by model {version}"
        )
    report = rep.evaluate(videos, windows)
    report["model_version"] = version
    out.write_json("report.json", report)
    out.write_text("report.md", rep.markdown(report, version))
    with tempfile.TemporaryDirectory() as tmp:
        for path in rep.plots(videos, tmp):
            with open(path, "rb") as f:
                out.write_bytes(os.path.basename(path), f.read())
    report["report_uri"] = storage.normalize(out.uri)
    return report


def format_summary(report: dict) -> str:
    return f"{rep.table(report)}\nreport: {report['report_uri']}/report.md (plots: roc.png, histogram.png, reliability.png)"
