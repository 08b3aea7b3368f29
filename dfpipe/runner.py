"""Where stages run: the only module that turns dfpipe stages into Ray work.

Stages are plain objects with ``setup()`` and ``__call__(batch) -> batch`` and a ``resources``
attribute; :func:`map_stage` maps them onto ``Dataset.map_batches`` with an actor pool, so the
stage is set up (models loaded) once per actor.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dfpipe import storage
from dfpipe.config import JobError

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, capacity_wait_s: float | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else to the head
    ``ray start`` left running on this machine, else start a local Ray.

    Ray records the last ``ray start`` head in a file of its temp folder and ``ray.init()`` joins it;
    if that head was killed the file stays, and ``ray.init()`` retries the dead address for a minute
    or forever. A recorded head that does not answer is reported and a local Ray starts instead.

    ``capacity_wait_s`` bounds how long a Ray Data step of this process may go without progress
    (its actors lost with their nodes and no capacity to start others) before it fails.
    """
    import ray

    if capacity_wait_s is not None:
        from ray.data import DataContext

        DataContext.get_current().execution_no_progress_timeout_s = capacity_wait_s
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        recorded, where = recorded_head()
        if recorded and not answers(recorded):
            log.warning(
                "no Ray head answers at %s, recorded in %s by an earlier `ray start` (stopped or killed): "
                "starting a local Ray; set RAY_ADDRESS to join a cluster",
                recorded,
                where,
            )
            address = "local"
    ray.init(address=address, log_to_driver=True)


def recorded_head() -> tuple[str | None, str]:
    """The head address the last ``ray start`` on this machine recorded, and the file holding it."""
    tmp = os.environ.get("RAY_TMPDIR") or (
        os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None
    )
    path = os.path.join(tmp or "/tmp", "ray", "ray_current_cluster")
    try:
        with open(path) as fh:
            return fh.read().strip() or None, path
    except OSError:
        return None, path


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether anything accepts a TCP connection at ``host:port`` (a live head's GCS does)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def joins_cluster(address: str | None = None) -> bool:
    """Whether a job would run on a cluster that may have other machines: Ray already connected, an
    address given (or ``RAY_ADDRESS``, as under ``ray job submit``), or a live head ``ray start``
    recorded on this machine. A local Ray started for the job is one machine."""
    import ray

    if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"):
        return True
    recorded, _ = recorded_head()
    return bool(recorded and answers(recorded))


def _sees(probe: dict) -> bool:
    """On one node: whether ``probe``'s path is the driver's (its marker file, or for a path the
    driver cannot write, the same entries)."""
    if probe.get("marker"):
        return os.path.exists(probe["marker"])
    try:
        return sorted(os.listdir(probe["path"]))[:64] == probe["names"]
    except OSError:
        return os.path.isfile(probe["path"]) and probe["names"] is None


def unseen_paths(paths: dict[str, str], timeout_s: float = 60.0) -> dict[str, list[str]]:
    """For each local path of ``paths`` (name -> path) that some alive node of the cluster cannot
    see as the driver sees it, the nodes that cannot (``ip (node id)``; a node that did not answer
    within ``timeout_s`` counts). Empty on a cluster of one node, and for object-store URIs.

    As Ray Train validates its storage path: the driver writes a marker file (for a path it cannot
    write, it lists the entries) and a zero-CPU task pinned to every alive node looks for it.
    """
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not paths:
        return {}
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not nodes:
        return {}
    probes, cleanup = {}, []
    for name, path in paths.items():
        probe = {"path": path, "marker": None, "names": None}
        target = path if os.path.isdir(path) else None
        created = None
        if target is None and not os.path.exists(path):  # an output not made yet: made for the check
            created = path
            while created and not os.path.exists(os.path.dirname(created)):
                created = os.path.dirname(created)
            try:
                os.makedirs(path)
                target = path
            except OSError:
                created = None
        marker = os.path.join(target, f".dfpipe-visible-{uuid.uuid4().hex[:12]}") if target else None
        try:
            if marker is None:
                raise OSError("not a folder")
            with open(marker, "w") as fh:
                fh.write("written by the driver to check that every node sees this folder\n")
            probe["marker"] = marker
        except OSError:
            marker = None
            try:
                probe["names"] = sorted(os.listdir(path))[:64]
            except OSError:
                probe["names"] = None
        probes[name] = probe
        cleanup.append((marker, created))
    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    try:
        pending = {
            (name, f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})"): sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(probe)
            for name, probe in probes.items()
            for n in nodes
        }
        ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=timeout_s)
        answers_of = {}  # a node that did not answer in time, or died meanwhile, does not see the path
        for ref in ready:
            try:
                answers_of[ref] = bool(ray.get(ref))
            except ray.exceptions.RayError:
                answers_of[ref] = False
        unseen: dict[str, list[str]] = {}
        for (name, node), ref in pending.items():
            if not answers_of.get(ref, False):
                unseen.setdefault(name, []).append(node)
        return unseen
    finally:
        for marker, created in cleanup:
            if marker:
                try:
                    os.remove(marker)
                except OSError:
                    pass
            if created:
                shutil.rmtree(created, ignore_errors=True)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def use_gpus(choice: bool | None) -> bool:
    """A job's ``use_gpu`` option: as given, else whether the cluster has GPUs."""
    return choice if choice is not None else cluster_gpus() > 0


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


