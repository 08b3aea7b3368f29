"""Shared fixtures: one local Ray for the session, generated datasets, a moto S3 server, the session's
pipeline chain (extract -> segment -> both models, built once), and the tiers.

Tiers are set here, once, by what a test costs (``pytest_collection_modifyitems``): a test that uses a
fixture of ``SLOW_FIXTURES`` is in the slow tier, every property test is also run large there. The
default tier (``make test``) is every other test; ``make test-slow`` runs the slow tier; CI runs both.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fake credentials before Ray starts, so its workers inherit them (moto accepts any).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray Train's controller polls its workers every 2 s by default; each training run in the suite waited
# up to that long at start and end. Polled faster here (the controller inherits the driver's environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# Property tests: a small run by default, a large one in the slow tier (--hypothesis-profile=thorough).
settings.register_profile("default", max_examples=30, deadline=None)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")

# What makes a test slow, by the fixture it uses. Everything here still runs in CI (make test-slow).
SLOW_FIXTURES = {
    "shared_dfdc": "the real 1080p clips of ../shared/data",
    "job_process": "a job run as its own process: its own Ray, cold, every time",
    "bench": "a tiny run of a benchmark (several nested Ray jobs)",
    "fault_dataset": "faults injected: killed actors and drivers, a flaky or failing S3",
    "corpus": "the bad-input corpus: odd containers, rotations, huge and truncated files",
    "extra_ray_train": "a Ray Train run beyond the session chain's (its start-up alone is ~15 s here)",
    "concurrent_rescores": "two rescore runs racing for the lock",
    "extra_scoring": "scoring runs from raw videos beyond the session's (each starts four actor pools)",
    "quality_gate": "the demo pipeline trained from scratch on fresh datasets (a few minutes each)",
}


# A Ray cluster of several nodes started on this machine (tests/cluster.py): its own tier and CI stage.
CLUSTER_FIXTURES = {
    "local_cluster": "a head and two worker nodes with private disks, jobs by `ray job submit`"
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & CLUSTER_FIXTURES.keys():
            item.add_marker(pytest.mark.cluster)
        elif used & SLOW_FIXTURES.keys():
            item.add_marker(pytest.mark.slow)
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)


ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

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
    # address="local": this session's own Ray, never a cluster some `ray start` left running here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_sample(root: Path, **overrides) -> Path:
    from dfpipe.sampledata.generate import SampleConfig, generate

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
def sample_dataset(chain_root) -> Path:
    """The generated sample the session's chain learns from (kept with the chain: see ``chain_root``)."""
    return built_once(chain_root / "sample", lambda path: make_sample(path, frames=24))


@pytest.fixture(scope="session")
def messy_dataset(sample_dataset, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The sample dataset with broken entries beside it: its good videos are the ones the session's
    models learned from, so scoring it also shows the windows scored are the windows learned."""
    root = copy_tree(sample_dataset, tmp_path_factory.mktemp("messy") / "dataset")
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
def job_process() -> dict:
    """The environment of a job run as its own process (as CI, cron or ``ray job submit`` run one):
    it starts its own local Ray, not this session's."""
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(ROOT)}
    return env


@pytest.fixture(scope="session")
def extra_ray_train(ray_session) -> None:
    """Asked for by a test that runs Ray Train itself, beside the chain's three runs (the slow tier)."""


@pytest.fixture(scope="session")
def extra_scoring(ray_session) -> None:
    """Asked for by a test that scores raw videos several times over (rescoring dumps, on S3): each run
    extracts, segments, embeds and scores, ~20 s of actor start-up alone here (the slow tier)."""


# Chromium as the machine's Playwright probe starts it: no sandbox (root in containers), no GPU, and no
# background connections (a closed network refuses them, many at a time).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from the system's packages (``make browser-deps``, which ``make test`` runs:
    Debian's ``chromium``), driven by Playwright's Python package (the test lock); skipped with the
    reason where either is absent. A default-tier fixture: the review page's test reuses the tier's
    scoring output and takes seconds."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium on PATH: `make browser-deps` installs Debian's (make test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `make install` installs the test lock")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def quality_gate(ray_session) -> dict:
    """What the quality gate holds the demo pipeline to (``bench/stability.py`` runs it over more seeds)."""
    return {"accuracy": 0.95, "log_loss": 0.2}


@pytest.fixture(scope="session")
def bench() -> Path:
    """The benchmarks' folder: their tiny runs are tests, so they cannot rot."""
    return ROOT / "bench"


