"""Output checker: ``python jobs/check.py OUTPUT`` exits 1 and lists violations if OUTPUT breaks an invariant."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))
