"""Attention grounding for training the shapes model: each object word's cross-attention map is pulled onto the
cells its object covers in the training scene.

Why: SepEn finetunes the keys of the object words so that their maps separate and peak. That steers what gets
drawn only if the model draws where those maps point. In Stable Diffusion this holds by itself; in our small model
trained on the diffusion loss alone it does not (`scripts/attention_shares.py`: each word holds 2-4% of a pixel's
attention, about as much inside its object as outside). The renderer knows every object's mask, so training can
ask for it directly, with the two terms TokenCompose (Wang et al., CVPR 2024) adds to SD's loss: a token term,
(1 - the share of the word's attention that falls on its object)^2, and a pixel term, the binary cross-entropy of
the word's raw attention probability in each cell against the object's coverage of that cell. Written here: no
library offers it, and it is a few tensor lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae.tokens import find_token_indices

from .world import caption_objects


class CaptionTokens:
    """Caption -> [(token position, object index)] for the colour and shape word of every object, cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, list[tuple[int, int]]] = {}

    def __call__(self, caption: str) -> list[tuple[int, int]]:
        if caption not in self.cache:
            objects = caption_objects(caption)
            groups = find_token_indices(self.tokenizer, caption, [word for pair in objects for word in pair])
            self.cache[caption] = [(position, k // 2) for k, group in enumerate(groups) for position in group]
        return self.cache[caption]


def grounding_loss(maps: torch.Tensor, captions: list[str], masks: list, tokens: CaptionTokens,
                   pixel_weight: float = 1.0) -> torch.Tensor:
    """Token + pixel_weight * pixel grounding loss of `maps` (batch, H, W, tokens), averaged over every object word
    in the batch. Without the pixel term only where a word attends is trained, not how much.

    `masks[i]`: (objects, H, W) coverage of scene i's objects in caption order; a dropped ("") caption is skipped.
    """
    rows, positions, targets = [], [], []
    for i, caption in enumerate(captions):
        if not caption:
            continue
        for position, k in tokens(caption):
            rows.append(i)
            positions.append(position)
            targets.append(torch.as_tensor(masks[i][k]))
    if not rows:
        return maps.sum() * 0.0
    target = torch.stack(targets).to(maps.device, maps.dtype)
    if target.shape[1:] != maps.shape[1:3]:
        raise ValueError(f"masks are {tuple(target.shape[1:])}, the maps {tuple(maps.shape[1:3])}")
    word_maps = maps[torch.tensor(rows), :, :, torch.tensor(positions)]  # (words, H, W)
    inside = (word_maps * target).sum(dim=(1, 2)) / word_maps.sum(dim=(1, 2)).clamp_min(1e-8)
    token_term = (1 - inside).pow(2).mean()
    if not pixel_weight:
        return token_term
    pixel_term = F.binary_cross_entropy(word_maps.clamp(1e-6, 1 - 1e-6), target)
    return token_term + pixel_weight * pixel_term