class _StageActor:
    """Holds one stage per Ray actor; ``setup()`` runs once, in the actor.

    The stage comes pickled and is unpickled here, so that an import that fails on this node (its
    copy of the job's package half gone, a library missing) fails in the constructor, where it is
    caught: a fault of the node (:data:`NODE_FAULTS`) ends this actor's process once, and Ray starts
    the actor again, where the cluster has room; a second fault is the step's error, with its reason.
    An exception in a constructor would otherwise fail the whole step at once.
    """

    def __init__(self, stage: bytes):
        import ray
        from ray import cloudpickle

        try:
            self.stage = cloudpickle.loads(stage)
            self.stage.setup()
        except NODE_FAULTS as exc:
            if ray.get_runtime_context().was_current_actor_reconstructed:
                raise
            log.error(
                "this actor cannot start on this node (%s: %s); Ray starts it again", type(exc).__name__, exc
            )
            logging.shutdown()
            os._exit(1)  # an actor process that ends is started again (a pool's actors may restart)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def pool_size(stage) -> int:
    """How many actors the cluster can hold for ``stage`` (its own cap wins)."""
    res = stage.resources
    if res.max_workers:
        return max(1, res.max_workers)
    by_cpu = cluster_cpus() / max(res.num_cpus, 1e-3)
    by_gpu = cluster_gpus() / res.num_gpus if res.num_gpus else math.inf
    return max(1, int(min(by_cpu, by_gpu)))


def map_stage(ds, stage, n_rows: int | None = None):
    """``ds.map_batches`` over an actor pool running ``stage``, each actor given the CPUs and GPUs of
    ``stage.resources``.

    With ``n_rows`` known, the pool starts at its full size (never more actors than batches)
    instead of growing from one actor as Ray Data's autoscaler sees a queue: on a short job the
    growing took most of the run.
    """
    import ray
    from ray import cloudpickle

    res = stage.resources
    size = pool_size(stage)
    start = 1 if n_rows is None else max(1, min(size, math.ceil(n_rows / res.batch_size)))
    log.info(
        "%s: actor pool of up to %d (cpus=%s, gpus=%s each)",
        type(stage).__name__,
        size,
        res.num_cpus,
        res.num_gpus,
    )
    return ds.map_batches(
        _StageActor,
        fn_constructor_kwargs={"stage": cloudpickle.dumps(stage)},
        batch_size=res.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            min_size=start, max_size=size, max_tasks_in_flight_per_actor=res.tasks_in_flight
        ),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
    )


def read_parquet(folder: storage.Folder, columns: list[str] | None = None, where=None):
    """A Ray dataset streamed from the Parquet files under ``folder`` (local or object storage), of
    the rows matching ``where`` (a ``pyarrow.compute`` expression, applied as the files are read)."""
    import ray

    fs, path = storage.arrow_filesystem(folder.uri, folder.options)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=columns)
    if where is None:
        return ds
    return ds.map_batches(_Where(where), batch_size=None, batch_format="pyarrow")


