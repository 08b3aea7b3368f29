"""Shared fixtures: one local Ray for the session, generated datasets, a moto S3 server."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

# Fake credentials before Ray starts, so its workers inherit them (moto accepts any).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SMALL = dict(
    videos=4, frames=20, width=320, height=240, fps=10.0, parts=2, portrait_size=(270, 480), portrait_frames=6
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto in server mode: a real HTTP S3 endpoint on loopback, reached through s3fs."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole session. The S3 endpoint goes in the environment before Ray
    starts so its workers see it, the way AWS_ENDPOINT_URL reaches workers on a real cluster."""
    import ray

    os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_sample(root: Path, **overrides) -> Path:
    from dfpipe.sample import SampleConfig, generate

    generate(str(root), SampleConfig(**{**SMALL, **overrides}))
    return root


def add_bad_inputs(root: Path) -> dict[str, str]:
    """Broken entries beside good ones; returns video_id -> expected reason."""
    good = sorted(root.glob("dfdc_train_part_0/*.mp4"))[0].read_bytes()
    bad = root / "dfdc_train_part_9"
    bad.mkdir()
    (bad / "zerobyte.mp4").write_bytes(b"")
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (bad / "textfile.mp4").write_text("this is not a video\n")
    meta = {
        "zerobyte.mp4": {"label": "FAKE", "split": "train", "original": None},
        "truncated.mp4": {"label": "REAL", "split": "train", "original": None},
        "textfile.mp4": {"label": "REAL", "split": "train", "original": None},
        "missingfile.mp4": {"label": "FAKE", "split": "train", "original": "x.mp4"},
        "../escape.mp4": {"label": "REAL", "split": "train", "original": None},
        "badlabel.mp4": {"label": "MAYBE", "split": "train", "original": None},
    }
    (bad / "badlabel.mp4").write_bytes(good)
    (bad / "metadata.json").write_text(json.dumps(meta))
    broken = root / "dfdc_train_part_8"
    broken.mkdir()
    (broken / "metadata.json").write_text('{"unlabelled.mp4": {"label": "REAL",')
    (broken / "unlabelled.mp4").write_bytes(good)
    return {
        "zerobyte": "decode_error",
        "textfile": "decode_error",
        "missingfile": "missing_file",
        "escape": "unsafe_path",
        "badlabel": "bad_label",
        "dfdc_train_part_8/metadata.json": "bad_metadata",
    }


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("sample"), frames=24)


@pytest.fixture(scope="session")
def messy_dataset(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = make_sample(tmp_path_factory.mktemp("messy"), seed=3)
    return root, add_bad_inputs(root)


@pytest.fixture(scope="session")
def shared_dfdc() -> Path:
    path = SHARED_DATA / "dfdc"
    if not path.is_dir():
        pytest.skip("../shared/data/dfdc is absent (a fresh clone): real-clip tests skipped")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def extracted_sample(ray_session, sample_dataset, tmp_path_factory) -> Path:
    """The sample dataset through the extraction job once, for the stages after it.

    Every second frame and 64-px crops: the models trained on it carry a recipe other than the
    defaults, so every scoring test also proves that scoring follows the model's recipe.
    """
    from dfpipe.cli import main

    out = tmp_path_factory.mktemp("extracted") / "extract"
    args = ["extract", "--input", str(sample_dataset), "--output", str(out), "face_size=64", "frame_stride=2"]
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def segmented_sample(extracted_sample, tmp_path_factory) -> Path:
    """Windows of the sample, part 1 held out for validation (REAL and FAKE in each split)."""
    from dfpipe.cli import main

    out = tmp_path_factory.mktemp("segmented") / "segment"
    assert (
        main(
            [
                "segment",
                "--input",
                str(extracted_sample),
                "--output",
                str(out),
                "val_parts=dfdc_train_part_1",
                "window_len=8",
                "window_stride=4",
            ]
        )
        == 0
    )
    return out


EMBEDDER_ARGS = ["face_size=80", "epochs=3", "batch_size=8", "steps_per_epoch=3", "num_workers=2", "lr=1e-3"]


@pytest.fixture(scope="session")
def embedder_model(segmented_sample, tmp_path_factory) -> Path:
    """An embedder trained in two invocations: stopped after its first epoch, then resumed."""
    from dfpipe.cli import main

    out = tmp_path_factory.mktemp("models") / "embedder"
    args = ["train_embedder", "--input", str(segmented_sample), "--output", str(out), *EMBEDDER_ARGS]
    assert main([*args, "stop_after_epochs=1"]) == 0
    assert json.loads((out / "model.json").read_text())["epochs_trained"] == 1
    # Kept to prove the second invocation resumed: a restart would record epoch 0 anew.
    shutil.copy(out / "metrics.json", out.parent / "first_invocation_metrics.json")
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def classifier_model(segmented_sample, embedder_model, tmp_path_factory) -> Path:
    from dfpipe.cli import main

    out = tmp_path_factory.mktemp("models") / "classifier"
    assert (
        main(
            [
                "train_classifier",
                "--input",
                str(segmented_sample),
                "--embedder",
                str(embedder_model),
                "--output",
                str(out),
                "epochs=6",
                "batch_size=8",
                "num_workers=2",
                "hidden_size=16",
            ]
        )
        == 0
    )
    return out
