import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionAttendAndExcitePipeline

from benchmark.guidance import attend_and_excite, attend_excite_loss, scaled_schedule, sepen_test_time
from sae.backbones import guidance_pass
from sae.sampling import seed_generators

PROMPT, GROUPS = "a cat and a dog", [[2], [5]]


def test_attend_excite_loss_hand_computed():
    maps = torch.zeros(1, 3, 3, 77)
    maps[..., 0] = 1.0  # the start token, which A&E drops
    maps[0, 1, 1, 2] = 0.5  # object 1 peaks at the centre
    loss = attend_excite_loss(maps, [[2], [5]])
    # after dropping token 0 and the last one: softmax over 75 tokens of 100 * maps
    e = math.exp(50)
    peak_1 = e / (e + 74)  # object 1 at the centre
    flat = 1 / 75  # object 2 everywhere, object 1 off-centre
    k1 = [math.exp(-1) / (1 + 2 * math.exp(-1)), 1 / (1 + 2 * math.exp(-1))]  # A&E's wider kernel
    smoothed_1 = k1[1] ** 2 * peak_1 + (1 - k1[1] ** 2) * flat
    # object 2 is ~0 at the centre; its smoothed peak is at a corner, which sees the centre 4 times through
    # reflect padding (weight 4 * k_edge^2)
    smoothed_2 = (1 - 4 * k1[0] ** 2) * flat
    expected = max(1 - smoothed_1, 1 - smoothed_2)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_schedule_is_a_and_e_at_50_steps_and_proportional_otherwise():
    assert scaled_schedule(50) == {}
    assert scaled_schedule(20) == {"max_iter_to_alter": 10, "thresholds": {0: 0.05, 4: 0.5, 8: 0.8}}


@pytest.mark.slow
def test_matches_diffusers_attend_and_excite_pipeline(tiny_pipe):
    """Same seed, same latents, same schedule: the same image as diffusers' own A&E pipeline."""
    components = {k: v for k, v in tiny_pipe.components.items() if k != "image_encoder"}
    reference_pipe = StableDiffusionAttendAndExcitePipeline(**components, requires_safety_checker=False)
    reference_pipe.set_progress_bar_config(disable=True)
    steps = 10  # diffusers' fixed defaults (25 update steps, refinement at 0, 10, 20) apply to all 10
    reference = reference_pipe(PROMPT, token_indices=[2, 5], attn_res=(8, 8), num_inference_steps=steps,
                               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    ours = attend_and_excite().generate(tiny_pipe, PROMPT, GROUPS, seed_generators([0]), steps, 7.5)[0]
    plain = tiny_pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).images[0]
    reference = (reference * 255).round()
    diff = np.abs(reference - np.asarray(ours, dtype=np.float64))
    assert diff.max() <= 1  # tolerance: one 8-bit level (float rounding)
    assert np.abs(reference - np.asarray(plain, dtype=np.float64)).max() > diff.max()  # A&E did change it


@pytest.mark.slow
def test_batched_guidance_equals_one_image_at_a_time(tiny_pipe):
    guidance = sepen_test_time(num_inference_steps=6)
    together = guidance.generate(tiny_pipe, PROMPT, GROUPS, seed_generators([0, 1]), 6, 7.5)
    alone = guidance.generate(tiny_pipe, PROMPT, GROUPS, seed_generators([1]), 6, 7.5)
    assert np.abs(np.asarray(together[1], dtype=int) - np.asarray(alone[0], dtype=int)).max() <= 1


def test_latent_update_lowers_the_loss(tiny_pipe):
    guidance = sepen_test_time(num_inference_steps=6)
    family_pass = guidance_pass(tiny_pipe, PROMPT, 1, 256, 256)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(900)
    with torch.no_grad():
        before = guidance._loss(family_pass, latents, t, GROUPS)
    updated = guidance.update(family_pass, latents, t, 0, GROUPS, step_size=20.0)
    with torch.no_grad():
        after = guidance._loss(family_pass, updated, t, GROUPS)
    assert not torch.equal(updated, latents)
    assert after.item() < before.item()


def test_refinement_runs_the_unet_once_per_latent_it_measures(tiny_pipe):
    """Refinement re-measures only latents it has changed: one initial forward, one per further try, one after."""
    unet = tiny_pipe.unet
    family_pass = guidance_pass(tiny_pipe, PROMPT, 1, 256, 256)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []
    hook = unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        # threshold 0: target loss 1, never exceeded (no refinement); threshold 1: target 0, always (3 tries)
        for threshold, expected in ((0.0, 1), (1.0, 1 + 2 + 1)):
            calls.clear()
            guidance = attend_and_excite(10, thresholds={0: threshold}, max_refinement_steps=3)
            updated = guidance.update(family_pass, latents, torch.tensor(900), 0, GROUPS, step_size=20.0)
            assert len(calls) == expected
            assert not torch.equal(updated, latents)  # index 0 is an update step either way
    finally:
        hook.remove()


def test_a_half_pipelines_latent_steps_are_taken_in_float32(tiny_model_dir):
    """On a half-precision pipeline the denoiser runs in its precision, but the refinement's steps accumulate in
    float32 and the latent is rounded to the pipeline's precision once, at the end."""
    from sae.models import load_pipeline

    pipe = load_pipeline(tiny_model_dir, device="cpu", dtype="bfloat16")
    family_pass = guidance_pass(pipe, PROMPT, 1, 256, 256)
    assert family_pass.text.dtype == torch.bfloat16
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    guidance = attend_and_excite(10, thresholds={0: 1.0}, max_refinement_steps=4)  # four refinement steps
    half = guidance.update(family_pass, latents, torch.tensor(900), 0, GROUPS, step_size=20.0)
    full = guidance.update(family_pass, latents.float(), torch.tensor(900), 0, GROUPS, step_size=20.0)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert torch.equal(half, full.to(torch.bfloat16)) and not torch.equal(half, latents)