class _Where:
    """Keeps the rows of a block that match a pyarrow expression (vectorised, in the read tasks)."""

    def __init__(self, expression):
        self.expression = expression

    def __call__(self, table: pa.Table) -> pa.Table:
        return table.filter(self.expression)


def dataset_from_table(table: pa.Table, rows_per_block: int = 1):
    """A Ray dataset of ``table`` cut into small blocks, so an actor pool can spread the rows.

    ``from_blocks`` describes the blocks here; ``from_arrow`` asks a task per block, and its driver
    then kept about 50 KB a block, against 6-11 KB (``bench/scale.py``). Either way the cost lasts
    as long as the dataset: for a table of one row per video use :func:`map_rows`, which gives Ray a
    window at a time."""
    import ray

    n = table.num_rows
    rows_per_block = max(rows_per_block, math.ceil(n / 10_000))
    blocks = [table.slice(i, rows_per_block) for i in range(0, n, rows_per_block)] or [table]
    return ray.data.from_blocks(blocks)


# What a stage's actor cannot start for because of its node, not its input: an import that fails (the
# node's copy of the job's package incomplete) or a file or working directory gone.
NODE_FAULTS = (ImportError, FileNotFoundError)


# Blocks in one window of :func:`map_rows`, at least (``WINDOW_TASKS_PER_ACTOR`` per actor where
# the pool is larger). The driver holds about 12 KB a block of the window (extraction, one video a
# block): 12 MB for 1,024, 380 MB for a pool of 1,000 GPUs. Each window starts its pool again.
WINDOW_BLOCKS = 1024
WINDOW_TASKS_PER_ACTOR = 32


def window_rows(stage, rows_per_block: int = 1) -> tuple[int, int]:
    """The rows of one block and of one window when :func:`map_rows` runs ``stage``: a block is a
    task's batch (or ``rows_per_block``, when larger); a window is ``WINDOW_BLOCKS`` blocks, or
    ``WINDOW_TASKS_PER_ACTOR`` per actor of the pool where that is more, so that starting the pool
    again (models loaded) is paid once per 32 tasks of each actor at most."""
    block = max(1, rows_per_block, stage.resources.batch_size)
    return block, block * max(WINDOW_BLOCKS, WINDOW_TASKS_PER_ACTOR * pool_size(stage))


def map_rows(table: pa.Table, stage, rows_per_block: int = 1) -> Iterator[pa.Table]:
    """``stage`` over every row of ``table`` on an actor pool (:func:`map_stage`), its output
    streamed back to the driver table by table.

    The rows go to Ray a window at a time (:func:`window_rows`), each window a dataset of its own.
    Ray Data's driver keeps some KB for each block of a dataset while the dataset lives, so one
    dataset of a block per video grew the driver with the input (20-55 KB a video before: about
    700 MB at 16k videos, 20-55 GB at a million). A window's share is freed before the next one
    starts, so the driver holds one window whatever the input's size. Each window starts its actor
    pool again: seconds (models loaded), against 32 tasks or more for each actor.
    """
    if not table.num_rows:
        return
    block, window = window_rows(stage, rows_per_block)
    for start in range(0, table.num_rows, window):
        rows = table.slice(start, window)
        ds = map_stage(dataset_from_table(rows, rows_per_block=block), stage, n_rows=rows.num_rows)
        yield from iter_tables(ds)
        del ds  # its blocks' bookkeeping goes before the next window's comes


def iter_tables(ds) -> Iterator[pa.Table]:
    """Stream a dataset's output to the driver block by block (never all of it at once)."""
    from ray.data.exceptions import ExecutionTimeoutError

    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except ExecutionTimeoutError as exc:
        raise JobError(
            f"no progress for {ds.context.execution_no_progress_timeout_s:.0f} s: the cluster has no "
            f"capacity left for this step (its nodes lost and none back, or every CPU taken). "
            f"Rerun once it has: what is done is kept and only the rest runs; or allow a longer "
            f"wait with capacity_wait_s=SECONDS. Ray: {str(exc).splitlines()[0]}"
        ) from exc


