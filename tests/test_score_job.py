"""Tier 2: bulk scoring, evaluation and score-video after the training jobs."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from dfpipe import records as R
from dfpipe import storage
from dfpipe.cli import main
from dfpipe.config import JobError
from dfpipe.extract.catalog import build_catalog
from dfpipe.jobs.score_video import Scorer
from dfpipe.outputs import read_scores
from dfpipe.storage import Folder


def brute_auc(y, p) -> float:
    """AUC by counting every (FAKE, REAL) pair: independent of dfpipe.train.metrics."""
    pos = [s for s, t in zip(p, y, strict=True) if t == 1]
    neg = [s for s, t in zip(p, y, strict=True) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def score(data, model, out) -> int:
    return main(["score", "--input", str(data), "--model", str(model), "--output", str(out)])


DRIVER_TABLES: list[tuple[tuple[str, ...], int]] = []  # what reached the driver in `scored`
# A video on disk (unlisted by metadata.json: label unknown) whose name is markup: the review page
# must show it as text and run nothing.
HOSTILE = """<img src=x onerror="document.title='pwned'">"""


@pytest.fixture(scope="module")
def scored(classifier_model, messy_dataset, tmp_path_factory):
    from dfpipe import runner

    root, _ = messy_dataset
    data = tmp_path_factory.mktemp("score-data") / "dataset"
    shutil.copytree(root, data)
    good = sorted(data.glob("dfdc_train_part_0/*.mp4"))[0]
    shutil.copy(good, good.parent / f"{HOSTILE}.mp4")
    out = tmp_path_factory.mktemp("scored") / "score"
    streamed = runner.iter_tables

    def recorded(ds):
        for table in streamed(ds):
            DRIVER_TABLES.append((tuple(table.column_names), table.num_rows))
            yield table

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "iter_tables", recorded)
        assert score(data, classifier_model, out) == 0
    return data, out


def test_no_window_or_face_reaches_the_driver(scored):
    """Workers write faces, windows, codes and window scores; the driver gets one small row per
    video from each step (extract, segment, embed, score), so its memory does not grow with windows."""
    data, _ = scored
    videos = build_catalog(Folder(str(data))).num_rows
    payload = {"face_jpeg", "faces", "codes", "logit", "windows", "window_id", "start_frame"}
    assert DRIVER_TABLES, "the score run streamed nothing back"
    for columns, _ in DRIVER_TABLES:
        assert not payload & set(columns), columns
    by_step: dict[tuple[str, ...], int] = {}
    for columns, rows in DRIVER_TABLES:
        by_step[columns] = by_step.get(columns, 0) + rows
    assert max(by_step.values()) <= videos, by_step


def test_the_rows_to_score_come_in_one_order_whatever_order_they_were_found_in(scored, classifier_model):
    """The rows handed to the scoring workers are ordered by chunk, then video: the score files
    (and the float sums of the report) are the same on every run, as Arrow's joins keep no order."""
    from dfpipe import outputs
    from dfpipe.jobs import score as score_job
    from dfpipe.jobs._codes import cache_for
    from dfpipe.score.stage import VIDEO_COLUMNS
    from dfpipe.train import modelio

    _, out = scored
    model = Folder(str(classifier_model))
    segment = Folder(str(next(out.glob("segment-*"))))
    cache = cache_for(segment, model.sub("embedder"))
    manifest = outputs.read_manifest(Folder(str(out / "extract")), columns=[*VIDEO_COLUMNS, "n_frames"])
    meta = modelio.read_meta(model)
    orders = [
        score_job.score_inputs(manifest.take(rows), segment, cache, meta).column("video_id").to_pylist()
        for rows in (list(range(manifest.num_rows)), list(reversed(range(manifest.num_rows))))
    ]
    assert orders[0] == orders[1] and len(orders[0]) == manifest.num_rows


