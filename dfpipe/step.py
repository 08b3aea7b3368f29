"""One incremental step: the sequence every job that appends to an output shares, written once.

A :class:`Step` declares what a job does (the rows it should have done, the stage that does one
batch of them, the folders its rows go to, the key that identifies a row, the options that change
rows); :func:`run_step` does it:

1. ``--overwrite``: delete the step's folders;
2. remove chunk files left without their marker by an interrupted run;
3. read the keys already done from the marker folder (one column) and refuse rows made with other
   settings (:func:`dfpipe.config.refuse_other_settings`, exit 2);
4. anti-join the rows to do on the key and write ``config.json``;
5. map the stage over what is left (:func:`dfpipe.runner.map_rows`), each worker writing its
   batch's rows itself as one chunk named from the batch's keys (:func:`dfpipe.storage.chunk_name`),
   marker last, so a rerun overwrites instead of duplicating and nothing is half-done; only the
   marker rows (one small row per key) come back to the driver, for progress and sums;
6. ``stats.json``: the job's own counts over the whole output, plus this run's.

The driver holds the keys (one column) and the rows to do, never a row's payload (faces, windows,
codes, window scores): its memory does not grow with what a key holds. Steps whose marker rows are
tiny and whose batches are single videos (extraction) let the driver write the marker rows in
chunks instead (``marker_on_driver``), so a dataset is not one manifest file per video.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from dfpipe import config as C
from dfpipe import console, runner, storage
from dfpipe.stage import Later, Resources, Stage, check_reads

log = logging.getLogger(__name__)


@dataclass
class ChunkWriter:
    """A stage wrapper that runs in the worker: the inner stage's output, split into one table per
    folder by ``split``, is written as one chunk named from the batch's ``key`` values; the marker
    rows are returned."""

    stage: Stage
    folders: storage.ChunkFolders
    key: str
    split: Callable[[pa.Table, pa.Table], dict[str, pa.Table]] | None = None
    salt: str = ""

    @property
    def resources(self) -> Resources:
        return self.stage.resources

    def setup(self) -> None:
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.stage(batch)
        marker = list(self.folders)[-1]
        tables = self.split(out, batch) if self.split else {marker: out}
        name = storage.chunk_name(batch.column(self.key).to_pylist(), self.salt)
        storage.write_chunk(self.folders, tables, name)
        return tables[marker]


@dataclass
class Step:
    """What one incremental step does; :func:`run_step` does it."""

    name: str  # what the console calls it ("segment")
    cfg: C.RunOptions | None  # the job's config: recorded in config.json, its Ray address joined
    todo: pa.Table  # every row this step should have done, one per key
    stage: Stage | Later  # does one batch of rows (or is made once Ray is joined)
    folders: storage.ChunkFolders  # where its rows go; the last is the marker (one row per key)
    output: storage.Folder | None = None  # config.json goes here (default: the config's output)
    overwrite: bool | None = None  # delete the folders first (default: the config's --overwrite)
    key: str = "video_id"
    fields: tuple[str, ...] = ()  # options of ``cfg`` that change rows: rows made otherwise are refused
    # (stage output, input batch) -> a table per folder; default: the output is the marker's
    split: Callable[[pa.Table, pa.Table], dict[str, pa.Table]] | None = None
    salt: str = ""  # separates chunks of the same keys (a model version)
    redo: bool = False  # do every row of ``todo`` (the caller chose them and removed their old rows)
    marker_on_driver: bool = False  # the stage writes its payload; the driver writes marker chunks
    flush_rows: int = 2000  # marker rows per chunk when the driver writes them
    config: dict = field(default_factory=dict)  # extra entries for config.json
    sums: tuple[str, ...] = ()  # marker columns summed over this run (frames, windows)
    unit: str = "videos"
    rows_per_block: int = 1
    # Rows that need no stage (known bad input): ``settle(rows) -> (marker rows to write now, rows
    # left for the stage)``; their marker rows are written by the driver.
    settle: Callable[[pa.Table], tuple[pa.Table, pa.Table]] | None = None
    # The console line before the work: ``say(total, done, todo, settled)``.
    say: Callable[[int, int, int, int], str] | None = None

    def __post_init__(self):
        # The chain is checked here, before Ray starts: rows lacking a column the stage reads stop
        # the job now, naming the columns.
        check_reads(self.todo.column_names, self.stage, self.name)
        if self.output is None:
            self.output = self.cfg.folder(self.cfg.output)
        if self.overwrite is None:
            self.overwrite = bool(getattr(self.cfg, "overwrite", False))


@dataclass
class StepRun:
    """What one run of a step did."""

    total: int
    done_before: int
    processed: int
    seconds: float
    sums: dict[str, int]
    config_hash: str | None
    # Seconds from the start to the first results (Ray, the actors' start-up, a first batch), and
    # the sums that had arrived by then: the rate after it is the step's steady rate.
    first_s: float | None = None
    sums_at_first: dict[str, int] | None = None

    def steady_rate(self, column: str) -> float | None:
        """``column``'s sum per second after the first results (None before two results)."""
        if self.first_s is None or self.seconds <= self.first_s:
            return None
        return (self.sums[column] - self.sums_at_first[column]) / (self.seconds - self.first_s)


