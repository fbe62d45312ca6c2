"""One SepEn training step against one full UNet forward+backward on the same batch and tiny model (CPU).

Goal: ratio <= 0.6. The SepEn step stops the UNet after the last 1/4-resolution layer and
backpropagates into the key projections only; the baseline runs the whole UNet and backpropagates into every
weight, as a plain diffusion training step would. Run: `pytest tests/benchmarks -s -m perf` for the goal (the
ratio is printed and stored in the benchmark's extra_info); by default only a gross regression fails.
"""

import pytest
import torch
import torch.nn.functional as F
from benchmarks.timing import TIERS, assert_within, measure_ratio, rounds

from sae.finetune import encode_prompts, sepen_losses, trainable_parameters

GOAL = 0.6


@pytest.mark.parametrize("strict", TIERS)
def test_sepen_step_vs_full_forward_backward(benchmark, tiny_pipe, strict):
    unet = tiny_pipe.unet
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 32, 32, generator=generator)
    timesteps = torch.randint(0, 1000, (4,), generator=generator)
    text = encode_prompts(tiny_pipe, ["a cat and a dog"] * 4)
    keys = list(trainable_parameters(unet).values())

    def sepen_step():
        unet.requires_grad_(False)
        for key in keys:
            key.requires_grad_(True)
        losses = sepen_losses(unet, latents, timesteps, text, [[2], [5]])
        (losses["sep"] + 0.5 * losses["en"]).backward()

    def full_step():
        unet.requires_grad_(True)
        prediction = unet(latents, timesteps, encoder_hidden_states=text).sample
        F.mse_loss(prediction, latents).backward()

    candidate, baseline, ratio = measure_ratio(benchmark, sepen_step, full_step, rounds=rounds(strict, 15))
    print(f"\nSepEn step {candidate * 1e3:.1f} ms, full forward+backward {baseline * 1e3:.1f} ms: "
          f"ratio {ratio:.3f} (goal <= {GOAL})")
    assert_within(ratio, GOAL, strict)
