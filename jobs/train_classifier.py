"""Training job: ``python jobs/train_classifier.py --input SEGMENT_URI --output MODEL_DIR [--config FILE] [key=value ...]``."""

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import script

if __name__ == "__main__":
    script("train_classifier")
