"""Rescoring: ``python jobs/rescore.py --input DUMP [--input DUMP ...] --model DIR --output ROOT [--config FILE] [key=value ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["rescore", *sys.argv[1:]]))
