"""Where a model's cross-attention goes: the share of each pixel's attention per token, at the maps SepEn reads.

    python scripts/attention_shares.py [--model ID_OR_PATH] [--prompt "a red circle and a red square"]

Prints, for a few noise levels, the mean over pixels (and over 8 noise draws) of the start token, each prompt
word, the end token and the padding tokens, then each object word's spatial contrast (peak / mean of its map):
how much there is for Separate and Enhance to work on. Default model: the shipped shapes model.
"""

from __future__ import annotations

import argparse

import torch

from sae.attention import capture_cross_attention
from sae.finetune import encode_prompts
from sae.models import load_pipeline
from sae.tokens import encode_prompt_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id or local folder (default: the shapes model)")
    parser.add_argument("--prompt", default="a red circle and a red square")
    parser.add_argument("--draws", type=int, default=8, help="noise draws per level")
    args = parser.parse_args()
    if args.model is None:
        from benchmark.domains import SHAPES_MODEL

        args.model = str(SHAPES_MODEL)
    pipe = load_pipeline(args.model, device="cpu")
    ids = encode_prompt_ids(pipe.tokenizer, args.prompt)
    words = pipe.tokenizer.convert_ids_to_tokens(ids)[1:-1]
    n = len(ids)
    text = encode_prompts(pipe, [args.prompt] * args.draws)
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(args.draws, channels, size, size, generator=generator)
    print(f"{args.model}: {args.prompt!r}")
    for t in (900, 500, 100):
        timesteps = torch.full((args.draws,), t)
        noisy = pipe.scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), timesteps)
        with torch.no_grad(), capture_cross_attention(pipe.unet) as store:
            pipe.unet(noisy.to(pipe.unet.dtype), timesteps, encoder_hidden_states=text)
        maps = store.maps().float()  # (draws, H, W, tokens)
        share = maps.mean(dim=(0, 1, 2))
        contrast = (maps.amax(dim=(1, 2)) / maps.mean(dim=(1, 2))).mean(dim=0)
        cells = " ".join(f"{w.replace('</w>', '')} {s:.3f}" for w, s in zip(words, share[1:n - 1].tolist()))
        print(f"t={t} maps {tuple(store.map_hw)}: start {share[0]:.3f} | {cells} | end {share[n - 1]:.3f} | "
              f"padding ({len(share) - n} tokens) {share[n:].sum():.3f}")
        print("    peak/mean per word: " + " ".join(
            f"{w.replace('</w>', '')} {c:.2f}" for w, c in zip(words, contrast[1:n - 1].tolist())))


if __name__ == "__main__":
    main()
