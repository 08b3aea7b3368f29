"""Face extraction job: ``python jobs/extract.py --input URI --output URI [--config FILE] [key=value ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["extract", *sys.argv[1:]]))