def test_every_video_has_one_clipped_score(scored, messy_dataset):
    data, out = scored
    _, expected = messy_dataset
    scores = read_scores(Folder(str(out))).to_pandas().set_index("video_id")
    catalog = build_catalog(Folder(str(data)))
    assert scores.index.is_unique and set(scores.index) == set(catalog.column("video_id").to_pylist())
    assert scores.prob_fake.between(0.01, 0.99).all()
    assert (scores.n_tracks_counted <= scores.n_tracks).all()
    assert (scores[scores.n_windows > 0].n_tracks_counted >= 1).all()
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
    s = read_scores(Folder(str(out))).to_pandas()
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
    # the headline (first row): the held-out split, else the unsplit videos, else all, computed apart
    head = report["headline"]
    split = s.split.fillna("unsplit").to_numpy()
    sel = split == head["split"] if head["split"] else np.ones(len(s), bool)
    assert head["n"] == int(sel.sum()) > 0
    yh, ph = y[sel], p[sel]
    assert head["log_loss"] == pytest.approx(-np.mean(yh * np.log(ph) + (1 - yh) * np.log(1 - ph)), rel=1e-5)
    md = (Path(out) / "report" / "report.md").read_text()
    assert md.split("| level |")[1].splitlines()[2].startswith(f"| video, {head['name']} | {head['n']} |")


class ReviewPage(HTMLParser):
    """What a reader's browser would build of ``report/index.html`` before any script: every element
    with its attributes, and per video (its ``tbody``) its attributes, its name (the name cell's text
    but a URI shown beside it in ``<small>``, where the URI is not a link) and the images of its detail row."""

    def __init__(self, path: Path):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.videos: list[dict] = []
        self._in_name = False
        self._in_small = False
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elements.append((tag, a))
        classes = (a.get("class") or "").split()
        if tag == "tbody" and "video" in classes:
            self.videos.append({**a, "name": "", "detail": None, "strips": []})
        elif self.videos and tag == "td" and "name" in classes:
            self._in_name = True
        elif tag == "small":
            self._in_small = True
        elif self.videos and tag == "tr" and "detail" in classes:
            self.videos[-1]["detail"] = ""
        elif self.videos and tag == "img" and "strip" in classes:
            self.videos[-1]["strips"].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_name = False
        elif tag == "small":
            self._in_small = False

    def handle_data(self, data):
        if self._in_name and not self._in_small:
            self.videos[-1]["name"] += data.strip()
        elif self.videos and self.videos[-1]["detail"] is not None:
            self.videos[-1]["detail"] += data


def test_the_review_page_lists_every_video_with_faces_for_the_flagged(scored, messy_dataset):
    """report/index.html: a row per video, the most suspicious first; with fewer videos than
    review_top each has a full row: thumbnails on disk where it had faces, the reason where its
    extraction failed; a name made of markup is text and no element of it exists."""
    _, out = scored
    _, failed = messy_dataset
    scores = read_scores(Folder(str(out))).to_pandas().set_index("video_id")
    page = ReviewPage(Path(out) / "report" / "index.html")
    assert len(page.videos) == len(scores)
    probs = [float(v["data-p"]) for v in page.videos]
    assert probs == sorted(probs, reverse=True)
    by_name = {v["name"]: v for v in page.videos}
    for vid, row in scores.iterrows():
        video = by_name[row.filename or f"{vid}.mp4"]
        assert float(video["data-p"]) == pytest.approx(row.prob_fake, abs=1e-4)
        assert video["detail"] is not None, vid
        if vid in failed:
            assert "Extraction failed" in video["detail"] and not video["strips"], vid
        elif row.n_tracks:
            assert video["strips"], vid
            for src in video["strips"]:
                assert (Path(out) / "report" / src).stat().st_size > 500, src
    hostile = by_name[f"{HOSTILE}.mp4"]  # shown as the very text of its name
    assert hostile["data-label"] == "none"
    assert not [a for _, a in page.elements if "onerror" in a], "markup from a file name became an element"
    assert not [a for t, a in page.elements if t == "img" and a.get("src") == "x"]


