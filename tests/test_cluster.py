"""The cluster tier: jobs through ``ray job submit`` on a Ray cluster of several machines started on this
one (tests/cluster.py): a head with no CPUs and two worker nodes, each worker with a private disk.

Run with ``make test-cluster`` (a stage of CI of its own); skipped where mount namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cluster import LocalCluster, can_unshare

from dfpipe.storage import Folder

SCRATCH = Path("/tmp/dfpipe-node-scratch")  # each worker node's own disk; the head sees the host's


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    why = can_unshare()
    if why:
        pytest.skip(f"worker nodes with private disks cannot be made here: {why}")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), SCRATCH, workers=2).start()
    yield cluster
    cluster.stop()


def test_a_submit_without_the_clusters_token_is_refused(local_cluster, tmp_path):
    """Token authentication is on (as on every dfpipe cluster): a submit with a wrong token, or with
    none at all, is refused for that reason and runs nothing."""
    import subprocess

    wrong = {**local_cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}
    none = {k: v for k, v in local_cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    none.update(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))  # no ~/.ray/auth_token either
    for env in (wrong, none):
        proc = subprocess.run(
            ["ray", "job", "submit", "--", "python", "-c", "print('ran')"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        shown = proc.stdout + proc.stderr
        assert proc.returncode != 0, shown[-2000:]
        assert "ran" not in proc.stdout.splitlines() and "AuthenticationError" in shown, shown[-2000:]


def test_a_local_output_no_worker_sees_is_refused_before_any_work(local_cluster, sample_dataset):
    """The driver runs on the head; the output is a folder of the head's disk that each worker node has
    its own of. The job stops at start-up with exit 2, names the path and the nodes and the fix, and
    writes nothing (no log file either)."""
    out = SCRATCH / "extract-out"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's (the head sees the machine's folder)
    proc = local_cluster.submit(
        "python", "jobs/extract.py", "--input", str(sample_dataset / "dfdc_train_part_1"), "--output", str(out),
        "face_size=64", "max_frames=6",
    )  # fmt: skip
    shown = proc.stdout + proc.stderr
    assert proc.returncode != 0, shown[-3000:]
    assert "exit code 2" in shown or "code 2" in shown, shown[-3000:]
    assert f"--output {out} is not seen by node(s)" in shown, shown[-3000:]
    assert shown.count("127.0.0.1") + shown.count("192.") >= 2 or "node(s)" in shown
    assert "s3://" in shown and "mounted at the same path on every node" in shown
    assert not out.exists(), "refused before anything was written"


def test_storage_every_node_sees_passes_and_the_job_runs(local_cluster, sample_dataset, tmp_path):
    """The same job with its output on a folder every node sees (here the machine's /tmp, as NFS would
    be): no refusal, and the manifest holds every video once."""
    out = tmp_path / "shared-out"
    proc = local_cluster.submit(
        "python", "jobs/extract.py", "--input", str(sample_dataset / "dfdc_train_part_1"), "--output", str(out),
        "face_size=64", "max_frames=6",
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    from dfpipe.invariants import check_output
    from dfpipe.outputs import read_manifest

    manifest = read_manifest(Folder(str(out))).to_pandas()
    assert len(manifest) == 2 and manifest.video_id.is_unique and (manifest.status == "ok").all()
    report = check_output(Folder(str(out)))
    assert report.ok, report.format()
    assert not [p for p in os.listdir(out) if p.startswith(".dfpipe-visible-")], "the check's markers removed"


def test_the_progress_queue_lives_on_the_drivers_node(local_cluster):
    """The actor that carries epoch metrics to the driver is pinned to the driver's node (the head here,
    which has no CPUs), so losing a worker node cannot take it, and the training job, with it."""
    code = (
        "import json, ray; ray.init();"
        "from ray.util.queue import Queue; from dfpipe.runner import driver_node_options;"
        "q = Queue(actor_options=driver_node_options()); q.put(1); assert q.get() == 1;"
        "from ray.util.state import list_actors;"
        "here = ray.get_runtime_context().get_node_id();"
        "nodes = [a.node_id for a in list_actors(filters=[('class_name', '=', '_QueueActor')])];"
        "print('QUEUE', json.dumps({'here': here, 'nodes': nodes}))"
    )
    proc = local_cluster.submit("python", "-c", code)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("QUEUE"))
    seen = json.loads(line.split(" ", 1)[1])
    assert seen["nodes"] == [seen["here"]], seen


# -- the whole product on the cluster, S3 to S3, a worker node lost in every step ------------------------

BUCKET = "dfpipe-cluster"
PIPELINE_OPTIONS = (
    "extract.face_size=64", "extract.max_frames=24", "segment.window_len=8", "segment.window_stride=8",
    "segment.val_parts=dfdc_train_part_1",
    # The embedder on both worker nodes (one worker each): a lost node stops every worker, and the run
    # goes on once a replacement node has joined. The classifier on one: it goes on on the other node.
    "train_embedder.face_size=80", "train_embedder.epochs=2", "train_embedder.batch_size=4",
    "train_embedder.steps_per_epoch=1", "train_embedder.faces_per_window=2", "train_embedder.num_workers=2",
    "train_classifier.epochs=2", "train_classifier.batch_size=8", "train_classifier.num_workers=1",
    "train_classifier.hidden_size=16", "train_classifier.min_loss_drop=0",
)  # fmt: skip


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(BUCKET)
    return fs


@pytest.fixture(scope="module")
def job_env(s3_endpoint) -> dict:
    """What every process of a job needs to reach the bucket (as a cluster's nodes would have)."""
    return {
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@dataclass
class Loss:
    """Where to kill a node: once the job has printed ``banner`` (None: from the start), ``ready()``
    holds and a worker node runs a process titled ``title``."""

    step: str
    title: str
    ready: object = None  # a callable, or None
    banner: str | None = None
    killed: dict = field(default_factory=dict)  # node, processes, at (monotonic), then step_left_s
    pick: object = None  # a callable naming the node to kill; None: the first running ``title``

    @property
    def ended(self) -> str | None:
        """The line the job prints when the step ends (``dfpipe run``); None: the job's end."""
        return f"-- {self.step} took" if self.banner else None


def lose_nodes(
    cluster, job_id: str, losses: list[Loss], timeout: float = 900, head: Loss | None = None
) -> str:
    """Follow a submitted job; in each of ``losses``, in order, SIGKILL the worker node running the
    step's work and start a replacement (as an autoscaler would). Returns the job's log once it ends.

    With ``head``, once every loss is done and ``head`` is ready, SIGKILL the head instead (GCS,
    dashboard, this job's driver; the worker nodes with it), start a new head and new worker nodes
    at the same address (:meth:`LocalCluster.restart`), and return the job's log until then."""
    pending = list(losses)
    joining: list[threading.Thread] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.job_status(job_id)
        logs = cluster.job_logs(job_id)
        over = status in ("SUCCEEDED", "FAILED", "STOPPED")
        for lost in losses:  # how long each step went on after its node died
            if (
                lost.killed
                and "step_left_s" not in lost.killed
                and (over or (lost.ended and lost.ended in logs))
            ):
                lost.killed["step_left_s"] = round(time.monotonic() - lost.killed["at"], 1)
        if over:
            break
        if head and not pending and (head.banner is None or head.banner in logs) and head.ready():
            for thread in joining:
                thread.join(timeout=180)
            head.killed = {"node": "head", "at": time.monotonic(), "processes": cluster.lose_head()}
            cluster.restart()
            head.killed["step_left_s"] = round(time.monotonic() - head.killed["at"], 1)  # the restart
            return logs
        loss = pending[0] if pending else None
        if loss and (loss.banner is None or loss.banner in logs) and (loss.ready is None or loss.ready()):
            node = loss.pick() if loss.pick else cluster.node_running(loss.title)
            if node:
                loss.killed = {"node": node, "at": time.monotonic(), "processes": cluster.kill_node(node)}
                thread = threading.Thread(target=cluster.add_worker, daemon=True)
                thread.start()
                joining.append(thread)
                pending.pop(0)
                continue
        time.sleep(0.3)
    else:
        raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s:\n{logs[-3000:]}")
    for thread in joining:
        thread.join(timeout=180)
    assert status == "SUCCEEDED", f"job {job_id} {status}:\n{logs[-5000:]}"
    assert head is None, f"job {job_id} ended before the head was lost in {head.step}:\n{logs[-3000:]}"
    missed = [loss.step for loss in losses if not loss.killed]
    assert not missed, f"no node was killed during {missed}: the step ended first\n{logs[-3000:]}"
    return logs


def listed(s3, pattern: str):
    """Whether anything matches ``pattern`` in the bucket now (s3fs caches listings: fresh each time)."""

    def ready() -> bool:
        s3.invalidate_cache()
        return bool(s3.glob(pattern.removeprefix("s3://")))

    return ready


def parquet_under(s3, uri: str):
    return listed(s3, uri + "/**/*.parquet")


def checkpoint_of(s3, uri: str):
    """A checkpoint Ray Train has recorded (its manager's snapshot): a kill before it is a kill before
    the first checkpoint, and the restarted workers rightly start over."""
    return listed(s3, uri + "/_train/*/checkpoint_manager_snapshot.json")


HELD: dict[str, int] = {}  # bytes of primary copies per worker node when the embedder's node was picked


def holding_most_or_training(cluster) -> str | None:
    """The worker node with the most bytes of primary copies in its object store, or else one running a
    training worker; so that a node holding training blocks, were there any, is the one lost."""
    HELD.clear()
    HELD.update(cluster.primary_copies())
    most = max(HELD, key=HELD.get, default=None)
    return most if most and HELD[most] > 0 else cluster.node_running("RayTrainWorker")


def saved_checkpoint_of(s3, uri: str):
    """A checkpoint marked saved (:func:`dfpipe.runner.mark_saved`), the moment its epoch is reported."""
    from dfpipe.runner import SAVED

    return listed(s3, f"{uri}/_train/*/*/{SAVED}")


def test_the_pipeline_and_rescore_s3_to_s3_survive_a_node_lost_in_every_step_and_the_head_lost(
    local_cluster, sample_dataset, s3, job_env
):
    """`run` and `rescore` through `ray job submit`, all data on S3, the drivers on the head.

    In each step a worker node is killed (every process, SIGKILL) while it does the step's work, and a
    replacement joins; in the embedder's training the moment epoch 0 is saved (the moment the driver
    says so). The head (GCS, dashboard, the driver) is killed in the classifier's training once it has
    saved an epoch, and in rescore's extraction while rescore holds its lock: each time a new head
    starts at the same address, new worker nodes join it, and the same `ray job submit` runs again.

    Each job finishes, `dfpipe check` finds nothing lost or doubled, every video is in each manifest
    once, each training resumed from its checkpoint with every epoch once in its history, and the
    rescore lock left by the lost driver is taken over at once (its process is provably gone)."""
    from dfpipe.extract.catalog import build_catalog
    from dfpipe.invariants import check_output
    from dfpipe.jobs.rescore import dump_output
    from dfpipe.outputs import read_manifest, read_scores
    from dfpipe.storage import Folder, StorageOptions, read_json

    data, run = f"s3://{BUCKET}/data", f"s3://{BUCKET}/run"
    s3.put(str(sample_dataset), data.removeprefix("s3://"), recursive=True)
    actor = "_StageActor"  # the title of the actor pool's processes in each Ray Data step

    def banner(step: str) -> str:
        return f"== pipeline step: {step} =="

    losses = [
        Loss("extract", actor, parquet_under(s3, f"{run}/extract"), banner("extract")),
        Loss("segment", actor, None, banner("segment")),
        # The moment epoch 0's checkpoint is saved, which is the moment the driver is told of it,
        # before Ray Train may have recorded it: the resume must still start after epoch 0. The node
        # killed is the one holding the most primary copies in its object store (Ray's raylet stats):
        # were the training input blocks there (materialised, not staged in storage), the restarted
        # workers would wait for blocks that died with it (issue 25), and this test fails every time.
        Loss("train_embedder", "RayTrainWorker", saved_checkpoint_of(s3, f"{run}/models/embedder"),
             banner("train_embedder"), pick=lambda: holding_most_or_training(local_cluster)),
    ]  # fmt: skip
    head_in_training = Loss(
        "train_classifier",
        "head",
        saved_checkpoint_of(s3, f"{run}/models/classifier"),
        banner("train_classifier"),
    )
    after_head = [Loss("score", actor, parquet_under(s3, f"{run}/score"), banner("score"))]
    pipeline = ("python", "jobs/run.py", "--input", data, "--output", run, *PIPELINE_OPTIONS)
    started = rerun = time.monotonic()
    for job_id, job_losses, head in (
        ("pipeline-node-loss", losses, head_in_training),
        ("pipeline-after-head-loss", after_head, None),
    ):
        rerun = time.monotonic()
        proc = local_cluster.submit(*pipeline, env_vars=job_env, job_id=job_id)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        logs = lose_nodes(local_cluster, job_id, job_losses, head=head)
        if head:
            before_head = logs
    took, rerun = time.monotonic() - started, time.monotonic() - rerun

    opts = StorageOptions(endpoint_url=job_env["AWS_ENDPOINT_URL_S3"])
    report = check_output(Folder(run, opts))
    assert report.ok, report.format()
    assert len(report.checked) >= 3, report.format()  # extract, segment and score, at least
    manifest = read_manifest(Folder(f"{run}/extract", opts)).to_pandas()
    assert (
        len(manifest) == build_catalog(Folder(str(sample_dataset))).num_rows and manifest.video_id.is_unique
    )
    for model in ("embedder", "classifier"):
        epochs = [e["epoch"] for e in read_json(f"{run}/models/{model}/metrics.json", opts)["epochs"]]
        assert epochs == [0, 1], f"{model}: every epoch once, in order: {epochs}"
    assert "train_embedder: resuming from the checkpoint of epoch 0" in before_head, before_head[-5000:]
    assert "train_classifier: resuming from the checkpoint of epoch 0" in logs, logs[-5000:]
    assert "no checkpoint yet" not in before_head + logs, (before_head + logs)[-5000:]
    assert read_json(f"{run}/score/report/report.json", opts)

    # rescore of a dump, a worker node lost while it extracts. Then that dump and a second one, the head
    # lost while the second is extracted (rescore holds its lock), and the same submit again.
    rescore = f"s3://{BUCKET}/rescore"
    dumps = [f"{data}/dfdc_train_part_1", f"{data}/dfdc_train_part_0"]

    def rescoring(*inputs: str) -> tuple[str, ...]:
        repeated = [arg for dump in inputs for arg in ("--input", dump)]
        return ("python", "jobs/rescore.py", *repeated, "--model", f"{run}/models/classifier",
                "--output", rescore)  # fmt: skip

    loss = Loss("rescore", actor, parquet_under(s3, dump_output(Folder(rescore, opts), dumps[0]).uri))
    assert (
        local_cluster.submit(*rescoring(dumps[0]), env_vars=job_env, job_id="rescore-node-loss").returncode
        == 0
    )
    lose_nodes(local_cluster, "rescore-node-loss", [loss])
    second = dump_output(Folder(rescore, opts), dumps[1]).uri
    lock = f"{rescore}/rescore.lock".removeprefix("s3://")
    shards_of_second = parquet_under(s3, second)
    head_in_rescore = Loss("rescore (head)", "head", lambda: shards_of_second() and s3.exists(lock))
    assert (
        local_cluster.submit(*rescoring(*dumps), env_vars=job_env, job_id="rescore-head-loss").returncode == 0
    )
    lose_nodes(local_cluster, "rescore-head-loss", [], head=head_in_rescore)
    rescore_again = time.monotonic()
    again = local_cluster.submit(*rescoring(*dumps), env_vars=job_env)
    rescore_again = time.monotonic() - rescore_again
    shown = again.stdout + again.stderr
    assert again.returncode == 0, shown[-3000:]
    assert "another run is in progress" not in shown, shown[-3000:]
    report = check_output(Folder(rescore, opts))
    assert report.ok, report.format()
    for dump in dumps:
        scores = read_scores(dump_output(Folder(rescore, opts), dump)).to_pandas()
        assert (
            len(scores) == len(s3.glob(dump.removeprefix("s3://") + "/*.mp4")) and scores.video_id.is_unique
        )
    stats = read_json(f"{rescore}/rescore_stats.json", opts)
    assert stats["dumps"][dumps[0]]["scored_this_run"] == 0, "the first dump: nothing new after its rescore"

    # for the README and the notes: each loss and how long the step went on
    for lost in [*losses, head_in_training, *after_head, loss, head_in_rescore]:
        what = "the head and every worker node" if lost.title == "head" else lost.killed["node"]
        after = "a new head and worker nodes joined" if lost.title == "head" else "the step ended"
        print(
            f"NODE LOSS {lost.step}: killed {what} ({lost.killed['processes']} processes); "
            f"{after} {lost.killed['step_left_s']} s later"
        )
    print(f"NODE LOSS train_embedder: bytes of primary copies per worker node when picked: {HELD}")
    print(f"NODE LOSS pipeline with {len(losses) + 2} losses, the head one of them: {took:.0f} s")
    print(
        f"HEAD LOSS the same submits again: the pipeline {rerun:.0f} s (a node lost in score too), "
        f"rescore {rescore_again:.0f} s"
    )
