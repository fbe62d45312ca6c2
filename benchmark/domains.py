"""A model's domain: which prompt suites and which metric models fit it.

- "natural": Stable-Diffusion-class models; the suites in `prompts/`, metrics with hub or local weights.
- "shapes": models of the shapes world (the shipped `benchmark/shapes/pretrained`, the embedded default);
  the suites in `prompts/shapes/` (same names), and the world's instruments (exact detector, world CLIP).

A model folder declares its domain in `benchmark_domain.json` ({"domain": "shapes"}); without one it is natural.
"""

from __future__ import annotations

import json
from pathlib import Path

from .suites import PROMPTS_DIR

NATURAL, SHAPES = "natural", "shapes"
DOMAIN_FILE = "benchmark_domain.json"
SHAPES_MODEL = Path(__file__).resolve().parent / "shapes" / "pretrained"
# What `benchmark run` uses when a flag is not given. Natural: the papers' protocol (50 steps, SepEn's 200 steps at
# lr 5e-6), no metrics unless asked (their weights must be fetched first). Shapes: the embedded default, sized to
# finish on 2 CPU cores (README: the full protocol), with the world's instruments; its guidance 3 (with the model's
# DDPM sampler) was chosen on a validation seed no result uses (results/shapes/sampler.md).
RUN_DEFAULTS = {
    NATURAL: {"methods": "plain", "num_seeds": 4, "steps": 50, "guidance": 7.5, "sepen_steps": 200,
              "sepen_lr": 5e-6, "sepen_maps": "probs", "sepen_map_downscale": 4,
              "sepen_latents": "noise", "sepen_latent_scale": "vae", "sepen_train_prompt": "release",
              "metrics": ""},
    SHAPES: {"methods": "plain,attend_excite,sepen", "num_seeds": 2, "steps": 30, "guidance": 3.0,
             "sepen_steps": 100, "sepen_lr": 3e-5, "sepen_maps": "probs",
             "sepen_map_downscale": 4, "sepen_latents": "noise", "sepen_latent_scale": "vae",
             "sepen_train_prompt": "suite",
             "metrics": "presence,clip,fid"},
}
# Natural models sample each method as its own release does (`Method.release_sampling`: SepEn at guidance 6,
# Attend-and-Excite and the plain model at 7.5); the shapes world samples every method alike (its model never saw
# "a photo of ..." captions either, hence its SepEn trains on the suite prompt).
RELEASE_SAMPLING = {NATURAL: True, SHAPES: False}


def sepen_settings(settings: dict) -> dict:
    """SepEn's per-prompt `FinetuneConfig` fields from run settings named as in RUN_DEFAULTS. With
    latents="samples" the samples are drawn with the run's steps and guidance; otherwise those stay out, so that a
    run with other sampling settings reuses the cached checkpoints."""
    fields = {"steps": settings["sepen_steps"], "learning_rate": settings["sepen_lr"], "maps": settings["sepen_maps"],
              "map_downscale": settings["sepen_map_downscale"], "latents": settings["sepen_latents"],
              "latent_scale": settings["sepen_latent_scale"]}
    if fields["latents"] == "samples":
        fields.update(sample_steps=settings["steps"], sample_guidance=settings["guidance"])
    return fields


def model_domain(model: str | Path) -> str:
    path = Path(model) / DOMAIN_FILE
    if path.is_file():
        return json.loads(path.read_text()).get("domain", NATURAL)
    return NATURAL


def prompts_dir(domain: str) -> Path:
    return PROMPTS_DIR / SHAPES if domain == SHAPES else PROMPTS_DIR


def _register_instruments() -> None:
    from .shapes.instruments import register

    register()


_register_instruments()
