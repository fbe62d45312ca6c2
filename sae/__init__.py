"""Separate-and-Enhance (arXiv 2312.06712): finetune the cross-attention keys of a Stable-Diffusion-style UNet
so that the objects of a prompt get separate, strong attention maps."""

import os
import signal
import sys


def _end_now(signum, frame):
    """Ctrl-C while `python -m sae` loads (nothing written yet): end at once, one line. Raising KeyboardInterrupt
    inside a library's import can leave it half made; the command's own handler takes over once it runs
    (`sae.cli.run_command`)."""
    print("interrupted: what was written stays; run the same command again to resume", file=sys.stderr)
    os._exit(130)


# `python -m sae` is loading this package (Python's argv[0] while it does), not a library import
if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _end_now)

from .attention import capture_cross_attention, object_maps  # noqa: E402
from .checkpoint import apply_delta, load_delta, save_delta  # noqa: E402
from .finetune import ConceptPair, ConceptPool, FinetuneConfig, finetune  # noqa: E402
from .losses import enhance_loss, separate_loss  # noqa: E402
from .tokens import find_token_indices  # noqa: E402

__version__ = "0.1.0"
__all__ = ["capture_cross_attention", "object_maps", "apply_delta", "load_delta", "save_delta", "ConceptPair",
           "ConceptPool", "FinetuneConfig", "finetune", "enhance_loss", "separate_loss", "find_token_indices"]