@dataclass(frozen=True)
class TrainingHooks:
    """What the runner needs from training, given rather than imported (training sits above the
    runner): how a checkpoint's ``state.pt`` bytes become a state (``load_state(data, source)``,
    raising a ``ValueError`` for a damaged file), and an epoch's line for a worker's own log."""

    load_state: Callable[[bytes, str], dict]
    epoch_line: Callable[[dict], str]


class RayTrainContext:
    """A :class:`dfpipe.train.loops.TrainContext` backed by Ray Train, inside a TorchTrainer worker."""

    def __init__(self, hooks: TrainingHooks, progress=None):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.progress = progress  # a ray.util.queue.Queue the driver reads epoch metrics from
        self.hooks = hooks

    def batches(self, name, batch_size, shuffle=False, seed=None):
        import ray.train

        shard = ray.train.get_dataset_shard(worker_dataset(name, self.rank))
        yield from shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * batch_size if shuffle else None,
            local_shuffle_seed=seed if shuffle else None,
        )

    def prepare(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def latest_checkpoint(self):
        """The state of the newest epoch saved in storage (:func:`saved_checkpoints`).

        Not only Ray Train's own latest checkpoint: Ray records a checkpoint when its controller next
        hears from the workers, so a worker lost just after an upload leaves a checkpoint in storage
        that Ray never recorded, for an epoch the driver has already reported.
        """
        import ray.train

        storage = ray.train.get_context().get_storage()
        return newest_state(
            storage.storage_filesystem,
            storage.experiment_fs_path,
            self.hooks.load_state,
            ray.train.get_checkpoint(),
        )

    def report(self, metrics, state):
        """Rank 0 saves ``state`` as a checkpoint; the epoch goes to the driver (console, TensorBoard,
        history) only once that checkpoint is in storage and marked saved, so a reported epoch is never
        trained again after a loss."""
        import tempfile

        import ray.train
        import torch

        if state is None:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state, os.path.join(folder, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            mark_saved(ray.train.get_checkpoint(), int(state["epoch"]))
        if self.rank == 0:
            self._tell_driver(metrics)

    def _tell_driver(self, metrics: dict) -> None:
        """Epoch metrics go to the driver, which prints them once (worker stdout is only logged)."""
        if self.progress is None:
            print(self.hooks.epoch_line(metrics), flush=True)
            return
        try:
            self.progress.put_nowait(dict(metrics))
        except Exception as exc:  # the driver's progress lines are not worth a failed epoch
            log.warning("could not send epoch metrics to the driver: %s", exc)

    def all_gather(self, obj):
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def checkpoint_state(checkpoint, load_state: Callable[[bytes, str], dict]) -> dict:
    """The training state a Ray Train checkpoint holds (:func:`read_state`)."""
    return read_state(checkpoint.filesystem, checkpoint.path, load_state)


def read_state(fs, folder: str, load_state: Callable[[bytes, str], dict]) -> dict:
    """The training state in checkpoint ``folder`` of pyarrow filesystem ``fs``, read straight from storage.

    Not through ``Checkpoint.as_directory()``: that downloads into a temporary folder named after the
    checkpoint and shared by every process of the node, so a worker that arrives once another's
    download has ended downloads again over the file the other is still reading. Two workers resuming
    on one node then read a truncated ``state.pt``, refused as damaged (the cluster tier's node-loss
    test failed so in CI on 2026-12-07). ``load_state(data, source)``: :class:`TrainingHooks`.
    """
    path = f"{folder.rstrip('/')}/state.pt"
    with fs.open_input_stream(path) as f:
        return load_state(f.read(), f"checkpoint {path}")


SAVED = "dfpipe_saved.json"  # in a checkpoint folder once its state is wholly in storage


def mark_saved(checkpoint, epoch: int) -> None:
    """Mark a checkpoint Ray Train has uploaded as whole (``state.pt`` is written before this)."""
    import json

    with checkpoint.filesystem.open_output_stream(f"{checkpoint.path.rstrip('/')}/{SAVED}") as f:
        f.write(json.dumps({"epoch": epoch}).encode())


def saved_checkpoints(fs, experiment: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of each checkpoint folder under a Ray Train run's folder marked saved, newest first."""
    import json

    import pyarrow.fs as pafs

    saved = []
    for info in fs.get_file_info(pafs.FileSelector(experiment, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{SAVED}") as f:
                saved.append((int(json.loads(f.read())["epoch"]), info.path))
        except (OSError, ValueError, KeyError):
            continue  # not a checkpoint, or one whose upload never finished
    return sorted(saved, reverse=True)


def newest_state(fs, experiment: str, load_state: Callable[[bytes, str], dict], recorded=None) -> dict | None:
    """The training state of the latest epoch saved under ``experiment`` (a Ray Train run's folder on
    ``fs``), or in the checkpoint Ray Train ``recorded`` if that one is newer (Ray may record a
    checkpoint whose worker was lost before it marked it). A saved one that cannot be read (deleted
    under us, damaged: ``load_state`` raises a ``ValueError``) is passed over for the next older one."""
    saved = saved_checkpoints(fs, experiment)
    fallback = None
    if recorded is not None and recorded.path.rstrip("/") not in {path for _, path in saved}:
        fallback = checkpoint_state(recorded, load_state)
        saved = [(epoch, path) for epoch, path in saved if epoch > int(fallback["epoch"])]
    for epoch, path in saved:
        try:
            return read_state(fs, path, load_state)
        except (OSError, ValueError) as exc:
            log.warning("checkpoint %s (epoch %d) cannot be read, trying an older one: %s", path, epoch, exc)
    return fallback


def worker_dataset(name: str, rank: int) -> str:
    """The name under which worker ``rank`` finds its share of dataset ``name`` (:meth:`TrainingInput.shares`)."""
    return f"{name}@{rank}"


def _train_worker(config: dict) -> None:
    config["loop"](config["config"], RayTrainContext(config["hooks"], config.get("progress")))


def fit(
    loop,
    loop_config: dict,
    datasets: dict,
    *,
    hooks: TrainingHooks,
    num_workers: int,
    use_gpu: bool,
    checkpoints: storage.Folder,
    name: str,
    max_failures: int = 0,
    keep_checkpoints: int = 2,
    select_by: str = "selection",
    on_report: Callable[[dict], None] | None = None,
    capacity_wait_s: float = 900.0,
):
    """Run ``loop`` on a TorchTrainer, its checkpoints in ``checkpoints``/``name``; rerunning with the
    same ``checkpoints`` and ``name`` resumes.

    ``on_report(metrics)`` runs on the driver for each epoch rank 0 reports (through a queue actor),
    so the driver, not the workers, prints progress. Returns ``(best_state, latest_state)``: the
    checkpoint states with the lowest ``select_by`` metric and the last one (whose history covers
    every epoch).

    A lost worker (its node gone) restarts the workers from the last checkpoint, up to
    ``max_failures`` times; workers that cannot be placed (no capacity came back) fail the run after
    about ``capacity_wait_s`` with a :class:`dfpipe.config.JobError`, where Ray Train would try again
    forever.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    fs, path = storage.arrow_filesystem(checkpoints.uri, checkpoints.options)
    # Each worker reads its own share of each dataset, the same rows every run (Ray Train's split
    # would hand blocks to whichever worker asks first).
    shares = {}
    for dataset, ds in datasets.items():
        source = ds if isinstance(ds, TrainingInput) else TrainingInput(ds.materialize())
        for rank, part in enumerate(source.shares(num_workers)):
            shares[worker_dataset(dataset, rank)] = part
    # Ray Train waits start_timeout for its workers to be placed, then tries again; the tries are
    # bounded so that the whole wait is about capacity_wait_s (the controller reads the variable
    # from the driver's environment).
    start_timeout = min(60.0, capacity_wait_s)
    placement_tries = max(1, math.ceil(capacity_wait_s / start_timeout))
    os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(start_timeout)
    progress = None
    if on_report is not None:
        from ray.util.queue import Queue

        progress = Queue(actor_options=driver_node_options())
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"loop": loop, "config": loop_config, "hooks": hooks, "progress": progress},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=keep_checkpoints,
                checkpoint_score_attribute=select_by,
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(
                max_failures=max_failures, controller_failure_limit=placement_tries - 1
            ),
        ),
        datasets=shares,
        dataset_config=DataConfig(datasets_to_split=[], execution_options=_ordered_ingest()),
    )
    try:
        with _forwarded(progress, on_report):
            result = trainer.fit()
    except ControllerError as exc:
        if not isinstance(exc.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        raise JobError(
            f"{name}: the cluster could not place {num_workers} training worker(s) for "
            f"{placement_tries * start_timeout:.0f} s (nodes lost and none back, or too few CPUs/GPUs "
            f"for num_workers={num_workers}). Rerun once it has capacity: the run resumes from its last "
            f"checkpoint; or allow a longer wait with capacity_wait_s=SECONDS"
        ) from exc

    ranked = [(m.get(select_by), i, c) for i, (c, m) in enumerate(result.best_checkpoints)]
    finite = [r for r in ranked if r[0] is not None and r[0] == r[0]]
    best = min(finite, key=lambda r: (r[0], r[1]))[2] if finite else result.checkpoint
    return checkpoint_state(best, hooks.load_state), checkpoint_state(result.checkpoint, hooks.load_state)


def driver_node_options() -> dict:
    """Actor options for a helper of the driver (the progress queue): no CPUs, on the driver's own
    node, so the loss of a worker node (a spot reclaim) cannot take it and the job with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)}


def _ordered_ingest():
    """Ray Train's ingest options with ``preserve_order``: a worker reads its share's blocks in their
    order every run, so a seed reproduces the data order."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def one_machine() -> bool:
    """Whether the Ray this process uses is a local one it started itself (the demo, the tests): no
    node of it can be lost without the driver."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # what ray.init made: a head, or a link
    return ray.is_initialized() and node is not None and bool(getattr(node, "head", False))


def training_input(ds, folder: storage.Folder) -> TrainingInput:
    """A training dataset, computed once before training: in storage where nodes can be lost
    (:func:`staged`), in this machine's object store where there is one machine (an epoch then costs
    no read tasks: about 1.5 s less a dataset and epoch here). Either way its rows keep the order
    their inputs give them (``preserve_order``: actors that finish in another order do not reorder
    them), so a seeded shuffle upstream fixes the order every run."""
    if not one_machine():
        return staged(ds, folder)
    ds.context.execution_options.preserve_order = True
    return TrainingInput(ds.materialize())


@dataclass
class TrainingInput:
    """A training dataset computed once (``dataset``: materialized, or read back from Parquet
    ``files`` with their row counts, in order) and shared out among the training workers the same
    way every run: worker ``r`` of ``n`` reads the ``r``-th contiguous share of the rows in their
    stored order (:meth:`shares`). Ray Train's own split hands blocks to whichever worker asks first,
    so a run's data, and its weights, could differ from the last one's with the same seed."""

    dataset: Any
    files: list[tuple[str, int]] | None = None
    storage_options: Any = None

    def count(self) -> int:
        return sum(rows for _, rows in self.files) if self.files is not None else self.dataset.count()

    def shares(self, n: int) -> list:
        """``n`` datasets, the rows of worker 0, 1, ...: contiguous, in order, sizes differing by one at most."""
        if n == 1:
            return [self.dataset]
        total = self.count()
        bounds = [total * k // n for k in range(n + 1)]
        if self.files is None:
            return self.dataset.split_at_indices(bounds[1:-1])
        return [
            _parquet_reader(file_slices(self.files, lo, hi), self.storage_options)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]


def file_slices(files: list[tuple[str, int]], lo: int, hi: int) -> list[dict]:
    """Rows ``lo`` to ``hi`` of Parquet ``files`` (``(path, rows)`` in order) as ``path``, ``start``,
    ``stop`` ranges of the files they fall in."""
    slices, offset = [], 0
    for path, rows in files:
        a, b = max(lo, offset), min(hi, offset + rows)
        if a < b:
            slices.append({"path": path, "start": a - offset, "stop": b - offset})
        offset += rows
    return slices


def staged(ds, folder: storage.Folder) -> TrainingInput:
    """``ds`` written once to Parquet in ``folder`` and read back from there: a training run's input.

    Ray Train reads its datasets again every epoch and after every restart. Blocks kept in the object
    store (``materialize()``) die with the node that holds them, and workers restarted after a node
    loss then wait for them forever; files in storage outlive any node. The rows are written in
    order (``preserve_order``) and read back sorted by file name, so a seed still fixes the data
    order. A rerun (a resumed training) reads what an earlier run wrote; a write cut short, with
    no ``_SUCCESS`` marker, is written again from the start.
    """
    import pyarrow.parquet as pq

    if not folder.exists("_SUCCESS"):
        folder.delete()
        ds.context.execution_options.preserve_order = True
        fs, path = storage.arrow_filesystem(folder.uri, folder.options)
        ds.write_parquet(path, filesystem=fs)
        folder.write_text("_SUCCESS", "")
    files = []
    for f in (f for f in folder.find() if f.endswith(".parquet")):  # sorted by name
        fs, path = storage.arrow_filesystem(f, folder.options)
        files.append((f, pq.read_metadata(path, filesystem=fs).num_rows))  # a footer read per file
    whole = file_slices(files, 0, sum(rows for _, rows in files))
    return TrainingInput(_parquet_reader(whole, folder.options), files, folder.options)


def _parquet_reader(slices: list[dict], storage_options):
    """A dataset of row ranges of Parquet files (``path``, ``start``, ``stop``), in the given order.

    Read by tasks that need no CPU: the training workers hold every CPU of their nodes, and a read
    (or the file listing of ray.data.read_parquet) that waited for one would wait for the end of
    training. The list is a block of the driver's, on the driver's node."""
    import ray

    if not slices:  # an empty share: no rows (the loop says so if it needed some)
        return ray.data.from_items([])
    return ray.data.from_items(slices, override_num_blocks=len(slices)).map_batches(
        _read_parquet_files,
        fn_kwargs={"options": storage_options},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0,
    )


def _read_parquet_files(batch: pa.Table, options) -> pa.Table:
    import pyarrow.parquet as pq

    tables = []
    for row in batch.to_pylist():
        fs, path = storage.arrow_filesystem(row["path"], options)
        table = pq.read_table(path, filesystem=fs)
        tables.append(table.slice(row["start"], row["stop"] - row["start"]))
    return pa.concat_tables(tables)


def shuffled(ds, seed: int):
    """``ds`` in a random row order given by ``seed`` (a global shuffle across blocks): training data
    stored video by video reaches every worker mixed."""
    return ds.random_shuffle(seed=seed)


@contextmanager
def _forwarded(queue, on_report: Callable[[dict], None] | None) -> Iterator[None]:
    """While the block runs, a driver thread hands what arrives on ``queue`` to ``on_report``."""
    if queue is None or on_report is None:
        yield
        return
    from ray.util.queue import Empty

    stop, lost = threading.Event(), threading.Event()

    def forward(block: bool) -> bool:
        if lost.is_set():
            return False
        try:
            item = queue.get(block=block, timeout=0.5 if block else None)
        except Empty:
            return False
        except Exception as exc:  # the queue's actor died: progress lines stop, training goes on
            lost.set()
            log.warning("epoch metrics no longer reach the driver (%s); training goes on", exc)
            return False
        try:
            on_report(item)
        except Exception:  # a progress line or an upload is never worth a failed training run
            log.warning("on_report failed for %s", item, exc_info=True)
        return True

    def pump() -> None:
        while not stop.is_set() and not lost.is_set():
            forward(True)

    thread = threading.Thread(target=pump, name="dfpipe-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            while forward(False):
                pass
        finally:
            try:
                queue.shutdown()
            except Exception:  # already gone with its node
                log.debug("progress queue already gone", exc_info=True)
