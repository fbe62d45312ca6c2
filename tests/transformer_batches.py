"""A conditional pass of a tiny transformer family on a training batch, shared by the SD3 and PixArt tests."""

import torch

from sae.backbones import conditioning


def training_batch(pipe, prompts: list[str], channels: int, seed: int = 0):
    """Noisy latents `(batch, channels, 32, 32)`, timesteps (all 500) and the family's conditioning of `prompts`."""
    latents = torch.randn(len(prompts), channels, 32, 32, generator=torch.Generator().manual_seed(seed))
    text, extra = conditioning(pipe, prompts)
    return latents, torch.tensor([500] * len(prompts)), text, extra


def run(transformer, latents, t, text, extra):
    return transformer(latents, timestep=t, encoder_hidden_states=text, **extra).sample