def test_the_review_page_works_in_a_real_browser(scored, browser, tmp_path):
    """The page of a small generated run in headless Chromium, after its scripts ran: every row, the
    most suspicious first; sorting; filters that hide rows; rows that open onto loaded thumbnails; the
    markup-named video as text, nothing of it run; no JavaScript error, no failed request; a
    screenshot that is not blank."""
    import cv2

    _, out = scored
    n = read_scores(Folder(str(out))).num_rows
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto((Path(out) / "report" / "index.html").as_uri())
    page.wait_for_load_state("load")

    def visible(attribute: str) -> list[str]:
        return page.eval_on_selector_all(
            "#videos tbody.video", f"bs => bs.filter(b => !b.hidden).map(b => b.dataset.{attribute})"
        )

    probs = [float(p) for p in visible("p")]
    assert len(probs) == n and probs == sorted(probs, reverse=True)
    page.click("#videos th[data-sort=p]")  # ascending, then back
    assert [float(p) for p in visible("p")] == sorted(probs)
    page.click("#videos th[data-sort=p]")
    assert [float(p) for p in visible("p")] == probs

    page.select_option("#f-label", "REAL")
    labels = visible("label")
    assert labels and set(labels) == {"REAL"} and len(labels) < n
    assert page.inner_text("#shown") == str(len(labels))
    page.select_option("#f-label", "")
    page.check("#f-reason")
    assert 0 < len(visible("reason")) < n and set(visible("reason")) == {"1"}
    page.uncheck("#f-reason")
    page.check("#f-wrong")
    assert set(visible("wrong")) <= {"1"}
    page.uncheck("#f-wrong")
    page.fill("#f-text", "pwned")
    assert len(visible("p")) == 1
    page.fill("#f-text", "")
    assert len(visible("p")) == n

    first = page.locator("#videos tbody.video").first
    assert first.locator("tr.detail").is_hidden()
    first.locator("button.open").click()
    assert first.locator("tr.detail").is_visible()
    strips = first.locator("img.strip")
    assert strips.count() >= 1
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=strips.first.element_handle())
    assert first.locator("svg.timeline polyline").count() >= 1

    names = page.eval_on_selector_all("#videos td.name", "tds => tds.map(td => td.textContent)")
    assert f"{HOSTILE}.mp4" in names
    assert page.title() != "pwned" and page.locator("img[src=x]").count() == 0

    shot = tmp_path / "review.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = cv2.imread(str(shot))
    assert pixels.shape[0] > 900 and pixels.std() > 20, "a blank screenshot"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "too few colours: the page did not render"
    page.close()
    assert problems == []


def test_rescoring_touches_only_new_videos(scored, classifier_model):
    data, out = scored
    before = read_scores(Folder(str(out))).num_rows
    page = Path(out) / "report" / "index.html"
    made = page.stat().st_mtime_ns
    assert score(data, classifier_model, out) == 0
    assert json.loads((Path(out) / "stats.json").read_text())["scored_this_run"] == 0
    assert page.stat().st_mtime_ns == made  # nothing new: the review page is left as it is
    new = sorted(data.glob("dfdc_train_part_0/*.mp4"))[0]
    shutil.copy(new, data / "dfdc_train_part_0" / "brandnewclip.mp4")
    assert score(data, classifier_model, out) == 0
    assert json.loads((Path(out) / "stats.json").read_text())["scored_this_run"] == 1
    scores = read_scores(Folder(str(out))).to_pandas()
    assert len(scores) == before + 1 and scores.video_id.is_unique
    assert "brandnewclip.mp4" in {v["name"] for v in ReviewPage(page).videos}  # made again, with it


