"""Inference-time latent optimisation on the cross-attention maps: Attend-and-Excite and SepEn's test-time variant.

Both update the noisy latent by gradient descent on a loss of the 1/4-resolution maps during the first
denoising steps, through `sae.attention.capture_attention` (the denoiser stops after the last captured
layer) and the family's own pipeline loop (`StableDiffusionPipeline`, SDXL's, SD3's): the update of step i+1 runs
in the pipeline's `callback_on_step_end` of step i, the one of step 0 before the pipeline starts. No pipeline is
copied. What differs per family (the denoiser's inputs, SD3's maps of joint attention read at CLIP's positions) is
`sae.backbones.guidance_pass`; on SD3 the step sizes and thresholds stay SD's, an experiment (docs/backbones.md).

Attend-and-Excite (Chefer et al. 2023), as diffusers' `StableDiffusionAttendAndExcitePipeline` does it: maps
without the start and last token, times 100, softmax over tokens, Gaussian smoothing (A&E's kernel), loss
`max_k (1 - max smooth(A_k))`, step size `20 * sqrt(linspace(1, 0.5, steps))`, updates in the first 25 steps,
iterative refinement at steps 0, 10, 20 until the loss is under 1 - 0.05 / 0.5 / 0.8 (at most 20 tries).

SepEn test-time (`sepen_tt`, the paper's Table 1 variant): the same schedule without refinement, on
`lambda_sep * Separate + lambda_en * Enhance` of the raw probability maps. Our choice of schedule: the paper
gives no other.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from sae.attention import StopForward, capture_attention, object_maps, sharpened_text_maps
from sae.backbones import DenoiserPass, denoiser, guidance_pass, sampled_size, schedule_kwargs
from sae.sampling import DEFAULT_GUIDANCE
from sae.losses import enhance_loss, gaussian_smooth, separate_loss, smoothing_sigma


def attend_excite_loss(maps: torch.Tensor, token_groups) -> torch.Tensor:
    """A&E's loss per image from token maps `(batch, H, W, 77)`: `max_k relu(1 - max smooth(A_k))`."""
    objects = object_maps(sharpened_text_maps(maps), token_groups)  # (batch, K, H, W)
    peaks = gaussian_smooth(objects, sigma=smoothing_sigma("release")).amax(dim=(-2, -1))
    return torch.relu(1 - peaks).amax(dim=-1)


def sepen_test_time_loss(lambda_sep: float = 1.0, lambda_en: float = 0.5, pair_reduction: str = "max",
                         smoothing: str = "release"):
    def loss(maps: torch.Tensor, token_groups) -> torch.Tensor:
        objects = object_maps(maps, token_groups)
        total = lambda_en * enhance_loss(objects, smoothing)
        if objects.shape[1] >= 2:
            total = total + lambda_sep * separate_loss(objects, pair_reduction=pair_reduction)
        return total

    return loss