# The session's pipeline chain: one dataset through every step once, in the layout `dfpipe run` uses
# (so tests/test_pipeline.py runs the pipeline over it and proves its steps are configured alike).
# Every second frame and 64-px crops: the models trained on it carry a recipe other than the defaults,
# so every scoring test also proves that scoring follows the model's recipe. One training worker: the
# test of batches across workers (tests/test_train_jobs.py) has two. Its classifier (2 short epochs)
# is plumbing, not held to learning (min_loss_drop=0): the quality gate is tests/test_quality.py.
CHAIN = {
    "extract": ["face_size=64", "frame_stride=2"],
    "segment": ["val_parts=dfdc_train_part_1", "window_len=8", "window_stride=4"],
    "train_embedder": ["face_size=80", "epochs=2", "batch_size=8", "steps_per_epoch=1", "num_workers=1"],
    "train_classifier": ["epochs=2", "batch_size=8", "num_workers=1", "hidden_size=16", "min_loss_drop=0"],
}
EMBEDDER_ARGS = CHAIN["train_embedder"]


def pipeline_args(chain: dict = CHAIN) -> list[str]:
    """The chain's options as `dfpipe run` takes them (extract.face_size=64 ...)."""
    return [f"{step}.{arg}" for step, args in chain.items() for arg in args]


@pytest.fixture(scope="session")
def chain_root(tmp_path_factory) -> Path:
    """Where the chain is built: a fresh folder, or ``DFPIPE_TEST_CHAIN`` when set, so that CI's slow
    tier (a second pytest run on the same checkout, right after the default tier) reuses the chain
    the default tier built instead of training both models again. Each piece is reused only once it
    was built completely (see ``built_once``)."""
    shared = os.environ.get("DFPIPE_TEST_CHAIN")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        return Path(shared)
    return tmp_path_factory.mktemp("chain")


def built_once(path: Path, build) -> Path:
    """``build(path)`` unless an earlier run finished it (its ``.NAME.built`` marker beside it, written
    last; beside, not inside, where a catalog or ``dfpipe check`` would see it)."""
    marker = path.parent / f".{path.name}.built"
    if not marker.exists():
        if path.exists():
            shutil.rmtree(path)  # an interrupted build
        build(path)
        marker.write_text("")
    return path


@pytest.fixture(scope="session")
def extracted_sample(ray_session, sample_dataset, chain_root) -> Path:
    """The sample dataset through the extraction job once, for the stages after it."""
    from dfpipe.cli import main

    def build(out: Path) -> None:
        assert main(["extract", "--input", str(sample_dataset), "--output", str(out), *CHAIN["extract"]]) == 0

    return built_once(chain_root / "extract", build)


@pytest.fixture(scope="session")
def segmented_sample(extracted_sample, chain_root) -> Path:
    """Windows of the sample, part 1 held out for validation (REAL and FAKE in each split)."""
    from dfpipe.cli import main

    def build(out: Path) -> None:
        assert (
            main(["segment", "--input", str(extracted_sample), "--output", str(out), *CHAIN["segment"]]) == 0
        )

    return built_once(chain_root / "segment", build)


@pytest.fixture(scope="session")
def embedder_model(segmented_sample, chain_root) -> Path:
    """An embedder trained in two invocations: stopped after its first epoch, then resumed."""
    from dfpipe.cli import main

    def build(out: Path) -> None:
        args = ["train_embedder", "--input", str(segmented_sample), "--output", str(out), *EMBEDDER_ARGS]
        assert main([*args, "stop_after_epochs=1"]) == 0
        assert json.loads((out / "model.json").read_text())["epochs_trained"] == 1
        # Kept to prove the second invocation resumed: a restart would record epoch 0 anew.
        shutil.copy(out / "metrics.json", out.parent / "first_invocation_metrics.json")
        assert main(args) == 0

    return built_once(chain_root / "models" / "embedder", build)


def classifier_args(segmented: Path, embedder: Path, out: Path, options: list[str]) -> list[str]:
    return ["train_classifier", "--input", str(segmented), "--embedder", str(embedder), "--output", str(out),
            *options]  # fmt: skip


@pytest.fixture(scope="session")
def classifier_model(segmented_sample, embedder_model, chain_root) -> Path:
    from dfpipe.cli import main

    def build(out: Path) -> None:
        assert main(classifier_args(segmented_sample, embedder_model, out, CHAIN["train_classifier"])) == 0

    return built_once(chain_root / "models" / "classifier", build)
