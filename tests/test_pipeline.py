"""Tier 2: the whole pipeline in one command, and scheduled rescoring of dumps."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import pipeline_args

from dfpipe.cli import main
from dfpipe.jobs.rescore import dump_output
from dfpipe.outputs import read_scores
from dfpipe.storage import Folder


def test_pipeline_over_the_session_chain_then_reuses_everything(
    classifier_model, sample_dataset, chain_root, capsys
):
    """`dfpipe run` with the chain's options over the outputs the session's jobs made one by one: each
    step's configuration must equal its job's (an extraction or segmentation with other options is
    refused, a model with other settings too), so the pipeline finds them done and only scores. A
    second run reuses everything. (From an empty output, S3 to S3, the pipeline runs in the cluster tier
    through `ray job submit`, a node lost in every step: tests/test_cluster.py.)"""
    out = chain_root
    argv = ["run", "--input", str(sample_dataset), "--output", str(out), *pipeline_args()]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and printed.count("| level |") == 1, "the evaluation table, once"
    first_row = printed.split("| level |")[1].splitlines()[2]
    # no test split and no video outside the model's data here: the headline says so
    assert first_row.startswith("| video, all (train and val) |"), first_row
    assert printed.count("already holds a model") == 2, "both models are the chain's"
    for path in (
        "extract/stats.json",
        "segment/stats.json",
        "models/embedder/model.pt",
        "models/classifier/model.pt",
        "score/submission.csv",
        "score/report/report.json",
        "pipeline_stats.json",
    ):
        assert (out / path).exists(), path
    timings = json.loads((out / "pipeline_stats.json").read_text())["timings_s"]
    assert set(timings) == {"extract", "segment", "train_embedder", "train_classifier", "score"}
    scores = read_scores(Folder(str(out / "score"))).to_pandas()
    assert scores.video_id.is_unique and len(scores) == len(list(sample_dataset.glob("*/*.mp4")))

    assert main(argv) == 0
    assert json.loads((out / "extract/stats.json").read_text())["run"]["videos_processed"] == 0
    assert json.loads((out / "segment/stats.json").read_text())["run"]["videos_processed"] == 0
    assert json.loads((out / "score/stats.json").read_text())["scored_this_run"] == 0
    assert "already holds a model" in capsys.readouterr().out


def test_pipeline_bad_section_is_refused(capsys, tmp_path):
    assert (
        main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "train_embedder.epochs=x"])
        == 2
    )
    assert "train_embedder: epochs: expected an integer" in capsys.readouterr().err


def test_rescore_scores_each_video_once(classifier_model, sample_dataset, extra_scoring, tmp_path, capsys):
    dump1, dump2 = tmp_path / "dumps" / "2026-11-24", tmp_path / "dumps" / "2026-11-25"
    shutil.copytree(sample_dataset / "dfdc_train_part_1", dump1)
    root = tmp_path / "scores"
    args = ["rescore", "--model", str(classifier_model), "--output", str(root)]
    assert main([*args, "--input", str(dump1)]) == 0
    first = read_scores(dump_output(Folder(str(root)), str(dump1)))
    assert first.num_rows == len(list(dump1.glob("*.mp4")))
    # The dump's folder is named as a person would look for it; its config keeps the full URI.
    assert [p.name for p in (root / "dumps").iterdir()] == ["2026-11-24"]
    assert json.loads((root / "dumps" / "2026-11-24" / "config.json").read_text())["config"]["input"] == str(
        dump1
    )

    # A new dump appears: only its videos are scored; the old dump has nothing new.
    dump2.mkdir()
    for clip in sorted((sample_dataset / "dfdc_train_part_0").glob("*.mp4"))[:2]:  # two are enough
        shutil.copy(clip, dump2)
    capsys.readouterr()
    assert main([*args, "--input", str(dump1), "--input", str(dump2)]) == 0
    stats = json.loads((root / "rescore_stats.json").read_text())["dumps"]
    assert stats[str(dump1)]["scored_this_run"] == 0
    assert stats[str(dump2)]["scored_this_run"] == len(list(dump2.glob("*.mp4")))
    assert main([*args, "--input", str(dump1), "--input", str(dump2)]) == 0
    assert "nothing new to score" in capsys.readouterr().out
    for dump in (dump1, dump2):
        scores = read_scores(dump_output(Folder(str(root)), str(dump))).to_pandas()
        assert scores.video_id.is_unique and len(scores) == len(list(dump.glob("*.mp4")))

    # An overlapping run (the lock is held) does nothing and says so.
    (root / "rescore.lock").write_text(json.dumps({"host": "other", "pid": 1, "since": 4e9, "token": "x"}))
    assert main([*args, "--input", str(dump1), "--all"]) == 0
    assert "another run is in progress" in capsys.readouterr().out
    (root / "rescore.lock").unlink()
    # --all rescores everything once more, still one row per video.
    assert main([*args, "--input", str(dump1), "--all"]) == 0
    again = read_scores(dump_output(Folder(str(root)), str(dump1))).to_pandas()
    assert again.video_id.is_unique and len(again) == first.num_rows


def test_rescore_refuses_dumps_that_would_share_a_folder(tmp_path, capsys):
    a, b = tmp_path / "east" / "2026-11-25", tmp_path / "west" / "2026-11-25"
    for d in (a, b):
        d.mkdir(parents=True)
    root = tmp_path / "scores"
    args = ["rescore", "--model", str(tmp_path / "model"), "--output", str(root)]
    assert main([*args, "--input", str(a), "--input", str(b)]) == 2
    err = capsys.readouterr().err
    assert f"--input {a} and --input {b} would both be scored into" in err and "2026-11-25" in err
    # A later run with a dump of the same name as one scored earlier is refused too.
    (root / "dumps" / "2026-11-25").mkdir(parents=True)
    (root / "dumps" / "2026-11-25" / "config.json").write_text(json.dumps({"config": {"input": str(a)}}))
    assert main([*args, "--input", str(b)]) == 2
    assert f"holds the scores of {a}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match", [(["--model", "m", "--output", "o"], "missing required option(s): input")]
)
def test_rescore_arguments(argv, match, capsys):
    assert main(["rescore", *argv]) == 2
    assert match in capsys.readouterr().err
