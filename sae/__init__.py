"""Separate-and-Enhance (arXiv 2312.06712): finetune the cross-attention keys of a Stable-Diffusion-style UNet
so that the objects of a prompt get separate, strong attention maps."""

from .attention import capture_cross_attention, object_maps
from .checkpoint import apply_delta, load_delta, save_delta
from .finetune import ConceptPair, ConceptPool, FinetuneConfig, finetune
from .losses import enhance_loss, separate_loss
from .tokens import find_token_indices

__version__ = "0.1.0"
__all__ = ["capture_cross_attention", "object_maps", "apply_delta", "load_delta", "save_delta", "ConceptPair",
           "ConceptPool", "FinetuneConfig", "finetune", "enhance_loss", "separate_loss", "find_token_indices"]
