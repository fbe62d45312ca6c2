"""`python -m benchmark`: Ctrl-C at any moment, the imports included, ends in one line and exit 130."""

import os
import signal
import sys

from .processes import say

INTERRUPTED = "interrupted: what was written stays; run the same command again to resume"


def _end_now(signum, frame):
    """Ctrl-C while the command loads (nothing written yet): end at once. Raising KeyboardInterrupt inside a
    library's import can leave it half made (numpy then recurses without end); the command's own handler takes
    over once it runs (`sae.cli.run_command`)."""
    say(INTERRUPTED)
    os._exit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with Ctrl-C ignored
    signal.signal(signal.SIGINT, _end_now)
from .cli import main  # noqa: E402 (after the handler: this import takes seconds)

sys.exit(main())
