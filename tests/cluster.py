"""A Ray cluster of several machines, on this one: a head that runs no work (``--num-cpus 0``, token
auth on) and worker nodes, each a separate ``ray start`` with its own ports; each worker node in its
own mount namespace with a private tmpfs over ``scratch`` (a local disk no other node sees).

Used by ``tests/test_cluster.py`` (the ``cluster`` tier: ``make test-cluster``, a stage of CI) and by
hand: ``python tests/cluster.py start`` prints the environment a client needs, ``... stop`` ends it.

Every process of the cluster carries ``DFPIPE_CLUSTER=<id>`` (and ``DFPIPE_NODE=<name>``) in its
environment, so stopping it or killing one node (SIGKILL, as a spot reclaim) touches only its own
processes: never ``ray stop``, which ends every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


def tagged_pids(cluster_id: str, node: str | None = None) -> list[int]:
    """The processes whose environment carries ``DFPIPE_CLUSTER=cluster_id`` (and ``DFPIPE_NODE=node``)."""
    want = f"DFPIPE_CLUSTER={cluster_id}".encode()
    node_tag = f"DFPIPE_NODE={node}".encode() if node else None
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in environ and (node_tag is None or node_tag in environ):
            out.append(int(entry.name))
    return out


def kill_tagged(cluster_id: str, node: str | None = None, grace_s: float = 2.0) -> int:
    """End the tagged processes: SIGTERM, then SIGKILL (only SIGKILL for one node: a spot reclaim)."""
    signals = (signal.SIGKILL,) if node else (signal.SIGTERM, signal.SIGKILL)
    killed = set()
    for sig in signals:
        for pid in tagged_pids(cluster_id, node):
            try:
                os.kill(pid, sig)
                killed.add(pid)
            except ProcessLookupError:
                pass
        if sig == signal.SIGTERM:
            time.sleep(grace_s)
    return len(killed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_unshare() -> str | None:
    """None where a private mount namespace with a tmpfs can be made here, else why not."""
    if not shutil.which("unshare"):
        return "no unshare command"
    probe = tempfile.mkdtemp(prefix="dfpipe-unshare-")
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs tmpfs {probe}"],
            capture_output=True,
            text=True,
        )
        return None if proc.returncode == 0 else f"unshare --mount is not permitted: {proc.stderr.strip()}"
    finally:
        os.rmdir(probe)


class LocalCluster:
    def __init__(self, root: Path, scratch: Path, workers: int = 2, cpus_per_worker: int = 1):
        self.root, self.scratch = Path(root), Path(scratch)
        self.n_workers, self.cpus = workers, cpus_per_worker
        self.id = secrets.token_hex(4)
        self.tmp = Path(tempfile.mkdtemp(prefix="dfc", dir="/tmp"))  # short: Ray's socket paths live here
        self.gcs, self.dashboard = free_port(), free_port()
        self.token = secrets.token_hex(32)
        self.workers: list[str] = []
        self._next = 0

    # -- what a client needs ------------------------------------------------------------------------
    @property
    def env(self) -> dict:
        """The environment of a client of this cluster (``ray job submit``, a driver)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_TMPDIR=str(self.tmp),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_ADDRESS=f"http://127.0.0.1:{self.dashboard}",
            RAY_DATA_DISABLE_PROGRESS_BARS="1",
        )
        return env

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs}"

    def _node_env(self, name: str) -> dict:
        env = {**self.env, "DFPIPE_CLUSTER": self.id, "DFPIPE_NODE": name}
        env.pop("RAY_ADDRESS")
        return env

    def _ports(self) -> list[str]:
        args = []
        for flag in NODE_PORTS:
            args += [f"--{flag}", str(free_port())]
        # Worker ports below Linux's ephemeral range (32768-60999), where free_port()'s picks lie, a
        # range of 100 a node: they collide neither with the ports above nor with another node's.
        base = 20000 + ((int(self.id, 16) % 30) * 4 + self._next) * 100
        self._next += 1
        return [*args, "--min-worker-port", str(base), "--max-worker-port", str(base + 99)]

    # -- starting and stopping ----------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> LocalCluster:
        head = ["ray", "start", "--head", "--num-cpus", "0", "--node-ip-address", "127.0.0.1",
                "--port", str(self.gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
                "--ray-client-server-port", str(free_port()), "--include-dashboard=true",
                "--disable-usage-stats", *self._ports()]  # fmt: skip
        try:
            self._run(head, self._node_env("head"))
            for _ in range(self.n_workers):
                self.add_worker()
            self.wait_for_nodes(1 + self.n_workers, timeout)
        except BaseException:
            self.stop()  # a half-started cluster leaves nothing running
            raise
        return self

    def add_worker(self) -> str:
        """A worker node in a mount namespace of its own, with a tmpfs over ``scratch``."""
        name = f"worker{len(self.workers) + 1}"
        self.scratch.mkdir(parents=True, exist_ok=True)
        start = ["ray", "start", "--address", self.gcs_address, "--num-cpus", str(self.cpus),
                 "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *self._ports()]  # fmt: skip
        script = 'mount -t tmpfs -o size=2g tmpfs "$0" && exec "$@"'
        self._run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.scratch), *start],
                  self._node_env(name))  # fmt: skip
        self.workers.append(name)
        return name

    def _run(self, argv: list[str], env: dict) -> None:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def alive_nodes(self) -> list[dict]:
        code = "import json, ray; ray.init(); print(json.dumps([n for n in ray.nodes() if n['Alive']]))"
        env = {**self.env, "RAY_ADDRESS": self.gcs_address}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            return []
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, n: int, timeout: float) -> None:
        """Until ``n`` nodes are alive (a loaded machine takes over 30 s to start one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.alive_nodes()) >= n:
                return
            time.sleep(2)
        raise TimeoutError(f"the cluster did not reach {n} alive nodes in {timeout:.0f} s")

    def pids(self, node: str | None = None) -> list[int]:
        """This cluster's processes (of one node when given), found by their environment."""
        return tagged_pids(self.id, node)

    def kill_node(self, node: str) -> int:
        """SIGKILL every process of ``node`` (a spot reclaim): the count killed."""
        return kill_tagged(self.id, node)

    def stop(self) -> None:
        kill_tagged(self.id)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def submit(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir .`` of ``argv`` from the repository root, as on a cluster."""
        root = Path(__file__).resolve().parents[1]
        cmd = ["ray", "job", "submit", "--working-dir", ".", "--", *argv]
        return subprocess.run(cmd, cwd=root, env=self.env, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    state = Path(tempfile.gettempdir()) / "dfpipe-local-cluster.json"
    if sys.argv[1:] == ["start"]:
        why = can_unshare()
        if why:
            sys.exit(f"cannot start worker nodes with private disks here: {why}")
        cluster = LocalCluster(Path("."), Path("/tmp/dfpipe-node-scratch")).start()
        state.write_text(json.dumps({"id": cluster.id, "tmp": str(cluster.tmp), "env": {
            k: cluster.env[k] for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_TMPDIR")}}))  # fmt: skip
        for k, v in json.loads(state.read_text())["env"].items():
            print(f"export {k}={v}")
    elif sys.argv[1:] == ["stop"]:
        saved = json.loads(state.read_text())
        kill_tagged(saved["id"])
        shutil.rmtree(saved["tmp"], ignore_errors=True)
        state.unlink()
    elif sys.argv[1:2] == ["kill"] and len(sys.argv) == 3:  # the processes tagged DFPIPE_CLUSTER=ID
        print(f"{kill_tagged(sys.argv[2])} processes ended")
    else:
        sys.exit("usage: python tests/cluster.py start|stop|kill ID")
