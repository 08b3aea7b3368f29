"""The stage contract: what the runner needs to know of a unit of work, and nothing about Ray.

A stage is a plain, picklable object with

* ``resources``: a :class:`Resources`: CPUs, GPUs, rows per batch and a cap on workers, per worker;
  the runner asks Ray for exactly this (GPUs come from here, nowhere else);
* ``setup()``: loads what it needs (models, clients), once per worker, in the worker;
* ``__call__(batch: pa.Table) -> pa.Table``: a batch of input rows in, output rows out; bad input is
  recorded on its output row, never raised (one exception fails a whole Ray dataset).

Stages run the same in a test (call ``setup()`` then the stage on a table) and on a cluster
(:func:`dfpipe.runner.map_stage`). :mod:`dfpipe.step` makes one into an incremental step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
    resources: Resources

    def setup(self) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...