def test_calibrate_refits_the_temperature_on_the_labelled_videos_and_says_so(
    scored, classifier_model, tmp_path, capsys
):
    """calibrate=true: a model whose temperature is wrong for this dataset (0.25: over-confident) gets a
    calibration (temperature and offset) fitted on the dataset's labelled videos, before/after log loss
    printed and kept, and every window probability written is the logit under the new calibration (the
    first run's faces are the input)."""
    import pyarrow.parquet as pq

    _, first = scored
    model = tmp_path / "model"
    shutil.copytree(classifier_model, model)
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, "temperature": 0.25}))
    out = tmp_path / "calibrated"
    capsys.readouterr()
    assert main(["score", "--input", str(first / "extract"), "--model", str(model),
                 "--output", str(out), "calibrate=true"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    cal = json.loads((out / "stats.json").read_text())["calibration"]
    assert cal["fitted"] and cal["model_temperature"] == 0.25 and cal["temperature"] > 0.25
    # The fit minimises the log loss against smoothed targets (docs/score.md, Calibration); the plain
    # one may rise where every video was right and confident.
    assert cal["smoothed_log_loss_after"] < cal["smoothed_log_loss_before"] and 0 < cal["smoothing"] < 0.5
    assert f"temperature 0.250 -> {cal['temperature']:.3f}" in said and "log loss" in said
    scores = read_scores(Folder(str(out))).to_pandas()
    labelled = scores[(scores.n_windows > 0) & scores.label.notna() & scores.reason.isna()]
    assert cal["videos"] == len(labelled) > 0
    windows = pq.read_table(out / "window_scores").to_pandas()
    expected = 1 / (1 + np.exp(-(windows.logit.to_numpy(float) / cal["temperature"] + cal["offset"])))
    assert np.allclose(windows.prob_fake, expected, atol=1e-5)


def test_score_video_agrees_with_the_bulk_job(scored, classifier_model, tmp_path, capsys):
    data, out = scored
    scores = read_scores(Folder(str(out))).to_pandas().set_index("video_id")
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

    # One Scorer, models loaded once, gives the bulk job's numbers file after file, and a bad file
    # in between leaves it working.
    other = next(data.glob(f"*/{ok.index[1]}.mp4"))
    with Scorer(str(classifier_model)) as scorer:
        detector, embedder = scorer.extract.detector, scorer.embed.net
        for p, v in ((path, vid), (bad, None), (other, ok.index[1]), (path, vid)):
            if v is None:
                with pytest.raises(JobError, match="cannot be scored"):
                    scorer.score(str(p))
                continue
            rec = scorer.score(str(p))
            assert rec["prob_fake"] == pytest.approx(ok.loc[v, "prob_fake"], abs=1e-4)
            assert "load" not in rec["seconds"]
        assert scorer.extract.detector is detector and scorer.embed.net is embedder
        # Several files at once (shared detector calls and embedding batches): the same numbers.
        many = scorer.score_many([str(path), str(bad), str(other)])
        assert many[0]["prob_fake"] == pytest.approx(ok.loc[vid, "prob_fake"], abs=1e-4)
        assert many[0]["n_windows"] == ok.loc[vid, "n_windows"]
        assert isinstance(many[1], JobError) and "decode_error" in str(many[1])
        assert many[2]["prob_fake"] == pytest.approx(ok.loc[ok.index[1], "prob_fake"], abs=1e-4)
        assert not os.listdir(scorer._tmp.name)  # each file's faces are removed once it is scored


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
                "extract.max_frames=24",
            ]
        )
        == 0
    )
    scores = read_scores(Folder(str(out))).to_pandas()
    present = {p.stem for p in shared_dfdc.glob("*/*.mp4")}
    assert present <= set(scores.video_id)
    real = scores[scores.video_id.isin(present)]
    assert real.prob_fake.between(0.01, 0.99).all()
    assert R.reason_of(scores[~scores.video_id.isin(present)].reason.iloc[0]) == "extract_failed"
    assert storage.exists(str(out / "submission.csv"))


def test_scoring_follows_the_models_recipe(scored, classifier_model, segmented_sample):
    """The model learned from every second frame and 64-px crops: scoring the raw dataset (the
    sample's videos among broken entries) extracts and segments it the same way, so the windows
    scored are exactly the windows it learned from."""
    _, out = scored
    meta = json.loads((classifier_model / "model.json").read_text())
    assert meta["recipe"]["extract"]["frame_stride"] == 2 and meta["recipe"]["extract"]["face_size"] == 64
    assert meta["recipe"]["segment"]["window_len"] == 8 and meta["aggregation"] == "max_track_mean"
    extracted = json.loads((out / "extract" / "config.json").read_text())["config"]
    assert extracted["frame_stride"] == 2 and extracted["face_size"] == 64
    learned = storage.read_parquet_dir(str(segmented_sample / "windows"), schema=R.WINDOWS_SCHEMA).to_pandas()
    scored_windows = storage.read_parquet_dir(
        str(out / "window_scores"), schema=R.WINDOW_SCORES_SCHEMA
    ).to_pandas()
    assert len(learned) > 0
    scored_windows = scored_windows[scored_windows.video_id.isin(set(learned.video_id))]
    assert set(scored_windows.window_id) == set(learned.window_id), (
        "the same windows (same tracks, same frames)"
    )
    (seg,) = [p for p in out.iterdir() if p.name.startswith("segment-")]
    windows = storage.read_parquet_dir(str(seg / "windows"), schema=R.WINDOWS_SCHEMA).to_pandas()
    windows = windows[windows.video_id.isin(set(learned.video_id))]
    key = ["window_id", "start_frame", "end_frame", "frame_stride", "counted"]
    assert windows[key].sort_values("window_id").values.tolist() == (
        learned[key].sort_values("window_id").values.tolist()
    )


