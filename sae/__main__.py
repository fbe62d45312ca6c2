"""`python -m sae` (Ctrl-C while it loads: `sae/__init__.py`)."""

import sys

from .cli import main

sys.exit(main())
