"""Seeded sampling: one generator per seed, so that any subset of seeds reproduces the same images."""

from __future__ import annotations

import re

import torch


def parse_seeds(text: str) -> list[int]:
    """"0-3" -> [0, 1, 2, 3]; "0,5,7-8" -> [0, 5, 7, 8]."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"bad seed range {part!r}: use forms like 0-63 or 0,3,5-7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ValueError(f"bad seed range {part!r}: the end is before the start")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


GENERATOR_DEVICES = ("cpu", "cuda")
# Stable Diffusion's classifier-free guidance scale (diffusers' default), which Attend-and-Excite's release samples
# at; the one place the value is written
DEFAULT_GUIDANCE = 7.5
DEFAULT_STEPS = 50  # denoising steps: Stable Diffusion's, and every release's here


def seed_generators(seeds: list[int], device: str = "cpu") -> list[torch.Generator]:
    """One generator per image: diffusers draws each image's initial latents from its own generator, so an image
    depends on its seed alone, not on the batch. On the CPU (the default) the same seed gives the same noise on
    any machine and device; "cuda" is the release's choice (`torch.Generator("cuda")`): other noise for the same
    seed, reproducible only on CUDA."""
    if str(device).split(":")[0] not in GENERATOR_DEVICES:
        raise ValueError(f"generator device must be one of {GENERATOR_DEVICES}, got {device!r}")
    return [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]


def generate(pipe, prompt: str, seeds: list[int], num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = 6.0,
             batch_size: int = 4, height: int | None = None, width: int | None = None, generator_device: str = "cpu",
             **kwargs):
    """Images for `prompt`, one per seed, generated `batch_size` at a time."""
    images = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        # "cuda": the pipeline's own GPU (a generator on another one cannot draw its noise)
        on = str(pipe.device) if generator_device == "cuda" else generator_device
        if generator_device == "cuda" and pipe.device.type != "cuda":
            raise ValueError("generator device cuda draws the noise on the pipeline's GPU: load the pipeline on one "
                             "(--device cuda), or draw on the CPU")
        result = pipe(prompt=[prompt] * len(chunk), generator=seed_generators(chunk, on),
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      height=height, width=width, **kwargs)
        images.extend(result.images)
    return images
