"""Verify an output tree (extract, segment, score, pipeline or rescore root): an fsck for dfpipe outputs."""

from __future__ import annotations

from dataclasses import dataclass

from dfpipe import config as C
from dfpipe.invariants import Report, check_output

NAME = "check"
SUMMARY = (
    "Verify an output's invariants (nothing lost, nothing duplicated, stats agree); exit 1 on any violation."
)
POSITIONAL = "output"  # dfpipe check OUTPUT


@dataclass(frozen=True, kw_only=True)
class CheckConfig(C.RunOptions):
    output: str = C.option(help="the output URI to verify (given first: dfpipe check OUTPUT)")


def run(cfg: CheckConfig) -> Report:
    output = cfg.folder(cfg.output)
    if not output.exists():
        raise C.ConfigError(f"{cfg.output} does not exist")
    report = check_output(output)
    if not report.ok:
        raise C.JobError(f"{cfg.output}:\n{report.format()}")
    return report


def print_result(report: Report, cfg: CheckConfig) -> None:
    print(report.format())
