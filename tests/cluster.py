"""A Ray cluster of several machines, on this one: a head that runs no work (``--num-cpus 0``, token
auth on) and worker nodes, each a separate ``ray start`` with its own ports; each worker node in its
own mount namespace with a private tmpfs over ``scratch`` (a local disk no other node sees).

Used by ``tests/test_cluster.py`` (the ``cluster`` tier: ``make test-cluster``, a stage of CI) and by
hand: ``python tests/cluster.py start`` prints the environment a client needs, ``... stop`` ends it.

``lose_head()`` kills the head (and, as without GCS fault tolerance, its worker nodes with it) and
``restart()`` brings a new head at the same address and new worker nodes; ``primary_copies()`` reads
each worker node's object store from its raylet, to kill the node that holds what matters.

Each node's ``ray start`` begins a session of its own (``setsid``), which every process of the node
keeps (raylet, agents, workers), so stopping the cluster or killing one node (SIGKILL, as a spot
reclaim) touches exactly its processes: never ``ray stop``, which ends every Ray on the machine.
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
import urllib.request
from pathlib import Path

NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (Ray puts each worker in a process group of its own, but
    they all stay in the session of the ``ray start`` that began their node)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.getsid(int(entry.name)) == sid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def kill_sessions(sessions: list[int], signals=(signal.SIGTERM, signal.SIGKILL), grace_s: float = 2.0) -> int:
    """End every process of ``sessions``: the count signalled."""
    killed = set()
    for sig in signals:
        for pid in [p for sid in sessions for p in session_pids(sid)]:
            try:
                os.kill(pid, sig)
                killed.add(pid)
            except ProcessLookupError:
                pass
        if sig != signals[-1]:
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
        self.workers: list[str] = []  # the worker nodes alive (not killed)
        self.sessions: dict[str, int] = {}  # node -> its session (every process of the node is in it)
        self._next = 0  # port ranges handed out
        self._started = 0  # worker nodes started (killed ones included)
        self.raylet_ports: dict[str, int] = {}  # node -> its raylet's port

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

    @property
    def _node_env(self) -> dict:
        """The environment of a ``ray start``: the client's, less the address it would join."""
        return {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}

    def _ports(self, node: str) -> list[str]:
        args = []
        for flag in NODE_PORTS:
            args += [f"--{flag}", str(free_port())]
        self.raylet_ports[node] = int(args[1])  # --node-manager-port: where its raylet answers
        # Worker ports below Linux's ephemeral range (32768-60999), where free_port()'s picks lie, a
        # range of 100 a node (16 nodes a cluster: replacements and new heads included): they collide neither with
        # the ports above nor with another node's.
        if self._next == 16:
            raise RuntimeError("a LocalCluster starts at most 16 nodes (its worker port ranges)")
        base = 20000 + ((int(self.id, 16) % 8) * 16 + self._next) * 100
        self._next += 1
        return [*args, "--min-worker-port", str(base), "--max-worker-port", str(base + 99)]

    # -- starting and stopping ----------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> LocalCluster:
        try:
            self._start_head()
            for _ in range(self.n_workers):
                self.add_worker()
            self.wait_for_nodes(1 + self.n_workers, timeout)
        except BaseException:
            self.stop()  # a half-started cluster leaves nothing running
            raise
        return self

    def add_worker(self) -> str:
        """A worker node in a mount namespace of its own, with a tmpfs over ``scratch``."""
        self._started += 1
        name = f"worker{self._started}"
        self.scratch.mkdir(parents=True, exist_ok=True)
        # A Ray temp folder of its own, as a machine has: with the head's, a joining node's runtime-env
        # agent removed package folders that another node's new actors were importing from
        # ("cannot import name 'records' from 'dfpipe'", issue 38).
        node_tmp = self.tmp / name
        node_tmp.mkdir()
        start = ["ray", "start", "--address", self.gcs_address, "--num-cpus", str(self.cpus),
                 "--node-ip-address", "127.0.0.1", "--temp-dir", str(node_tmp), "--disable-usage-stats",
                 *self._ports(name)]  # fmt: skip
        script = 'mount -t tmpfs -o size=2g tmpfs "$0" && exec "$@"'
        self.sessions[name] = self._run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.scratch), *start],
            {**self._node_env, "RAY_TMPDIR": str(node_tmp)},
        )
        self.workers.append(name)
        return name

    def _run(self, argv: list[str], env: dict) -> int:
        """Start a node: ``argv`` in a session of its own, which every process of the node (its raylet,
        agents and workers) inherits; returns the session's id."""
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        out, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{out[-2000:]}\n{err[-2000:]}")
        return proc.pid

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

    def pids(self, node: str) -> list[int]:
        """The processes of ``node``: its session (Ray's agents rewrite their environment, so the tag
        in it does not find them all)."""
        return session_pids(self.sessions[node])

    def kill_node(self, node: str) -> int:
        """SIGKILL every process of ``node`` (a spot reclaim): the count killed. The node leaves
        ``workers``; ``add_worker`` brings a replacement, as an autoscaler would."""
        self.workers.remove(node)
        return kill_sessions([self.sessions[node]], (signal.SIGKILL,))

    def lose_head(self) -> int:
        """SIGKILL every process of the head (GCS, dashboard, job supervisors, the jobs' drivers): the count
        killed. Without GCS fault tolerance a worker node's raylet ends once it cannot reach the GCS
        (``gcs_rpc_server_reconnect_timeout_s``, 60 s), and a new GCS is another cluster to it, so the
        worker nodes are lost too: they are killed here at once rather than a minute later."""
        killed = kill_sessions([self.sessions.pop("head")], (signal.SIGKILL,))
        for node in list(self.workers):
            killed += self.kill_node(node)
        return killed

    def restart(self, timeout: float = 180.0) -> LocalCluster:
        """A new head at the same address and new worker nodes joining it, as a cluster's head pod and
        autoscaler bring them back after a head is lost."""
        self._start_head()
        for _ in range(self.n_workers):
            self.add_worker()
        self.wait_for_nodes(1 + self.n_workers, timeout)
        return self

    def _start_head(self) -> None:
        head = ["ray", "start", "--head", "--num-cpus", "0", "--node-ip-address", "127.0.0.1",
                "--port", str(self.gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
                "--ray-client-server-port", str(free_port()), "--include-dashboard=true",
                "--disable-usage-stats", *self._ports("head")]  # fmt: skip
        self.sessions["head"] = self._run(head, self._node_env)

    def stop(self) -> None:
        kill_sessions(list(self.sessions.values()))
        shutil.rmtree(self.tmp, ignore_errors=True)

    def submit(
        self, *argv: str, timeout: float = 600, env_vars: dict | None = None, job_id: str | None = None
    ) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir .`` of ``argv`` from the repository root, as on a cluster;
        ``env_vars`` reach the job's driver and every worker process (its runtime environment). With
        ``job_id`` it returns once the job is accepted (``--no-wait``): follow it with ``job_logs``."""
        root = Path(__file__).resolve().parents[1]
        cmd = ["ray", "job", "submit", "--working-dir", "."]
        if env_vars:
            cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
        if job_id:
            cmd += ["--no-wait", "--submission-id", job_id]
        cmd += ["--", *argv]
        return subprocess.run(cmd, cwd=root, env=self.env, capture_output=True, text=True, timeout=timeout)

    def _api(self, path: str) -> dict:
        """A GET of the head's job API (plain HTTP with the token: no Ray client in this process)."""
        request = urllib.request.Request(
            f"{self.env['RAY_ADDRESS']}/api/jobs/{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def job_logs(self, job_id: str) -> str:
        return self._api(f"{job_id}/logs").get("logs", "")

    def job_status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return self._api(job_id)["status"]

    def primary_copies(self) -> dict[str, int]:
        """Bytes of objects whose primary copy is in each worker node's object store (its raylet's stats):
        what is lost, and must be made again, when that node dies."""
        ports = {node: self.raylet_ports[node] for node in self.workers}
        code = (
            "import json, sys; from ray._private.internal_api import node_stats; out = {}\n"
            "for node, port in json.loads(sys.argv[1]).items():\n"
            "    try: out[node] = node_stats('127.0.0.1', port, include_memory_info=False)"
            ".store_stats.object_store_bytes_primary_copy\n"
            "    except Exception: out[node] = 0\n"
            "print(json.dumps(out))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(ports)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"raylet stats failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def node_running(self, title: str) -> str | None:
        """The first worker node with a process whose title (Ray's ``ray::...``) contains ``title``."""
        for node in self.workers:
            for pid in self.pids(node):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if cmdline.startswith("ray::") and title in cmdline:
                    return node
        return None


if __name__ == "__main__":
    state = Path(tempfile.gettempdir()) / "dfpipe-local-cluster.json"
    if sys.argv[1:] == ["start"]:
        why = can_unshare()
        if why:
            sys.exit(f"cannot start worker nodes with private disks here: {why}")
        cluster = LocalCluster(Path("."), Path("/tmp/dfpipe-node-scratch")).start()
        state.write_text(json.dumps({"id": cluster.id, "tmp": str(cluster.tmp), "sessions": cluster.sessions, "env": {
            k: cluster.env[k] for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_TMPDIR")}}))  # fmt: skip
        for k, v in json.loads(state.read_text())["env"].items():
            print(f"export {k}={v}")
    elif sys.argv[1:] == ["stop"]:
        saved = json.loads(state.read_text())
        kill_sessions(list(saved["sessions"].values()))
        shutil.rmtree(saved["tmp"], ignore_errors=True)
        state.unlink()
    else:
        sys.exit("usage: python tests/cluster.py start|stop")
