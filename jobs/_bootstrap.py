"""Lets ``python jobs/<job>.py`` import dfpipe from the checkout (as ``ray job submit --working-dir .`` runs it)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
