"""Where a model's cross-attention goes: the share of each pixel's attention per token, at the maps SepEn reads.

    python scripts/attention_shares.py [--model ID_OR_PATH] [--prompt "a red circle and a red square"]

Two kinds of latents, at a few noise levels (8 draws each):

- noise: Gaussian latents noised to t, what SepEn's finetuning sees (no image data). Prints the mean over pixels
  of the start token, each prompt word, the end token and the padding tokens, then each word's spatial contrast
  (peak / mean of its map): how much there is for Separate and Enhance to work on.
- scenes (shapes models only): the VAE latents of rendered scenes of the prompt (random layouts) noised to t.
  Prints each word's attention inside its object's cells over outside them (1 = not localised): whether the
  model's maps follow the objects once there are objects to follow.

Default model: the shipped shapes model.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sae.attention import capture_cross_attention
from sae.finetune import encode_prompts
from sae.models import load_pipeline
from sae.tokens import encode_prompt_ids

TIMESTEPS = (900, 500, 100)


def maps_at(pipe, latents, text, t, generator, downscale=4):
    timesteps = torch.full((len(latents),), t)
    noisy = pipe.scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), timesteps)
    with torch.no_grad(), capture_cross_attention(pipe.unet, downscale) as store:
        pipe.unet(noisy.to(pipe.unet.dtype), timesteps, encoder_hidden_states=text.to(pipe.unet.dtype))
    return store.maps().float()  # (draws, H, W, tokens)


def scene_report(pipe, prompt, words, draws, generator, downscale=4) -> None:
    from benchmark.shapes.data import object_masks
    from benchmark.shapes.grounding import CaptionTokens
    from benchmark.shapes.world import caption_objects, render, scene_from_objects

    try:
        objects = caption_objects(prompt)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    scenes = [scene_from_objects(objects, rng=i) for i in range(draws)]
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(images.to(pipe.vae.dtype)).latent_dist.mean.float() * pipe.vae.config.scaling_factor
    text = encode_prompts(pipe, [prompt] * draws)
    owner = CaptionTokens(pipe.tokenizer)(prompt)  # (token position, object) of each colour and shape word
    covers = None
    for t in TIMESTEPS:
        maps = maps_at(pipe, latents, text, t, generator, downscale)
        if covers is None:  # per scene and object, the cells it covers at this map size
            covers = [torch.from_numpy(object_masks(scene, maps.shape[1]) >= 0.5) for scene in scenes]
        cells = []
        for pos, k in owner:
            ratios = [(maps[d, :, :, pos][cover[k]].mean() / maps[d, :, :, pos][~cover[k]].mean()).item()
                      for d, cover in enumerate(covers) if cover[k].any() and (~cover[k]).any()]
            cells.append(f"{words[pos - 1]} {np.mean(ratios):.2f}")
        print(f"t={t} scenes: inside/outside own object: " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local folder (default: the shapes model)")
    parser.add_argument("--prompt", default="a red circle and a red square")
    parser.add_argument("--downscale", type=int, default=4,
                        help="read the maps at 1/N of the latent side (4: the maps SepEn and A&E read)")
    parser.add_argument("--draws", type=int, default=8, help="noise draws per level")
    args = parser.parse_args()
    from benchmark.domains import default_model, model_domain

    if args.model is None:
        args.model = str(default_model())

    pipe = load_pipeline(args.model, device="cpu")
    ids = encode_prompt_ids(pipe.tokenizer, args.prompt)
    words = [w.replace("</w>", "") for w in pipe.tokenizer.convert_ids_to_tokens(ids)[1:-1]]
    n = len(ids)
    text = encode_prompts(pipe, [args.prompt] * args.draws)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(args.draws, channels, size, size, generator=generator)
    print(f"{args.model}: {args.prompt!r}")
    for t in TIMESTEPS:
        maps = maps_at(pipe, latents, text, t, generator, args.downscale)
        share = maps.mean(dim=(0, 1, 2))
        contrast = (maps.amax(dim=(1, 2)) / maps.mean(dim=(1, 2))).mean(dim=0)
        cells = " ".join(f"{w} {s:.3f}" for w, s in zip(words, share[1:n - 1].tolist()))
        print(f"t={t} noise, maps {tuple(maps.shape[1:3])}: start {share[0]:.3f} | {cells} | end {share[n - 1]:.3f} | "
              f"padding ({len(share) - n} tokens) {share[n:].sum():.3f}")
        print("    peak/mean per word: " + " ".join(f"{w} {c:.2f}" for w, c in zip(words, contrast[1:n - 1].tolist())))
    if model_domain(args.model) == "shapes":  # the world's scenes give a ground truth per object
        scene_report(pipe, args.prompt, words, args.draws, generator, args.downscale)


if __name__ == "__main__":
    main()
