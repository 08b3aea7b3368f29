"""``python -m dfpipe.sampledata OUT``: a DFDC-layout sample dataset (see :mod:`dfpipe.sampledata.generate`)."""

import sys

from dfpipe.sampledata.generate import main

sys.exit(main())