@dataclass
class LatentGuidance:
    """Gradient steps on the latent during the first `max_iter_to_alter` denoising steps."""

    loss_fn: Callable[[torch.Tensor, list], torch.Tensor]
    max_iter_to_alter: int = 25
    thresholds: dict[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})
    scale_factor: float = 20.0
    max_refinement_steps: int = 20
    map_downscale: int = 4

    def _loss(self, denoiser: DenoiserPass, latents, t, token_groups):
        """The loss per image at `latents`, from the maps of the family's conditional pass (`sae.backbones`)."""
        with capture_attention(denoiser.network, self.map_downscale, stop_after_last=True) as store:
            try:
                denoiser(latents, t)
            except StopForward:
                pass
            return self.loss_fn(denoiser.text_maps(store.maps().float()), denoiser.text_groups(token_groups))

    def _step(self, latents, loss, mask, step_size):
        grad = torch.autograd.grad(loss[mask].sum(), latents)[0] if mask.any() else torch.zeros_like(latents)
        scale = (mask & (loss != 0)).to(latents.dtype).view(-1, *[1] * (latents.dim() - 1))
        return latents - step_size * grad * scale

    def update(self, denoiser: DenoiserPass, latents, t, index: int, token_groups, step_size: float) -> torch.Tensor:
        """The latent after step `index`'s optimisation (refinement, then one gradient step). The steps are taken
        in float32 whatever the pipeline's precision (a half latent would round away updates under 5e-4 and
        underflow small gradients), and the result handed back in the pipeline's."""
        if index >= self.max_iter_to_alter and index not in self.thresholds:
            return latents
        dtype = latents.dtype
        with torch.enable_grad():
            latents = latents.detach().float().requires_grad_(True)
            loss = self._loss(denoiser, latents, t, token_groups)
            if index in self.thresholds:
                target = max(0.0, 1.0 - self.thresholds[index])
                active = loss > target
                tries = 0
                while active.any():  # each image refines until its own loss is low enough
                    tries += 1
                    if tries > 1:  # the first try's loss is the one just measured at these latents
                        latents = latents.detach().requires_grad_(True)
                        loss = self._loss(denoiser, latents, t, token_groups)
                    latents = self._step(latents, loss, active, step_size)
                    active = active & (loss > target) & (tries < self.max_refinement_steps)
                if tries:  # the loss at the refined latents, for the step below
                    latents = latents.detach().requires_grad_(True)
                    loss = self._loss(denoiser, latents, t, token_groups)
            if index < self.max_iter_to_alter:
                latents = self._step(latents, loss, torch.ones_like(loss, dtype=torch.bool), step_size)
        return latents.detach().to(dtype)

    def generate(self, pipe, prompt: str, token_groups, generators, num_inference_steps: int = 50,
                 guidance_scale: float = DEFAULT_GUIDANCE, height: int | None = None, width: int | None = None):
        """Images for one prompt, one per generator, through the plain pipeline with latent updates."""
        device = pipe._execution_device
        batch = len(generators)
        network = denoiser(pipe)
        height = height or network.config.sample_size * pipe.vae_scale_factor
        width = width or network.config.sample_size * pipe.vae_scale_factor
        sampled = sampled_size(pipe, height, width)  # PixArt's aspect-ratio bin
        family_pass = guidance_pass(pipe, prompt, batch, *sampled)
        pipe.scheduler.set_timesteps(num_inference_steps, device=device, **schedule_kwargs(pipe, *sampled))
        timesteps = pipe.scheduler.timesteps
        step_sizes = self.scale_factor * np.sqrt(np.linspace(1.0, 0.5, len(timesteps)))
        shape = (batch, network.config.in_channels, *(side // pipe.vae_scale_factor for side in sampled))
        sigma = getattr(pipe.scheduler, "init_noise_sigma", 1.0)  # flow matching starts from unit noise
        latents = randn_tensor(shape, generator=generators, device=device, dtype=family_pass.text.dtype) * sigma
        latents = self.update(family_pass, latents, timesteps[0], 0, token_groups, float(step_sizes[0]))

        def updated(i, latents):  # the latent after step i, optimised for step i + 1
            following = i + 1
            if following < len(timesteps):
                return self.update(family_pass, latents, timesteps[following], following, token_groups,
                                   float(step_sizes[following]))
            return latents

        def on_step_end(pipeline, i, t, tensors):
            tensors["latents"] = updated(i, tensors["latents"])
            return tensors

        call = dict(prompt=[prompt] * batch, latents=latents / sigma, generator=generators,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height, width=width)
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            return pipe(**call, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"]).images
        # PixArt's pipelines have only the older `callback(step, t, latents)`, which cannot hand a new latent back:
        # the update is written into the loop's own latent tensor
        return pipe(**call, callback=lambda i, t, latents: latents.copy_(updated(i, latents)), callback_steps=1).images


def scaled_schedule(num_inference_steps: int) -> dict:
    """A&E's schedule for 50 steps (updates in the first 25, refinement at 0, 10, 20), in proportion for other
    step counts, so that short CPU runs keep its shape."""
    if num_inference_steps == 50:
        return {}
    fifth = num_inference_steps / 5
    return {"max_iter_to_alter": num_inference_steps // 2,
            "thresholds": {0: 0.05, round(fifth): 0.5, round(2 * fifth): 0.8}}


def attend_and_excite(num_inference_steps: int = 50, **overrides) -> LatentGuidance:
    return LatentGuidance(loss_fn=attend_excite_loss, **{**scaled_schedule(num_inference_steps), **overrides})


def sepen_test_time(lambda_sep: float = 1.0, lambda_en: float = 0.5, num_inference_steps: int = 50,
                    smoothing: str = "release", **overrides) -> LatentGuidance:
    schedule = {"max_iter_to_alter": scaled_schedule(num_inference_steps).get("max_iter_to_alter", 25)}
    return LatentGuidance(loss_fn=sepen_test_time_loss(lambda_sep, lambda_en, smoothing=smoothing), thresholds={},
                          **{**schedule, **overrides})
