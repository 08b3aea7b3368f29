"""The extraction job against a real HTTP S3 endpoint (moto server mode) through s3fs."""

from __future__ import annotations

import pytest

from dfpipe import records as R
from dfpipe import storage
from dfpipe.cli import main
from dfpipe.outputs import read_manifest
from dfpipe.storage import Folder


@pytest.fixture(scope="module")
def bucket(s3_endpoint, ray_session):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("dfpipe-test")
    return fs


def test_storage_options_endpoint_precedence(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert storage.StorageOptions().for_protocol("s3")["client_kwargs"]["endpoint_url"] == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    assert storage.StorageOptions().for_protocol("s3")["client_kwargs"]["endpoint_url"] == "http://s3only:2"
    opts = storage.StorageOptions(endpoint_url="http://config:3", region="eu-west-1", anon=True).for_protocol(
        "s3"
    )
    assert opts == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://config:3", "region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 10, "mode": "standard"}},  # throttling is retried
    }
    assert storage.StorageOptions(endpoint_url="http://x").for_protocol("file") == {}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # AWS's own variable for the retry count
    assert storage.StorageOptions().for_protocol("s3")["config_kwargs"]["retries"]["max_attempts"] == 3


def test_storage_on_s3(bucket):
    uri = "s3://dfpipe-test/storage/a.json"
    storage.write_json(uri, {"k": [1, 2]})
    assert storage.read_json(uri) == {"k": [1, 2]}
    assert storage.find("s3://dfpipe-test/storage") == [uri]
    with storage.local_copy(uri) as path:
        assert open(path).read().startswith("{")
    fs, path = storage.arrow_filesystem(uri)
    assert type(fs).__name__ == "PyFileSystem" and path == "dfpipe-test/storage/a.json"


def test_a_listing_keeps_nothing_once_it_returns(bucket):
    """s3fs keeps every folder a listing walks in its cache for the process's life: the driver held
    the input's whole listing (about 1 KB a video: a GB at a million) and every marker folder's,
    and a file a worker wrote after the listing was missing to the driver's next look."""
    folder = "s3://dfpipe-test/listing"
    storage.write_json(folder + "/part/a.json", {})
    assert storage.find(folder) == [folder + "/part/a.json"]
    fs, path = storage.filesystem(folder)
    assert not [k for k in fs.dircache if k.startswith(path)]
    bucket.pipe("dfpipe-test/listing/part/b.json", b"{}")  # another client: a worker
    assert storage.exists(folder + "/part/b.json")


SRC, EXTRACTED = "s3://dfpipe-test/messy", "s3://dfpipe-test/extract-out"


@pytest.fixture(scope="module")
def s3_extracted(bucket, messy_dataset):
    root, _ = messy_dataset
    bucket.put(str(root), "dfpipe-test/messy", recursive=True)
    assert main(["extract", "--input", SRC, "--output", EXTRACTED, "face_size=64", "max_frames=20"]) == 0
    return EXTRACTED


def test_extract_from_s3_to_s3(s3_extracted, messy_dataset):
    root, expected = messy_dataset
    src, out = SRC, s3_extracted
    manifest = read_manifest(Folder(out)).to_pandas().set_index("video_id")
    local_ids = {p.stem for p in root.glob("*/*.mp4")}
    assert local_ids - {"escape"} <= set(manifest.index)
    assert manifest.index.is_unique
    for vid, reason in expected.items():
        assert R.reason_of(manifest.loc[vid, "error"]) == reason
    ok = manifest[manifest.status == "ok"]
    assert len(ok) >= 8 and (ok.faces_uri.str.startswith("s3://dfpipe-test/extract-out/faces/")).all()
    faces = storage.read_parquet_dir(out + "/faces", columns=["video_id", "frame_idx"], schema=R.FACES_SCHEMA)
    assert faces.num_rows >= ok.n_frames.sum()
    assert storage.read_json(out + "/stats.json")["videos"]["ok"] == len(ok)
    # A rerun against S3 finds everything done.
    assert main(["extract", "--input", src, "--output", out, "face_size=64", "max_frames=20"]) == 0
    assert storage.read_json(out + "/stats.json")["run"]["videos_processed"] == 0


