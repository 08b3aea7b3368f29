"""Tier 1: pipelines are declarations (dfpipe.pipeline): the tasks, what each reads and makes, and
the wiring checked where a pipeline is declared."""

from __future__ import annotations

import pytest

from dfpipe.pipeline import Pipeline, Task, WiringError


def test_a_pipeline_runs_its_tasks_in_order_over_named_values():
    order = []

    def load(cfg: dict) -> tuple[int, int]:
        order.append("load")
        return cfg["a"], cfg["b"]

    def add(a: int, b: int, scale: int = 1) -> int:
        order.append("add")
        return (a + b) * scale

    def report(total: int, cfg: dict) -> str:
        order.append("report")
        return f"{cfg['name']}: {total}"

    pipe = Pipeline(
        "toy",
        [
            Task("load", load, makes=("a", "b")),
            Task("add", add, makes="sum"),
            Task("report", report, reads={"total": "sum"}, makes="line"),
        ],
    )
    done = pipe.run(cfg={"a": 2, "b": 3, "name": "toy"})
    assert order == ["load", "add", "report"]
    assert (done["a"], done["b"], done["sum"], done["line"]) == (2, 3, 5, "toy: 5")
    assert set(done["seconds"]) == {"load", "add", "report"}
    assert pipe.describe() == ["load: cfg -> a, b", "add: a, b, scale -> sum", "report: sum, cfg -> line"]
    # A parameter with a default takes a value only where one is given or made.
    assert pipe.run(cfg={"a": 1, "b": 1, "name": "x"}, scale=10)["sum"] == 20
    seen = []
    pipe.run(cfg={"a": 1, "b": 1, "name": "x"}, after=lambda task, made, s: seen.append((task.name, made)))
    assert seen == [("load", (1, 1)), ("add", 2), ("report", "x: 2")]


def test_a_task_runs_only_when_the_value_it_waits_for_is_set():
    ran = []
    pipe = Pipeline(
        "toy",
        [
            Task("plan", lambda cfg: cfg or None, makes="job"),
            Task("job", lambda job: ran.append(job), when="job"),
        ],
    )
    pipe.run(cfg=None)
    assert ran == []
    pipe.run(cfg={"x": 1})
    assert ran == [{"x": 1}]


def test_wiring_is_checked_where_the_pipeline_is_declared():
    """A task reading a value nothing makes before it fails at declaration (import), naming it."""

    def segment(extraction, cfg):
        return None

    with pytest.raises(WiringError, match="task 'segment' reads extraction, which no task before it makes"):
        Pipeline("bad", [Task("segment", segment), Task("extract", lambda cfg: 1, makes="extraction")])
    with pytest.raises(WiringError, match="reads plan"):
        Pipeline("bad", [Task("x", lambda cfg: 1, when="plan")])
    with pytest.raises(WiringError, match="needs cfg"):
        Pipeline("ok", [Task("x", lambda cfg: 1)]).run()


def test_run_score_and_rescore_are_declared_step_lists():
    """The three pipelines users run are lists of tasks (issue 37): what each step reads and makes is
    declared, and no job's body calls another job or passes tuples between steps by position."""
    from dfpipe.jobs import extract, rescore, score, segment
    from dfpipe.jobs import run as run_job

    assert [t.name for t in score.SCORE.tasks] == [
        "model", "plan", "extract", "segment", "pending", "embed", "inputs", "classify", "write",
        "evaluate", "review",
    ]  # fmt: skip
    tasks = {t.name: t for t in score.SCORE.tasks}
    assert tasks["extract"].fn is extract.run and tasks["extract"].when == "extract_cfg"
    assert tasks["segment"].fn is segment.run
    assert tasks["classify"].inputs == {
        k: k for k in ("cfg", "model", "meta", "version", "cache", "todo", "manifest", "already", "replace")
    }
    assert [t.name for t in run_job.RUN.tasks] == ["configs", *run_job.STEPS]
    assert [t.name for t in rescore.RESCORE.tasks] == ["dumps", "score"]
    # No function of these jobs calls another job: the pipeline runs them, as tasks.
    import ast
    import inspect

    for job, pipeline in ((score, "SCORE"), (run_job, "RUN")):
        tree = ast.parse(inspect.getsource(job))
        called = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert {c for c in called if c.endswith(".run")} == {f"{pipeline}.run"}, job.__name__


def test_the_docs_show_the_scoring_steps_as_declared():
    """docs/score.md and CONTRIBUTING.md print SCORE's wiring; a changed step changes them too."""
    from pathlib import Path

    from dfpipe.jobs import score

    root = Path(__file__).resolve().parents[1]
    block = "\n".join(score.SCORE.describe())
    for doc in ("docs/score.md", "CONTRIBUTING.md"):
        assert f"```\n{block}\n```" in (root / doc).read_text(), doc
