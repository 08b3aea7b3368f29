"""Output checker: ``python jobs/check.py OUTPUT`` exits 1 and lists violations if OUTPUT breaks an invariant."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["check", *sys.argv[1:]]))
