"""Tier 2: bulk scoring, evaluation and score-video after the training jobs."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dfpipe import records as R
from dfpipe import storage
from dfpipe.catalog import build_catalog
from dfpipe.cli import main
from dfpipe.jobs.score import read_scores


def brute_auc(y, p) -> float:
    """AUC by counting every (FAKE, REAL) pair: independent of dfpipe.metrics."""
    pos = [s for s, t in zip(p, y, strict=True) if t == 1]
    neg = [s for s, t in zip(p, y, strict=True) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def score(data, model, out) -> int:
    return main(["score", "--input", str(data), "--model", str(model), "--output", str(out), "max_frames=20"])


@pytest.fixture(scope="module")
def scored(classifier_model, messy_dataset, tmp_path_factory):
    root, _ = messy_dataset
    data = tmp_path_factory.mktemp("score-data") / "dataset"
    shutil.copytree(root, data)
    out = tmp_path_factory.mktemp("scored") / "score"
    assert score(data, classifier_model, out) == 0
    return data, out


def test_every_video_has_one_clipped_score(scored, messy_dataset):
    data, out = scored
    _, expected = messy_dataset
    scores = read_scores(str(out), None).to_pandas().set_index("video_id")
    catalog = build_catalog(str(data))
    assert scores.index.is_unique and set(scores.index) == set(catalog.column("video_id").to_pylist())
    assert scores.prob_fake.between(0.01, 0.99).all()
    for vid in expected:
        assert scores.loc[vid, "reason"].startswith("extract_failed"), vid
    meta = json.loads((Path(out) / "config.json").read_text())
    assert (scores.model_version == meta["model_version"]).all()
    with open(Path(out) / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(scores)
    by_name = {r["filename"]: float(r["label"]) for r in rows}
    for _, row in scores.iterrows():
        assert by_name[row.filename] == pytest.approx(row.prob_fake, abs=1e-6)


def test_report_matches_an_independent_computation(scored):
    _, out = scored
    report = json.loads((Path(out) / "report" / "report.json").read_text())
    s = read_scores(str(out), None).to_pandas()
    s = s[s.label.notna()]
    y, p = s.label.to_numpy(int), s.prob_fake.to_numpy(float)
    v = report["video"]
    assert v["n"] == len(y)
    assert v["accuracy"] == pytest.approx(np.mean((p >= 0.5) == (y == 1)))
    assert v["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-5)
    per_class = [-np.mean(np.log(1 - p[y == 0])), -np.mean(np.log(p[y == 1]))]
    assert v["balanced_log_loss"] == pytest.approx(np.mean(per_class), rel=1e-5)
    assert v["roc_auc"] == pytest.approx(brute_auc(y, p))
    c = v["confusion"]
    assert (
        c["true_fake"] + c["false_real"] == (y == 1).sum()
        and c["true_real"] + c["false_fake"] == (y == 0).sum()
    )
    for png in ("roc.png", "histogram.png", "reliability.png"):
        assert (Path(out) / "report" / png).stat().st_size > 1000
    assert "| video |" in (Path(out) / "report" / "report.md").read_text()


def test_rescoring_touches_only_new_videos(scored, classifier_model):
    data, out = scored
    before = read_scores(str(out), None).num_rows
    assert score(data, classifier_model, out) == 0
    assert json.loads((Path(out) / "stats.json").read_text())["scored_this_run"] == 0
    new = sorted(data.glob("dfdc_train_part_0/*.mp4"))[0]
    shutil.copy(new, data / "dfdc_train_part_0" / "brandnewclip.mp4")
    assert score(data, classifier_model, out) == 0
    assert json.loads((Path(out) / "stats.json").read_text())["scored_this_run"] == 1
    scores = read_scores(str(out), None).to_pandas()
    assert len(scores) == before + 1 and scores.video_id.is_unique


def test_score_video_agrees_with_the_bulk_job(scored, classifier_model, tmp_path, capsys):
    data, out = scored
    scores = read_scores(str(out), None).to_pandas().set_index("video_id")
    ok = scores[scores.reason.isna()]
    vid = ok.index[0]
    path = next(data.glob(f"*/{vid}.mp4"))
    png = tmp_path / "explain.png"
    assert (
        main(
            [
                "score-video",
                str(path),
                "--model",
                str(classifier_model),
                "--json",
                "max_frames=20",
                "--explain",
                str(png),
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["prob_fake"] == pytest.approx(ok.loc[vid, "prob_fake"], abs=1e-4)
    assert record["n_windows"] == ok.loc[vid, "n_windows"]
    assert png.stat().st_size > 5000
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    assert main(["score-video", str(bad), "--model", str(classifier_model)]) == 1
    assert "cannot be scored: decode_error" in capsys.readouterr().err


def test_score_refuses_a_non_model(tmp_path, sample_dataset, capsys):
    assert (
        main(
            [
                "score",
                "--input",
                str(sample_dataset),
                "--model",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not a model directory" in capsys.readouterr().err


def test_score_shared_real_clips(classifier_model, shared_dfdc, tmp_path):
    out = tmp_path / "score"
    assert (
        main(
            [
                "score",
                "--input",
                str(shared_dfdc),
                "--model",
                str(classifier_model),
                "--output",
                str(out),
                "max_frames=24",
            ]
        )
        == 0
    )
    scores = read_scores(str(out), None).to_pandas()
    present = {p.stem for p in shared_dfdc.glob("*/*.mp4")}
    assert present <= set(scores.video_id)
    real = scores[scores.video_id.isin(present)]
    assert real.prob_fake.between(0.01, 0.99).all()
    assert R.reason_of(scores[~scores.video_id.isin(present)].reason.iloc[0]) == "extract_failed"
    assert storage.exists(str(out / "submission.csv"))
