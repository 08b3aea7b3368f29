"""The cluster tier: jobs through ``ray job submit`` on a Ray cluster of several machines started on this
one (tests/cluster.py): a head with no CPUs and two worker nodes, each worker with a private disk.

Run with ``make test-cluster`` (a stage of CI of its own); skipped where mount namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cluster import LocalCluster, can_unshare

SCRATCH = Path("/tmp/dfpipe-node-scratch")  # each worker node's own disk; the head sees the host's


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    why = can_unshare()
    if why:
        pytest.skip(f"worker nodes with private disks cannot be made here: {why}")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), SCRATCH, workers=2).start()
    yield cluster
    cluster.stop()


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
    from dfpipe.outputs import read_manifest
    from dfpipe.verify import check_output

    manifest = read_manifest(str(out)).to_pandas()
    assert len(manifest) == 2 and manifest.video_id.is_unique and (manifest.status == "ok").all()
    report = check_output(str(out))
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
