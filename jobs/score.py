"""Score job: ``python jobs/score.py --input URI --output URI [--config FILE] [key=value ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["score", *sys.argv[1:]]))
