"""Segmentation job: ``python jobs/segment.py --input EXTRACTION_URI --output URI [--config FILE] [key=value ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["segment", *sys.argv[1:]]))