def run_step(step: Step) -> StepRun:
    """Do what ``step`` declares (see the module docstring)."""
    started = time.monotonic()
    cfg = step.cfg
    marker, marker_schema = list(step.folders.values())[-1]
    if step.overwrite:
        for folder, _ in step.folders.values():
            folder.delete()
    orphans = storage.remove_orphans(step.folders) if not step.marker_on_driver else 0
    if orphans:
        log.warning(
            "%s: removed %d files left without their marker by an interrupted run", step.name, orphans
        )
    columns = [step.key] + (["config_hash"] if "config_hash" in marker_schema.names else [])
    done = marker.read_parquet(columns=columns, schema=marker_schema)
    digest = C.config_hash(cfg, step.fields) if cfg is not None else None
    if step.fields:
        C.refuse_other_settings(cfg, step.fields, done, step.output.join("config.json"))
    todo = step.todo
    if not step.redo and done.num_rows:
        todo = todo.filter(pc.invert(pc.is_in(todo.column(step.key), done.column(step.key))))
    recorded = {"job": step.name, **({"config": C.to_dict(cfg), "config_hash": digest} if cfg else {})}
    step.output.write_json("config.json", {**recorded, **step.config})
    pending = todo.num_rows
    settled = marker_schema.empty_table()
    if step.settle is not None:
        settled, todo = step.settle(todo)
    say = step.say or (
        lambda total, n_done, n_todo, _: f"{total} {step.unit}, {n_done} already done, {n_todo} to do"
    )
    console.say(f"{step.name}: " + say(step.todo.num_rows, done.num_rows, todo.num_rows, settled.num_rows))
    sums = dict.fromkeys(step.sums, 0)
    first_s, sums_at_first = None, None
    writer = None
    if step.marker_on_driver or settled.num_rows:
        writer = storage.ChunkedParquetWriter({"marker": (marker, marker_schema)}, step.key, step.flush_rows)
        writer.add(marker=settled)
    if todo.num_rows:
        runner.ensure_ray(*((cfg.ray_address, cfg.capacity_wait_s) if cfg is not None else ()))
        stage = step.stage() if isinstance(step.stage, Later) else step.stage
        if not step.marker_on_driver:
            stage = ChunkWriter(stage, step.folders, step.key, step.split, step.salt)
        progress = console.Progress(step.name, todo.num_rows, step.unit)
        for table in runner.map_rows(todo, stage, rows_per_block=step.rows_per_block):
            for column in step.sums:
                sums[column] += int(pc.sum(table.column(column)).as_py() or 0)
            if first_s is None:
                first_s, sums_at_first = time.monotonic() - started, dict(sums)
            if step.marker_on_driver:
                writer.add(marker=table)
            frames = {"frames": sums["n_frames"]} if "n_frames" in sums else {}
            progress.update(progress.done + table.num_rows, **frames)
        progress.close()
    if writer is not None:
        writer.flush()
    return StepRun(
        total=step.todo.num_rows,
        done_before=done.num_rows,
        processed=pending,
        seconds=time.monotonic() - started,
        sums=sums,
        config_hash=digest,
        first_s=first_s,
        sums_at_first=sums_at_first,
    )


def write_stats(output: storage.Folder, stats: dict, run: dict, config_hash: str | None) -> dict:
    """``stats.json``: the job's counts over the whole output, this run's figures under ``run``."""
    stats = {**stats, "run": run, "config_hash": config_hash}
    output.write_json("stats.json", stats)
    return stats


class StepTimer:
    """``with timer("embed"): ...`` adds the block's wall time to ``timer.seconds["embed"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}