def test_score_refuses_faces_extracted_otherwise(classifier_model, extracted_sample, tmp_path, capsys):
    other = tmp_path / "extract"
    shutil.copytree(extracted_sample, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["config"].update(frame_stride=1, face_size=160)
    (other / "config.json").write_text(json.dumps(cfg))
    args = ["score", "--input", str(other), "--model", str(classifier_model), "--output", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "extract.frame_stride: recipe 2, extraction 1" in err
    assert "extract.face_size: recipe 64, extraction 160" in err
    assert not (tmp_path / "s" / "scores").exists(), "refused at start-up, before any work"


def test_overriding_the_recipe_is_said_out_loud(classifier_model):
    from dfpipe.jobs import score as score_job

    meta = json.loads((classifier_model / "model.json").read_text())
    cfg = score_job.ScoreConfig(
        input="x", model=str(classifier_model), output="y", extract={"frame_stride": 1, "num_workers": 2}
    )
    ext, seg, notes = score_job.data_plan(meta, str(classifier_model), cfg)
    assert ext["frame_stride"] == 1 and ext["face_size"] == 64 and seg == meta["recipe"]["segment"]
    assert notes == ["extract.frame_stride: model's recipe 2, given 1"]
    with pytest.raises(ValueError, match="extract.input cannot be set"):
        score_job.ScoreConfig(input="x", model="m", output="y", extract={"input": "z"})
    old = {k: v for k, v in meta.items() if k != "recipe"}
    with pytest.raises(Exception, match="records no data recipe"):
        score_job.data_plan(old, str(classifier_model), cfg)


def test_a_poster_and_a_background_face_do_not_decide_the_score(classifier_model, tmp_path, capsys):
    """A printed photo in the corner and a tiny face behind: both found, both left out, and the
    video's probability is the main person's."""
    from dfpipe.sampledata.generate import ClipSpec, write_clip

    clip = tmp_path / "poster.mp4"
    write_clip(ClipSpec("poster", "REAL", 0, 640, 480, 32, 10.0, scene_seed=5, kind="poster"), str(clip))
    png = tmp_path / "explain.png"
    assert (
        main(["score-video", str(clip), "--model", str(classifier_model), "--json", "--explain", str(png)])
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    tracks = {t["track_id"]: t for t in record["tracks"]}
    assert len(tracks) >= 2 and record["n_tracks_counted"] == 1
    (main_track,) = [t for t in tracks.values() if t["counted"]]
    assert main_track["face_px"] == max(t["face_px"] for t in tracks.values())
    poster = [t for t in tracks.values() if not t["counted"] and t["n_windows"]]
    assert poster and all(t["reason"].startswith("small") for t in poster), (
        "the poster has windows, not counted"
    )
    mine = [w["prob_fake"] for w in record["windows"] if w["track_id"] == main_track["track_id"]]
    assert record["prob_fake"] == pytest.approx(min(max(np.mean(mine), 0.01), 0.99), abs=1e-6)
    assert png.stat().st_size > 5000


def report_of(splits: list[str | None]):
    import pandas as pd

    from dfpipe.score import report as rep

    n = len(splits)
    videos = pd.DataFrame(
        {
            "label": [i % 2 for i in range(n)],
            "prob_fake": [0.2 + 0.6 * (i % 2) for i in range(n)],
            "split": splits,
            "part": ["p"] * n,
            "reason": [None] * n,
        }
    )
    windows = videos[["label", "prob_fake"]]
    report = rep.evaluate(videos, windows)
    rows = [line.split("|")[1].strip() for line in rep.table(report).splitlines()[2:]]
    return report, rows


def test_the_report_headline_is_what_the_model_never_learned_from():
    report, rows = report_of(["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    assert report["headline"]["n"] == 2 and report["headline"]["split"] == "test"
    assert rows[:3] == [
        "video, test (held out)",
        "video, all (train, val included)",
        "window, all (train, val included)",
    ]
    assert rows[3:5] == [
        "video, split val (chose the epoch and calibration)",
        "video, split train (trained on)",
    ]
    report, rows = report_of([None] * 4)  # another dataset, a new dump: not `train`
    assert rows[0] == "video, unsplit (not in the model's data)" and report["headline"]["n"] == 4
    assert not [r for r in rows if "train" in r]
    report, rows = report_of(["train"] * 4 + ["val"] * 2)
    assert rows[0] == "video, all (train and val)"
