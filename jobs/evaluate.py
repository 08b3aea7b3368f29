"""Evaluate job: ``python jobs/evaluate.py --input URI --output URI [--config FILE] [key=value ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["evaluate", *sys.argv[1:]]))
