"""Output checker: ``python jobs/check.py OUTPUT`` exits 1 and lists violations if OUTPUT breaks an invariant."""

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import script

if __name__ == "__main__":
    script("check")
