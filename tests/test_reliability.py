"""Tier 2: break things on purpose. A bad-input corpus, killed actors and drivers, a flaky S3,
overlapping rescoring, and secrets that must never be written. Each ends with ``dfpipe check``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.compute as pc
import pytest
from faults import (
    INTERNAL,
    SLOW_DOWN,
    FaultyS3Proxy,
    assert_check_names_a_broken_copy,
    kill,
    processes,
    wait_for,
)

from dfpipe import records as R
from dfpipe import storage
from dfpipe.cli import main
from dfpipe.invariants import check_output
from dfpipe.outputs import read_manifest
from dfpipe.storage import Folder

ROOT = Path(__file__).resolve().parents[1]
FAST = ["face_size=64", "max_frames=60"]
SENTINEL = "SENTINEL-s3cr3t-7f3a9c"


def assert_checks(output: str, options=None) -> None:
    report = check_output(Folder(output, options))
    assert report.ok, report.format()
    assert report.checked


def manifest_by_id(output: str) -> dict[str, dict]:
    rows = read_manifest(Folder(output)).to_pylist()
    assert len({r["video_id"] for r in rows}) == len(rows), "a video is in the manifest twice"
    return {r["video_id"]: r for r in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    from dfpipe.sampledata.corpus import generate

    out = tmp_path_factory.mktemp("corpus")
    return out / "dataset", generate(str(out), max_frames=60)


@pytest.fixture(scope="module")
def corpus_extracted(ray_session, corpus, tmp_path_factory) -> Path:
    dataset, _ = corpus
    out = tmp_path_factory.mktemp("corpus-out") / "extract"
    assert main(["extract", "--input", str(dataset), "--output", str(out), *FAST]) == 0
    return out


def test_every_bad_input_gets_a_precise_reason(corpus, corpus_extracted):
    _, expected = corpus
    rows = manifest_by_id(str(corpus_extracted))
    absent = expected.pop("absent_*")
    missing = [v for v, r in rows.items() if v.startswith("absent_")]
    assert len(missing) == absent["count"]
    assert {R.reason_of(rows[v]["error"]) for v in missing} == {absent["reason"]}
    for video_id, want in expected.items():
        row = rows[video_id]
        assert row["status"] == want["status"], (video_id, row["error"])
        if want["reason"] == "truncated":
            assert row["error"].startswith("truncated"), (video_id, row["error"])
        elif want["reason"] is not None:
            assert R.reason_of(row["error"]) == want["reason"], (video_id, row["error"])
        else:
            assert row["error"] is None, (video_id, row["error"])
        for key in ("n_frames", "rotation", "width", "height"):
            if key in want:
                assert row[key] == want[key], (video_id, key, row[key])
        faces = sum(row[f"n_{f}"] for f in R.FRAME_FLAGS if f != R.FLAG_NO_FACE)
        assert faces >= want.get("min_faces", 0), (video_id, faces)
        assert row["n_tracks"] >= want.get("min_tracks", 0), (video_id, row["n_tracks"])
    assert set(rows) - set(expected) == set(missing), "every manifest row is accounted for"


def test_good_videos_are_unaffected_by_bad_neighbours(corpus, corpus_extracted, tmp_path):
    dataset, _ = corpus
    clean = tmp_path / "clean"
    shutil.copytree(dataset / "good", clean / "good")
    assert main(["extract", "--input", str(clean), "--output", str(tmp_path / "out"), *FAST]) == 0
    for video_id in ("good_real", "good_fake"):
        shard = f"faces/{video_id}.parquet"
        ours = storage.read_parquet_dir(str(corpus_extracted / shard), schema=R.FACES_SCHEMA)
        alone = storage.read_parquet_dir(str(tmp_path / "out" / shard), schema=R.FACES_SCHEMA)
        assert ours.equals(alone)


def test_check_passes_on_the_corpus_and_catches_corruption(corpus_extracted, tmp_path):
    assert_checks(str(corpus_extracted))
    assert_check_names_a_broken_copy(corpus_extracted, tmp_path, "good_real")


def test_decode_limits_refuse_by_rule(sample_dataset, tmp_path):
    from dfpipe.extract.stage import FaceExtractStage

    clip = sorted(sample_dataset.glob("dfdc_train_part_0/*.mp4"))[0]
    video = {"video_id": "v", "uri": str(clip), "filename": "v.mp4"}
    video.update(part="p", label=0, original=None, error=None)
    cases = [
        (dict(max_bytes=1000), R.REASON_TOO_LARGE),
        (dict(max_pixels=100 * 100), R.REASON_TOO_LARGE),
        (dict(max_seconds_per_video=0.0), R.REASON_TIMEOUT),
    ]

    def stage(**settings) -> FaceExtractStage:
        made = FaceExtractStage.of(Folder(str(tmp_path)), face_size=64, **settings)
        made.setup()
        return made

    for settings, reason in cases:
        row = stage(**settings).process(video)
        assert row["status"] == R.STATUS_FAILED and R.reason_of(row["error"]) == reason, (settings, row)
    assert stage(max_frames=5).process(video)["n_frames"] == 5


@pytest.fixture(scope="module")
def fault_dataset(tmp_path_factory) -> Path:
    from conftest import make_sample

    return make_sample(tmp_path_factory.mktemp("faults"), videos=10, frames=60, specials=False, seed=11)


def test_killed_actor_is_retried_and_nothing_is_lost(ray_session, fault_dataset, tmp_path):
    out = tmp_path / "out"
    result: dict = {}
    job = threading.Thread(
        target=lambda: result.update(
            rc=main(["extract", "--input", str(fault_dataset), "--output", str(out), *FAST])
        )
    )
    job.start()
    faces = out / "faces"
    assert wait_for(lambda: faces.is_dir() and any(faces.glob("*.parquet")), timeout=120)
    actors = processes("_StageActor")
    assert actors, "no extraction actor process found to kill"
    kill(actors[:1])
    job.join(timeout=300)
    assert result.get("rc") == 0
    rows = manifest_by_id(str(out))
    assert len(rows) == 10 and all(r["status"] == R.STATUS_OK for r in rows.values())
    assert_checks(str(out))


def test_driver_killed_mid_extraction_then_rerun(fault_dataset, tmp_path, ray_session, job_process):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "extract.py"),
        "--input",
        str(fault_dataset),
        "--output",
        str(out),
    ]
    proc = subprocess.Popen(
        [*cmd, *FAST],
        env=job_process,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        faces = out / "faces"
        assert wait_for(lambda: faces.is_dir() and any(faces.glob("*.parquet")), timeout=180)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    done_before = len(read_manifest(Folder(str(out))).to_pylist()) if (out / "videos").is_dir() else 0
    assert done_before < 10, "the job finished before it was killed; nothing was tested"
    assert main(["extract", "--input", str(fault_dataset), "--output", str(out), *FAST]) == 0
    rows = manifest_by_id(str(out))
    assert len(rows) == 10 and all(r["status"] == R.STATUS_OK for r in rows.values())
    assert_checks(str(out))


def _bucket(endpoint: str, name: str):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    if not fs.exists(name):
        fs.mkdir(name)
    return fs


def test_s3_throttling_and_5xx_are_retried(s3_endpoint, ray_session, fault_dataset):
    fs = _bucket(s3_endpoint, "dfpipe-faults")
    fs.put(str(fault_dataset), "dfpipe-faults/data", recursive=True)

    def flaky(method: str, path: str, n: int):
        return (SLOW_DOWN, INTERNAL)[n % 2] if n % 4 == 1 else None  # a quarter of all calls fail once

    with FaultyS3Proxy(s3_endpoint, flaky) as proxy:
        args = ["--input", "s3://dfpipe-faults/data", "--output", "s3://dfpipe-faults/out"]
        assert main(["extract", *args, *FAST, f"s3_endpoint_url={proxy.url}"]) == 0
    assert proxy.failed >= 5, "the proxy injected too few faults to mean anything"
    opts = storage.StorageOptions(endpoint_url=s3_endpoint)
    rows = read_manifest(storage.Folder("s3://dfpipe-faults/out", opts)).to_pylist()
    assert len(rows) == 10 and {r["status"] for r in rows} == {R.STATUS_OK}
    assert_checks("s3://dfpipe-faults/out", opts)


def test_s3_persistent_failure_is_a_clear_error_and_a_rerun_completes(
    s3_endpoint, ray_session, fault_dataset, capsys, monkeypatch
):
    fs = _bucket(s3_endpoint, "dfpipe-faults2")
    fs.put(str(fault_dataset), "dfpipe-faults2/data", recursive=True)
    args = ["--input", "s3://dfpipe-faults2/data", "--output", "s3://dfpipe-faults2/out", *FAST]

    def manifest_writes_fail(method: str, path: str, n: int):
        return INTERNAL if method in ("PUT", "POST") and "/out/videos/" in path else None

    with FaultyS3Proxy(s3_endpoint, manifest_writes_fail) as proxy, monkeypatch.context() as mp:
        mp.setenv("AWS_MAX_ATTEMPTS", "3")  # the driver's manifest writes: 3 attempts, not 10 with backoff
        assert main(["extract", *args, f"s3_endpoint_url={proxy.url}"]) == 1
    assert proxy.failed >= 3, "the failing write was not retried"
    err = capsys.readouterr().err
    assert "storage error" in err and "s3://dfpipe-faults2/out" in err, err
    assert not fs.find("dfpipe-faults2/out/videos"), "a partial manifest is visible"
    assert main(["extract", *args]) == 0  # storage is back: the rerun completes
    opts = storage.StorageOptions(endpoint_url=s3_endpoint)
    assert len(manifest_by_id("s3://dfpipe-faults2/out")) == 10
    assert_checks("s3://dfpipe-faults2/out", opts)


@pytest.fixture(scope="module")
def concurrent_rescores(
    classifier_model, sample_dataset, tmp_path_factory
) -> tuple[Path, list[str], list[int]]:
    """Two rescore runs of the same dump started at once (threads of one driver), then a third."""
    root = tmp_path_factory.mktemp("rescore-race") / "rescore"
    args = ["rescore", "--model", str(classifier_model), "--output", str(root)]
    args += ["--input", str(sample_dataset)]
    codes: list[int] = []
    runs = [threading.Thread(target=lambda: codes.append(main(args))) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=600)
    return root, args, codes


def test_overlapping_rescore_runs_score_each_video_once(concurrent_rescores):
    root, args, codes = concurrent_rescores
    assert codes == [0, 0]
    assert main(args) == 0  # a third run after both: nothing new
    (dump,) = (root / "dumps").iterdir()
    scores = storage.read_parquet_dir(str(dump / "scores"), schema=R.SCORES_SCHEMA)
    ids = scores.column("video_id").to_pylist()
    assert len(ids) == len(set(ids)) and len(ids) == pc.count_distinct(scores.column("video_id")).as_py()
    assert_checks(str(root))


def test_secrets_never_reach_logs_configs_or_outputs(
    s3_endpoint, ray_session, sample_dataset, tmp_path, capfd
):
    """A sentinel secret key in the environment: nothing the job writes or prints may contain it."""
    old = os.environ.get("AWS_SECRET_ACCESS_KEY")
    os.environ["AWS_SECRET_ACCESS_KEY"] = SENTINEL  # moto accepts any key; the driver reads it
    try:
        fs = _bucket(s3_endpoint, "dfpipe-secrets")
        out_s3 = "s3://dfpipe-secrets/out"
        part = str(sample_dataset / "dfdc_train_part_1")  # two videos: what is written matters, not how much
        assert main(["extract", "--input", part, "--output", out_s3, *FAST]) == 0
        assert main(["extract", "--input", part, "--output", str(tmp_path / "local"), *FAST]) == 0
        assert main(["extract", "--help"]) == 0
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = old or "testing"
    printed = "".join(capfd.readouterr())
    assert SENTINEL not in printed
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    written += [fs.cat(p) for p in fs.find("dfpipe-secrets")]
    assert written and not any(SENTINEL.encode() in blob for blob in written)
    logs = Path("/tmp/ray/session_latest/logs")
    if logs.is_dir():
        for p in logs.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                assert SENTINEL.encode() not in p.read_bytes(), p


def test_a_reported_epoch_is_never_trained_again_after_a_kill(segmented_sample, tmp_path, job_process):
    """Durable before it is said. SIGKILL the training workers the moment the driver reports epoch 1
    (the epoch line of its log, the progress line's source): the restarted workers resume after epoch 0.
    Then SIGKILL the whole job (driver, Ray, workers) the moment it reports epoch 2: the rerun resumes
    after epoch 1. Each epoch is trained once and in the history once. (With the line printed before its checkpoint was saved,
    the first kill restarted from epoch 0 every time.)"""
    from conftest import EMBEDDER_ARGS

    out = tmp_path / "embedder"
    cmd = [sys.executable, str(ROOT / "jobs" / "train_embedder.py"), "--input", str(segmented_sample)]
    cmd += ["--output", str(out), *EMBEDDER_ARGS, "epochs=3", "max_failures=1"]
    env = job_process
    proc = subprocess.Popen(
        [*cmd, "--verbose"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    shown, workers_killed = [], []
    try:
        for line in proc.stdout:
            shown.append(line)
            if "train_embedder: epoch 1:" in line and not workers_killed:
                workers_killed = kill_processes_titled("RayTrainWorker", under=proc.pid)
            if "train_embedder: epoch 2:" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = "".join(shown)
    assert workers_killed, f"no training worker to kill after the first epoch line:\n{first[-3000:]}"
    assert "no checkpoint yet" not in first, "epoch 1 was reported before it was saved:\n" + first[-3000:]
    assert "resuming from the checkpoint of epoch 0" in first, first[-3000:]
    assert "train_embedder: epoch 2:" in first, first[-3000:]
    assert not (out / "model.json").exists(), "training finished before it was killed; nothing was tested"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from the checkpoint of epoch 1" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]
    assert json.loads((out / "model.json").read_text())["epochs_trained"] == 3
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [0, 1, 2], history


def kill_processes_titled(title: str, under: int) -> list[int]:
    """SIGKILL the processes of session ``under`` (a job started with ``start_new_session``: its local
    Ray and every worker stay in it) whose title (a Ray worker's) holds ``title``."""
    from cluster import session_pids

    killed = []
    for pid in session_pids(under):
        try:
            if title in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except OSError:
            continue
    return killed


# A job process whose daemon threads are inside pyarrow scans when it exits, as Ray Data's
# prefetch threads can be: plain interpreter exit aborts about one time in three (SIGABRT after the
# work succeeded); exit_process must give the job's own exit status every time.
_EXIT_SCRIPT = """
import sys, threading, time
import pyarrow.dataset as ds
from dfpipe.cli import exit_process

def scan():
    while True:
        for _ in ds.dataset(sys.argv[1]).to_batches(batch_size=10):
            pass

for _ in range(8):
    threading.Thread(target=scan, daemon=True).start()
time.sleep(0.2)
print("work done", flush=True)
exit_process(int(sys.argv[2]))
"""


def test_a_job_process_exit_status_is_its_result(tmp_path, job_process):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": list(range(200_000))}), table, row_group_size=1000)
    script = tmp_path / "job.py"
    script.write_text(_EXIT_SCRIPT)
    env = job_process
    codes = []
    for i in range(10):
        want = 3 if i == 0 else 0  # a failure's exit code survives too
        proc = subprocess.run(
            [sys.executable, str(script), str(table), str(want)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert "work done" in proc.stdout
        codes.append((proc.returncode, want))
    assert all(got == want for got, want in codes), codes


def test_every_job_entry_point_exits_through_exit_process():
    root = Path(__file__).resolve().parents[1]
    for shim in sorted((root / "jobs").glob("*.py")):
        if shim.name != "_bootstrap.py":
            assert "script(" in shim.read_text(), shim
    assert 'dfpipe = "dfpipe.cli:script"' in (root / "pyproject.toml").read_text()


# A stale recorded Ray head (a `ray start` head killed on this machine): tests/test_console.py runs a
# job as a process on such a machine.


def test_a_held_lock_is_refreshed_and_only_a_really_stale_one_is_taken_over(tmp_path, caplog):
    """A run holding the rescore lock longer than stale_after_s keeps it (its heartbeat refreshes it);
    a lock whose holder stopped beating longer ago than that is taken over, with a warning."""
    import time

    from dfpipe.lock import LockHeld, run_lock

    uri = str(tmp_path / "rescore.lock")
    with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=1.0) as me:
        time.sleep(1.6)  # longer than stale_after_s: without the heartbeat a second run would take over
        with pytest.raises(LockHeld, match="last heartbeat"):
            with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=1.0):
                pass
        assert json.loads(Path(uri).read_text())["beat"] > me["since"] + 0.5
    assert not Path(uri).exists(), "released at the end"

    gone = {"host": "elsewhere", "pid": 1, "since": time.time() - 100, "beat": time.time() - 50, "token": "x"}
    Path(uri).write_text(json.dumps(gone))
    with pytest.raises(LockHeld):
        with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=60.0):
            pass
    with caplog.at_level("WARNING", logger="dfpipe.lock"):
        with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=30.0) as me:
            assert json.loads(Path(uri).read_text())["token"] == me["token"]
    assert "taking over a stale lock" in caplog.text


