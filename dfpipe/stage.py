"""The stage contract: what the runner needs to know of a unit of work, and nothing about Ray.

A stage is a plain, picklable object with

* ``reads`` (a class attribute): the input columns it uses; a step checks that its rows hold them
  when it is built, before Ray starts (:func:`check_reads`), so a broken chain fails in seconds
  with the columns named, not in a worker an hour in;
* ``writes`` (a class attribute): the schema of the table it returns (``None`` where that follows its
  input: its input rows with columns added, its docstring and a comment say which);
* ``resources``: a :class:`Resources`: CPUs, GPUs, rows per batch and a cap on workers, per worker;
  the runner asks Ray for exactly this (GPUs come from here, nowhere else);
* ``setup()``: loads what it needs (models, clients). Whoever runs a stage calls it once before the
  first batch: the runner's actor does, once per worker (:class:`dfpipe.runner._StageActor`); a
  test or an in-process caller (``score-video``) does it itself. Stages do not check it again;
* ``__call__(batch: pa.Table) -> pa.Table``: a batch of input rows in, output rows out; bad input is
  recorded on its output row, never raised (one exception fails a whole Ray dataset).

Stages run the same in a test (call ``setup()`` then the stage on a table) and on a cluster
(:func:`dfpipe.runner.map_stage`). :mod:`dfpipe.step` makes one into an incremental step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the runner maps this onto Ray."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1
    max_workers: int | None = None
    # Tasks (batches) sent to one worker at once (None: Ray Data's default). 1 where a task is long
    # (a whole video): queued on a busy worker, the last tasks wait there while another worker idles.
    tasks_in_flight: int | None = None


class Stage(Protocol):
    reads: ClassVar[tuple[str, ...]]
    writes: ClassVar[pa.Schema | None]
    resources: Resources

    def setup(self) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...


@dataclass(frozen=True)
class Later:
    """A stage made once Ray is joined (its resources depend on the cluster: GPUs or not), whose
    kind, and so its contract, is known before."""

    kind: type
    make: Callable[[], Stage]

    @property
    def reads(self) -> tuple[str, ...]:
        return self.kind.reads

    @property
    def writes(self) -> pa.Schema | None:
        return self.kind.writes

    def __call__(self) -> Stage:
        return self.make()


class ContractError(ValueError):
    """Rows handed to a stage that lack columns it reads: a bug in the chain of steps, not bad input."""


def check_reads(columns: Iterable[str], stage: Stage | Later, where: str) -> None:
    """Refuse to hand rows with ``columns`` to ``stage`` if they lack any column it reads."""
    have = set(columns)
    missing = [c for c in stage.reads if c not in have]
    if missing:
        name = stage.kind.__name__ if isinstance(stage, Later) else type(stage).__name__
        raise ContractError(
            f"{where}: {name} reads {', '.join(missing)}, which its input rows lack "
            f"(they hold {', '.join(sorted(have)) or 'no columns'})"
        )
