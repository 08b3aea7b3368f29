"""The whole pipeline: ``python jobs/run.py --input DATASET --output ROOT [--config FILE] [key=value ...]``."""

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import script

if __name__ == "__main__":
    script("run")
