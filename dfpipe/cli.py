"""The command line: ``dfpipe <job> --input URI --output URI [--config FILE.yaml] [key=value ...]``.

Every job has the same shape: parse config -> run -> print summary -> exit code. ``--name value``
sets any config field (``--input`` and ``--output`` are just the common ones), ``key=value`` does
too, and ``--config`` reads a YAML file first. Exit codes: 0 done, 2 bad arguments or config,
1 the job failed.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import traceback
import typing
from typing import Any, NoReturn

from dfpipe import config as C
from dfpipe import console, runner, storage

# job name -> module under dfpipe.jobs with NAME, SUMMARY, a Config dataclass, run() and format_summary().
JOBS = {
    "extract": ("dfpipe.jobs.extract", "ExtractConfig"),
    "segment": ("dfpipe.jobs.segment", "SegmentConfig"),
    "train_embedder": ("dfpipe.jobs.train_embedder", "TrainEmbedderConfig"),
    "train_classifier": ("dfpipe.jobs.train_classifier", "TrainClassifierConfig"),
    "score": ("dfpipe.jobs.score", "ScoreConfig"),
    "evaluate": ("dfpipe.jobs.evaluate", "EvaluateConfig"),
    "score-video": ("dfpipe.jobs.score_video", "ScoreVideoConfig"),
    "run": ("dfpipe.jobs.run", "PipelineConfig"),
    "rescore": ("dfpipe.jobs.rescore", "RescoreConfig"),
    "check": ("dfpipe.jobs.check", "CheckConfig"),
}


def job_name(given: str) -> str:
    """The job's name as JOBS spells it, whichever of ``_`` and ``-`` the user typed
    (``score_video`` and ``train-embedder`` work as well as ``score-video`` and ``train_embedder``)."""
    by_key = {k.replace("-", "_"): k for k in JOBS}
    return by_key.get(given.replace("-", "_"), given)


def _job(name: str):
    module_name, config_name = JOBS[name]
    module = importlib.import_module(module_name)
    return module, getattr(module, config_name)


def usage() -> str:
    lines = ["usage: dfpipe <job> --input URI --output URI [--config FILE.yaml] [key=value ...]", "", "jobs:"]
    for name in JOBS:
        module, _ = _job(name)
        lines.append(f"  {name:<18} {module.SUMMARY}")
    lines.append("\n'dfpipe <job> --help' lists a job's options.")
    return "\n".join(lines)


def job_help(name: str) -> str:
    module, cls = _job(name)
    positional = getattr(module, "POSITIONAL", None)
    first = positional.upper() if positional else "--input URI --output URI"
    return "\n".join(
        [
            f"usage: dfpipe {name} {first} [--config FILE.yaml] [--option value] [option=value ...]",
            "",
            module.SUMMARY,
            "",
            "options (as --option value, option=value, or keys of the --config YAML file):",
            *C.help_lines(cls),
        ]
    )


def parse_args(cls, argv: list[str]) -> Any:
    """Build the config dataclass ``cls`` from ``argv``; raises ConfigError with a fix on bad input."""
    fields = C.fields_of(cls)
    from_file: dict[str, Any] = {}
    given: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            key, _, inline = token[2:].partition("=")
            key = key.replace("-", "_")
            if key == "config":
                path = inline or (argv[i + 1] if i + 1 < len(argv) else "")
                if not path:
                    raise C.ConfigError("--config needs a YAML file path")

                try:
                    from_file = C.load_yaml(storage.read_text(path), path)
                except FileNotFoundError:
                    raise C.ConfigError(f"--config {path}: no such file") from None
                i += 1 if inline else 2
                continue
            if key not in fields:
                raise C.ConfigError(f"unknown option --{key.replace('_', '-')}; see --help for the options")
            is_bool = fields[key].type is bool
            is_seq = typing.get_origin(fields[key].type) is tuple
            if inline:
                value, step = inline, 1
            elif is_bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--") or "=" in argv[i + 1]):
                value, step = "true", 1
            elif i + 1 < len(argv):
                value, step = argv[i + 1], 2
            else:
                raise C.ConfigError(f"--{key.replace('_', '-')} needs a value")
            if is_seq:
                given.setdefault(key, []).append(value)
            else:
                given[key] = value
            i += step
        elif "=" in token:
            for key, value in C.parse_overrides([token]).items():
                if isinstance(value, dict) and isinstance(given.get(key), dict):
                    given[key].update(value)
                else:
                    given[key] = value
            i += 1
        else:
            raise C.ConfigError(f"unexpected argument {token!r}: options are --name value or name=value")
    merged = dict(from_file)
    for key, value in given.items():
        # section.option=value on the command line refines a section of the YAML file
        merged[key] = (
            {**merged[key], **value}
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return C.build(cls, merged)


def run_job(name: str, argv: list[str], log_file: bool = False) -> int:
    """Parse ``argv`` for job ``name``, run it, print its summary; the exit code.

    With ``log_file`` (a job run as a process), a job that runs on Ray sends Ray's output and
    everything else but its own lines to ``OUTPUT/logs/<job>-<time>.log`` unless ``--verbose``.
    """
    if any(a in ("-h", "--help") for a in argv):
        print(job_help(name))
        return 0
    module, cls = _job(name)
    try:
        cfg = parse_args(cls, argv)
    except C.ConfigError as exc:
        console.shout(f"dfpipe {name}: error: {exc}")
        console.shout(f"run 'dfpipe {name} --help' for the options")
        return 2
    if getattr(module, "RAY", False):
        try:
            refuse_unshared_storage(cfg)  # before anything is written, the log file included
        except C.ConfigError as exc:
            console.shout(f"dfpipe {name}: error: {exc}")
            return 2
    if not (log_file and getattr(module, "RAY", False) and not cfg.verbose):
        return _run(name, module, cfg)

    logs, log_name = cfg.folder(cfg.output).sub("logs"), console.log_name(name)
    where = logs.join(log_name)
    with console.log_file(logs, log_name):
        console.say(
            f"dfpipe {name}: Ray's output and other details go to {where} (--verbose prints them here)"
        )
        try:
            return _run(name, module, cfg)
        finally:  # Ray's last forwarded lines are flushed at shutdown: into the log, not after the table
            if "ray" in sys.modules and sys.modules["ray"].is_initialized():
                sys.modules["ray"].shutdown()


def refuse_unshared_storage(cfg) -> None:
    """On a cluster of several machines, a local path some node cannot see would lose work (face shards
    written to a worker's own disk) or fail late: refuse it at start-up, naming the path and the nodes.
    A local Ray on one machine (the demo, the tests) is not checked."""
    paths = cfg.local_paths()
    if not paths or not runner.joins_cluster(cfg.ray_address):
        return
    runner.ensure_ray(cfg.ray_address, cfg.capacity_wait_s)
    unseen = runner.unseen_paths(paths)
    if unseen:
        lines = [
            f"{name} {paths[name]} is not seen by node(s) {', '.join(nodes)}"
            for name, nodes in unseen.items()
        ]
        raise C.ConfigError(
            "storage the cluster does not share: "
            + "; ".join(lines)
            + ". On a cluster of several machines every node reads and writes the job's storage: use s3:// "
            "(or gs://, abfs://), or a filesystem mounted at the same path on every node (NFS, EFS, Lustre)"
        )


def _run(name: str, module, cfg) -> int:
    try:
        summary = module.run(cfg)
    except C.ConfigError as exc:
        console.shout(f"dfpipe {name}: error: {exc}")
        return 2
    except C.JobError as exc:
        console.shout(f"dfpipe {name}: {exc}")
        return 1
    except OSError as exc:
        _traceback()
        where = " or ".join(str(u) for u in (getattr(cfg, "input", None), getattr(cfg, "output", None)) if u)
        console.shout(
            f"dfpipe {name}: storage error: {type(exc).__name__}: {exc}\n"
            f"check that {where or 'the storage'} is reachable with these credentials; "
            "a rerun keeps the work already finished"
        )
        return 1
    if hasattr(module, "print_result"):
        module.print_result(summary, cfg)
    else:
        console.say(f"\n== {name} done ==")
        console.say(module.format_summary(summary))
    return 0


def _traceback() -> None:
    """The current exception's traceback on the console, and in the log file when there is one."""
    traceback.print_exc(file=console.err())
    if console.err() is not sys.stderr:
        traceback.print_exc()


def main(argv: list[str] | None = None, log_file: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = job_name(argv[0]), argv[1:]
    if name not in JOBS:
        print(f"dfpipe: unknown job {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    positional = getattr(_job(name)[0], "POSITIONAL", None)
    if positional and rest and not rest[0].startswith("-") and not is_override(rest[0]):
        rest = [f"--{positional}", *rest]  # dfpipe score-video FILE.mp4 --model DIR, dfpipe check OUTPUT
    return run_job(name, rest, log_file)


def is_override(token: str) -> bool:
    """Whether ``token`` is an ``option=value`` (or ``section.option=value``) and not a path that
    holds an ``=`` (``dir/a=b.mp4``, a file named ``<img src=x>.mp4``): an option's name is a word."""
    return re.match(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)?=", token) is not None


def exit_process(code: int) -> NoReturn:
    """End a job's process with ``code`` once its work is written, skipping interpreter finalisation.

    At exit Python ends daemon threads still alive (Ray Data's prefetchers, Ray's own) with
    ``pthread_exit`` when they next take the GIL; one caught inside a pyarrow scan unwinds through
    C++ frames that forbid it, and the process aborts (SIGABRT, exit 134 or -6) after the job
    succeeded, so ``ray job submit`` would call finished work FAILED. Reproduced by
    ``tests/test_reliability.py::test_a_job_process_exit_status_is_its_result``: about one exit in
    three aborts with daemon threads reading Parquet. So: shut Ray down, flush, and ``os._exit``.
    """
    try:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing left to say
                pass
        os._exit(code)


def script(job: str | None = None) -> NoReturn:
    """A job run as a process: ``dfpipe <job> ...`` (``job`` None) or ``python jobs/<job>.py ...``."""
    exit_process(main(([job] if job else []) + sys.argv[1:], log_file=True))


if __name__ == "__main__":
    script()
