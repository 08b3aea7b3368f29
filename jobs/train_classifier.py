"""Training job: ``python jobs/train_classifier.py --input SEGMENT_URI --output MODEL_DIR [--config FILE] [key=value ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import exit_process, main

if __name__ == "__main__":
    exit_process(main(["train_classifier", *sys.argv[1:]]))
