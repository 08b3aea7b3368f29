"""Face extraction job: ``python jobs/extract.py --input URI --output URI [--config FILE] [key=value ...]``."""

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from dfpipe.cli import script

if __name__ == "__main__":
    script("extract")
