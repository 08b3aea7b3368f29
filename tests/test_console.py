"""What a person sees of a job: the job's own lines on the console, everything else in a log file
under the output (tier 1: the console module; tier 2: a job run as a process, as CI or
`ray job submit` run it, with its output captured)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dfpipe import console, storage

ROOT = Path(__file__).resolve().parents[1]
RAY_BLOCKS = (
    "logging_progress",
    "Running Dataset",
    "Total Progress",
    "streaming_executor",
    "SplitCoordinator",
)


SCRIPT = """
import logging, os, sys
from dfpipe import console, storage
logging.basicConfig(level=logging.INFO)
with console.log_file(storage.Folder(os.path.dirname(sys.argv[1])), os.path.basename(sys.argv[1])):
    os.write(1, b"from C: descriptor 1\\n")  # as Ray's C++ core writes
    os.write(2, b"from C: descriptor 2\\n")
    print("a library's print")
    logging.getLogger("ray.data").warning("a Ray warning")
    console.say("extract: 3/4 videos")
    console.shout("dfpipe extract: error: a reason")
    logging.getLogger("dfpipe.runner").warning("no Ray head answers")
print("after")
"""


def test_the_log_file_takes_everything_but_the_jobs_own_lines(tmp_path):
    log = tmp_path / "logs" / "job.log"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["extract: 3/4 videos", "after"]
    assert proc.stderr.splitlines() == ["dfpipe extract: error: a reason", "WARNING: no Ray head answers"]
    text = log.read_text()
    for line in ("from C: descriptor 1", "from C: descriptor 2", "a library's print", "a Ray warning"):
        assert line in text
    assert "no Ray head answers" in text, "dfpipe's warnings: on the console and in the log"


def test_a_failure_inside_the_log_file_is_raised_and_logged(tmp_path, capfd):
    log = tmp_path / "job.log"
    with (
        pytest.raises(RuntimeError, match="boom"),
        console.log_file(storage.Folder(str(tmp_path)), "job.log"),
    ):
        raise RuntimeError("boom")
    assert "RuntimeError: boom" in log.read_text()
    print("after")
    assert "after" in capfd.readouterr().out


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_prints_now_and_then_when_not_on_a_terminal(tmp_path):
    clock = Clock()
    with open(tmp_path / "out.txt", "w") as stream:
        p = console.Progress("extract", 1000, "videos", stream=stream, now=clock)
        for i in range(1, 1001):  # a video every 1.2 s: 20 minutes
            clock.t = i * 1.2
            p.update(i, frames=300 * i)
        p.close()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert 10 <= len(lines) <= 40, lines  # not 1,000
    assert lines[0].startswith("extract: 13/1000 videos, 250.0 frames/s, 0:16 elapsed, ETA 19:44")
    assert lines[-1] == "extract: 1000/1000 videos, 250.0 frames/s, 20:00 elapsed"
    assert lines.count(lines[-1]) == 1, "the final state once"


def test_a_short_step_prints_no_progress_lines(tmp_path):
    clock = Clock()
    with open(tmp_path / "out.txt", "w") as stream:
        p = console.Progress("segment", 4, "videos", stream=stream, now=clock)
        for i in range(1, 5):
            clock.t = i
            p.update(i)
        p.close()
    assert (tmp_path / "out.txt").read_text() == ""


def job_env(ray_tmp: str) -> dict:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def test_a_job_as_a_process_prints_its_lines_and_names_its_log(sample_dataset, tmp_path, job_process):
    """As CI, cron or `ray job submit` run it: output captured, not a terminal. The machine also
    has a stale recorded head (a `ray start` head killed here leaves its address in Ray's temp
    folder): the job must say so and start a local Ray, not retry the dead address."""
    import socket

    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live below it
    os.makedirs(os.path.join(ray_tmp, "ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    Path(ray_tmp, "ray", "ray_current_cluster").write_text(dead)
    out = tmp_path / "extract"
    argv = [sys.executable, "jobs/extract.py", "--input", str(sample_dataset / "dfdc_train_part_0"),
            "--output", str(out), "max_frames=6", "face_size=64", "num_workers=1"]  # fmt: skip
    try:
        proc = subprocess.run(
            argv,
            cwd=ROOT,
            env={**job_process, "RAY_TMPDIR": ray_tmp},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:  # the job shuts its local Ray down itself (`ray stop` would kill this session's Ray too)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown[-3000:]
    assert f"no Ray head answers at {dead}" in proc.stderr, shown
    logs = list((out / "logs").glob("extract-*.log"))
    assert len(logs) == 1 and str(logs[0]) in proc.stdout, shown
    assert "== extract done ==" in proc.stdout and "videos:" in proc.stdout
    assert not [b for b in RAY_BLOCKS if b in shown], shown
    assert len(shown.splitlines()) < 15, shown
    assert "streaming_executor" in logs[0].read_text(), "Ray's output went to the log, not away"


def test_a_failing_job_as_a_process_says_why_on_the_console(tmp_path):
    argv = [
        sys.executable,
        "jobs/extract.py",
        "--input",
        str(tmp_path / "nowhere"),
        "--output",
        str(tmp_path / "x"),
    ]
    proc = subprocess.run(argv, cwd=ROOT, env=job_env("/tmp"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nowhere' does not exist" in proc.stderr
    assert "nowhere' does not exist" in next((tmp_path / "x" / "logs").glob("extract-*.log")).read_text()
    proc = subprocess.run(
        [*argv[:-1], str(tmp_path / "y"), "--verbose"],
        cwd=ROOT,
        env=job_env("/tmp"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "y").exists(), "--verbose: no log file, everything on the console"


def test_on_a_terminal_progress_is_one_line_rewritten_in_place():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock, stream = Clock(), Terminal()
    p = console.Progress("embed", 100, "windows", stream=stream, now=clock)
    for i in range(1, 101):
        clock.t = i * 0.3
        p.update(i)
    p.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("embed: 100/100 windows, 0:30 elapsed\x1b[K\n")
    assert text.count("\r") > 20, "updated about twice a second"


def test_a_failing_epoch_report_never_fails_the_training():
    """The driver hands each epoch's metrics to on_report (progress, TensorBoard, an S3 upload);
    an error there is logged, the later epochs still arrive, and training goes on."""
    from ray.util.queue import Empty

    from dfpipe.runner import _forwarded

    class Queue:  # ray.util.queue.Queue's get/shutdown, without a Ray actor
        def __init__(self):
            self.items, self.closed = [], False

        def get(self, block=True, timeout=None):
            if block or not self.items:  # what arrives late is drained after training returns
                time.sleep(0.01)
                raise Empty
            return self.items.pop(0)

        def shutdown(self):
            self.closed = True

    seen = []

    def on_report(metrics):
        seen.append(metrics["epoch"])
        if metrics["epoch"] == 0:
            raise OSError("S3 is away")

    import time

    queue = Queue()
    with _forwarded(queue, on_report):
        queue.items += [{"epoch": 0}, {"epoch": 1}]
    assert seen == [0, 1] and queue.closed


def test_a_lost_progress_queue_never_fails_the_training(caplog):
    """The queue's actor gone (its node died): the driver stops printing epochs, says so once, and
    the training it wraps finishes."""
    from ray.exceptions import RayActorError

    from dfpipe.runner import _forwarded

    class GoneQueue:
        calls = 0

        def get(self, block=True, timeout=None):
            GoneQueue.calls += 1
            raise RayActorError()

        def shutdown(self):
            raise RayActorError()

    with caplog.at_level("WARNING", logger="dfpipe.runner"), _forwarded(GoneQueue(), lambda m: None):
        finished = True
    assert finished and GoneQueue.calls == 1
    assert "epoch metrics no longer reach the driver" in caplog.text
