"""What differs between model families for the methods: how a prompt conditions the denoiser.

Stable Diffusion 1.x/2.x conditions its UNet on one CLIP encoder's hidden states. SDXL concatenates two CLIP
encoders' hidden states and adds the second's pooled embedding and six "time ids" (original size, crop corner,
target size) through `added_cond_kwargs`. Everything else the methods use is shared: the `attn2` cross-attention
layers at a quarter of the latent side, CLIP's tokenizer (the same word positions in both of SDXL's), and the
trained `attn2.to_k` (docs/backbones.md).
"""

from __future__ import annotations

import torch

from .models import model_family

METHOD_FAMILIES = ("sd", "sdxl")  # the families the attention methods (SepEn, A&E, the test-time variant) run on


def conditioning(pipe, prompts: list[str], height: int | None = None,
                 width: int | None = None) -> tuple[torch.Tensor, dict]:
    """The denoiser's text embeddings `(batch, tokens, dim)` for a conditional pass (no guidance) and its other
    keyword arguments, as the family's own pipeline makes them; `height` and `width` in pixels (SDXL's time ids;
    default: the UNet's sample size)."""
    family = model_family(pipe)
    with torch.no_grad():
        if family == "sd":
            tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            return pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0], {}
        if family == "sdxl":
            device = pipe.unet.device
            embeddings, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=False)
            side = pipe.unet.config.sample_size * pipe.vae_scale_factor
            size = (height or side, width or side)
            time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeddings.dtype,
                                              text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
            time_ids = time_ids.to(device).repeat(len(prompts), 1)
            return embeddings, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    raise ValueError(f"the attention methods run on {', '.join(METHOD_FAMILIES)} models, not on {family} "
                     "(docs/backbones.md)")