def test_segment_on_s3(s3_extracted):
    from dfpipe.outputs import read_summary, read_windows

    out = "s3://dfpipe-test/segment-out"
    assert main(["segment", "--input", s3_extracted, "--output", out, "window_len=8", "window_stride=4"]) == 0
    summary = read_summary(Folder(out)).to_pandas()
    manifest = read_manifest(Folder(s3_extracted)).to_pandas()
    assert set(summary.video_id) == set(manifest.video_id)
    windows = read_windows(Folder(out)).to_pandas()
    assert len(windows) > 0 and windows.faces_uri.str.startswith("s3://").all()
    failed = summary[summary.extract_status == "failed"]
    assert len(failed) > 0 and failed.reason.str.startswith("extract_failed").all()


def test_score_on_s3_follows_the_models_recipe(bucket, classifier_model, s3_extracted, extra_scoring, capsys):
    """Model, dataset and output all on S3: the recipe (every second frame, 64-px crops) is read from
    the model's model.json there, applied to the new extraction, and faces extracted otherwise are refused."""
    model = "s3://dfpipe-test/models/classifier"
    bucket.put(str(classifier_model), model.removeprefix("s3://"), recursive=True)
    out = "s3://dfpipe-test/score-out"
    args = ["score", "--input", s3_extracted, "--model", model, "--output", out]
    assert main(args) == 2
    assert "extract.frame_stride: recipe 2, extraction 1" in capsys.readouterr().err
    assert main(["score", "--input", SRC, "--model", model, "--output", out, "evaluate=false"]) == 0
    assert storage.read_json(out + "/extract/config.json")["config"]["frame_stride"] == 2
    manifest = read_manifest(Folder(out + "/extract")).to_pandas()
    assert (manifest[manifest.status == "ok"].frame_stride == 2).all()
    scores = storage.read_parquet_dir(out + "/scores", schema=R.SCORES_SCHEMA).to_pandas()
    assert set(scores.video_id) == set(manifest.video_id)
    with_windows = scores[scores.n_windows > 0]
    assert len(with_windows) > 0 and (with_windows.n_tracks_counted >= 1).all()
    (segment,) = [
        p for p in bucket.ls("dfpipe-test/score-out") if p.rsplit("/", 1)[-1].startswith("segment-")
    ]
    tracks = storage.read_parquet_dir(f"s3://{segment}/tracks", schema=R.TRACKS_SCHEMA)
    assert tracks.num_rows >= len(with_windows)


def test_training_metrics_reach_tensorboard_files_on_s3(bucket, s3_endpoint, tmp_path):
    """A model output on S3 gets its TensorBoard event files there, epoch by epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dfpipe.jobs import _training as T
    from dfpipe.jobs.train_classifier import TrainClassifierConfig

    cfg = TrainClassifierConfig(
        input="s3://dfpipe-test/seg", embedder="s3://dfpipe-test/emb", output="s3://dfpipe-test/tb-model",
        epochs=2, s3_endpoint_url=s3_endpoint,
    )  # fmt: skip
    report = T.EpochReport("train_classifier", cfg, ("train_loss",))
    report({"epoch": 0, "train_loss": 0.7, "val_video_acc": 0.5, "train_per_s": 900.0, "val_windows": 32})
    assert bucket.ls("dfpipe-test/tb-model/tensorboard"), "uploaded after the first epoch"
    report({"epoch": 1, "train_loss": 0.4, "val_video_acc": 0.75, "train_per_s": 950.0, "val_windows": 32})
    report.close()
    bucket.get("dfpipe-test/tb-model/tensorboard", str(tmp_path / "tb"), recursive=True)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("quality/val_video_acc")] == [0.5, 0.75]
    assert [e.step for e in events.Scalars("throughput/train_per_s")] == [0, 1]


def test_score_video_reads_its_model_through_the_given_endpoint(
    bucket, s3_endpoint, classifier_model, sample_dataset, monkeypatch, capsys
):
    """score-video with its model on an S3 endpoint given by ``s3_endpoint_url`` (the environment's
    endpoint is dead): the model and its embedder are read through the option, and the video gets
    the probability the same model gives from local disk."""
    import json

    model = "s3://dfpipe-test/models/score-video-classifier"
    bucket.put(str(classifier_model), model.removeprefix("s3://"), recursive=True)
    clip = str(next(sample_dataset.glob("*/*.mp4")))
    assert main(["score-video", clip, "--model", str(classifier_model), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    args = ["score-video", clip, "--model", model, "--json", f"s3_endpoint_url={s3_endpoint}"]
    assert main(args) == 0, capsys.readouterr().err
    remote = json.loads(capsys.readouterr().out)
    assert remote["prob_fake"] == local["prob_fake"] and remote["n_windows"] == local["n_windows"]
    assert remote["model_version"] == local["model_version"]