def test_a_lock_whose_holder_is_provably_gone_is_taken_over_at_once(tmp_path, caplog):
    """A run killed with its machine's processes (the head node lost, the driver with it) leaves its lock
    with a fresh heartbeat. A holder that ran on this machine and whose process has ended is taken over
    at once; one elsewhere cannot be seen, and the refusal says when it will be taken over and how to
    take it over now."""
    import socket
    import time

    from dfpipe.lock import LockHeld, run_lock

    ended = subprocess.Popen(["true"])
    ended.wait()
    uri = str(tmp_path / "rescore.lock")
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": ended.pid, "since": now - 5, "beat": now, "token": "x"}
    Path(uri).write_text(json.dumps(holder))
    with caplog.at_level("WARNING", logger="dfpipe.lock"):
        with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=3600) as me:
            assert json.loads(Path(uri).read_text())["token"] == me["token"]
    assert f"pid {ended.pid} on this machine, has ended" in caplog.text

    alive = {**holder, "pid": os.getppid()}  # a process of this machine that runs on: held
    Path(uri).write_text(json.dumps(alive))
    with pytest.raises(LockHeld, match="last heartbeat"):
        with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=3600):
            pass
    elsewhere = {**holder, "host": "a-lost-head-node", "beat": now - 120}
    Path(uri).write_text(json.dumps(elsewhere))
    with pytest.raises(
        LockHeld, match=r"in 3[34]\d\d s; to take it over now, rerun with stale_lock_s=1[12]\d"
    ):
        with run_lock(Folder(str(tmp_path)), "rescore.lock", stale_after_s=3600):
            pass
