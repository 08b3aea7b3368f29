"""Where stages run: the only module that turns dfpipe stages into Ray work.

Stages are plain objects with ``setup()`` and ``__call__(batch) -> batch`` and a ``resources``
attribute; :func:`map_stage` maps them onto ``Dataset.map_batches`` with an actor pool, so the
stage is set up (models loaded) once per actor.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


class _StageActor:
    """Holds one stage per Ray actor; ``setup()`` runs once, in the actor."""

    def __init__(self, stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def pool_size(stage, num_gpus: float) -> int:
    """How many actors the cluster can hold for ``stage`` (its own cap wins)."""
    res = stage.resources
    if res.max_workers:
        return max(1, res.max_workers)
    by_cpu = cluster_cpus() / max(res.num_cpus, 1e-3)
    by_gpu = cluster_gpus() / num_gpus if num_gpus else math.inf
    return max(1, int(min(by_cpu, by_gpu)))


def map_stage(ds, stage, num_gpus: float = 0.0):
    """``ds.map_batches`` over an actor pool running ``stage``."""
    import ray

    res = stage.resources
    size = pool_size(stage, num_gpus)
    log.info(
        "%s: actor pool of up to %d (cpus=%s, gpus=%s each)",
        type(stage).__name__,
        size,
        res.num_cpus,
        num_gpus,
    )
    return ds.map_batches(
        _StageActor,
        fn_constructor_kwargs={"stage": stage},
        batch_size=res.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_cpus=res.num_cpus,
        num_gpus=num_gpus,
    )


def dataset_from_table(table: pa.Table, rows_per_block: int = 1):
    """A Ray dataset of ``table`` cut into small blocks, so an actor pool can spread the rows."""
    import ray

    n = table.num_rows
    rows_per_block = max(rows_per_block, math.ceil(n / 10_000))
    blocks = [table.slice(i, rows_per_block) for i in range(0, n, rows_per_block)] or [table]
    return ray.data.from_arrow(blocks)


def iter_tables(ds) -> Iterator[pa.Table]:
    """Stream a dataset's output to the driver block by block (never all of it at once)."""
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
