"""A pipeline is a declaration: a list of named tasks, each a function whose parameters name what it
reads and whose ``makes`` names what it adds, run in order by one small object.

    SCORE = Pipeline("score", [
        Task("model", load_model, makes=("model", "meta", "embedder", "version")),
        Task("extract", extract_job.run, reads={"cfg": "extract_cfg"}, when="extract_cfg"),
        ...
    ])
    values = SCORE.run(cfg=cfg)

A task reads its inputs by name from the values given to :meth:`Pipeline.run` and those made by
the tasks before it (a parameter with a default may be absent); ``reads`` renames a parameter where a
function's name for a value is not the pipeline's (every job's ``run(cfg)``). ``when`` names a value
that must be set for the task to run (a task that may be skipped so should make nothing a later
task needs). The pipeline checks when it is declared that every input is
given or made by an earlier task, so a wrong wiring fails at import, not an hour into a run, and
it times each task (``values["seconds"]``), as a job's ``stats.json`` reports.

Nothing here knows Ray or storage: the tasks do the work, the pipeline only names and orders it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class WiringError(TypeError):
    """A pipeline whose tasks read a value that nothing gives or makes before them."""


@dataclass(frozen=True)
class Task:
    """One step of a pipeline: ``fn`` called with the values its parameters name."""

    name: str
    fn: Callable[..., Any]
    makes: str | tuple[str, ...] = ()  # the value it returns, or the names of the tuple it returns
    reads: Mapping[str, str] = field(default_factory=dict)  # parameter -> the value it takes
    when: str | None = None  # a value that must be set (not None or False) for the task to run
    timed: bool = True  # its wall time goes in ``values["seconds"][name]``

    @property
    def inputs(self) -> dict[str, str]:
        """Parameter -> value name, for every parameter ``fn`` needs (those with defaults only when present)."""
        out = {}
        for name, param in inspect.signature(self.fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            out[name] = self.reads.get(name, name)
        return out

    @property
    def required(self) -> set[str]:
        params = inspect.signature(self.fn).parameters
        return {self.reads.get(n, n) for n, p in params.items() if p.default is p.empty}

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.makes,) if isinstance(self.makes, str) else tuple(self.makes)


class Pipeline:
    """Tasks run in order over one set of named values (see the module docstring)."""

    def __init__(self, name: str, tasks: Iterable[Task], given: Iterable[str] = ("cfg",)):
        self.name, self.tasks, self.given = name, list(tasks), tuple(given)
        self._check()

    def _check(self) -> None:
        known = {*self.given, "seconds"}
        for task in self.tasks:
            missing = sorted(task.required - known) + (
                [task.when] if task.when and task.when not in known else []
            )
            if missing:
                raise WiringError(
                    f"pipeline {self.name}: task {task.name!r} reads {', '.join(missing)}, which no task "
                    f"before it makes and the pipeline is not given ({', '.join(self.given)})"
                )
            known |= set(task.outputs)

    def run(
        self,
        before: Callable[[Task], None] | None = None,
        after: Callable[[Task, Any, float], None] | None = None,
        **given: Any,
    ) -> dict[str, Any]:
        """Run every task; returns every value (what was given, what each task made, ``seconds``).
        ``before(task)`` and ``after(task, what it returned, seconds)`` are called around each task
        that runs (a job's console lines)."""
        absent = sorted(set(self.given) - set(given))
        if absent:
            raise WiringError(f"pipeline {self.name} needs {', '.join(absent)}")
        values: dict[str, Any] = {**given, "seconds": {}}
        for task in self.tasks:
            if task.when and not values.get(task.when):
                continue
            args = {p: values[v] for p, v in task.inputs.items() if v in values}
            if before is not None:
                before(task)
            started = time.perf_counter()
            made = task.fn(**args)
            took = time.perf_counter() - started
            if task.timed:
                values["seconds"][task.name] = values["seconds"].get(task.name, 0.0) + took
            if after is not None:
                after(task, made, took)
            outputs = task.outputs
            if len(outputs) == 1:
                values[outputs[0]] = made
            elif outputs:
                values.update(zip(outputs, made, strict=True))
        return values

    def describe(self) -> list[str]:
        """One line per task: its name, what it reads and what it makes (for docs and ``--help``)."""
        lines = []
        for task in self.tasks:
            reads = ", ".join(dict.fromkeys(task.inputs.values()))
            makes = ", ".join(task.outputs) or "-"
            lines.append(f"{task.name}: {reads} -> {makes}" + (f" (when {task.when})" if task.when else ""))
        return lines
