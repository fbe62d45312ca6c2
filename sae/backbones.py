"""What differs between model families for the methods: how a prompt conditions the denoiser.

Stable Diffusion 1.x/2.x conditions its UNet on one CLIP encoder's hidden states. SDXL concatenates two CLIP
encoders' hidden states and adds the second's pooled embedding and six "time ids" (original size, crop corner,
target size) through `added_cond_kwargs`. Everything else the methods use is shared: the `attn2` cross-attention
layers at a quarter of the latent side, CLIP's tokenizer (the same word positions in both of SDXL's), and the
trained `attn2.to_k` (docs/backbones.md).

SD3 (an MMDiT, `pipe.transformer`) takes the prompt embeddings of CLIP-L, CLIP-G and T5 as one sequence and their
pooled projections, and is trained by flow matching rather than DDPM (`FlowMatchingForward`). Its maps and trained
keys come from joint attention (`sae.attention.capture_transformer_attention`, `add_k_proj`). PixArt (a DiT)
cross-attends to T5's tokens under a padding mask: SD's `attn2` recipe at its patch grid, with T5's positions (no
start token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from .models import model_family

# The families the attention methods (SepEn and its training, A&E, the test-time variant) run on
METHOD_FAMILIES = ("sd", "sdxl", "sd3", "pixart")
# Those of them whose maps are a designed experiment, unvalidated on real weights: every report marks the methods
EXPERIMENTAL_FAMILIES = ("sd3", "pixart")
UNET_FAMILIES = ("sd", "sdxl")  # maps of a UNet's cross-attention, the ones the pictures of maps draw


def denoiser(pipe):
    """The network the methods read and train: SD3's transformer, or the UNet."""
    transformer = getattr(pipe, "transformer", None)
    return transformer if transformer is not None else pipe.unet


class FlowMatchingForward:
    """SD3's forward process for training: `noisy = (1 - sigma) * x0 + sigma * noise` with `sigma = t / 1000`.

    FlowMatchEulerDiscreteScheduler's convention: its timesteps are its sigmas times `num_train_timesteps`, and the
    transformer reads a timestep as such, so a timestep drawn uniformly from [0, 1000) as on SD (the paper's draw)
    is the sigma t / 1000. SD3 itself was trained on logit-normal sigmas and samples on a shifted schedule; uniform
    t keeps SD's draw over the whole noise range.
    """

    def __init__(self, num_train_timesteps: int = 1000):
        self.config = SimpleNamespace(num_train_timesteps=int(num_train_timesteps))  # as a scheduler's config

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = (timesteps.to(torch.float32) / self.config.num_train_timesteps).view(-1, *[1] * (latents.dim() - 1))
        return (1 - sigma) * latents + sigma * noise


def conditioning(pipe, prompts: list[str], height: int | None = None,
                 width: int | None = None) -> tuple[torch.Tensor, dict]:
    """The denoiser's text embeddings `(batch, tokens, dim)` for a conditional pass (no guidance) and its other
    keyword arguments, as the family's own pipeline makes them; `height` and `width` in pixels (SDXL's time ids;
    default: the UNet's sample size). The denoiser takes them with the timestep as a keyword (`timestep=`), which
    a UNet and SD3's transformer both name so."""
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
        if family == "sd3":  # CLIP-L and CLIP-G's 77 tokens (side by side, padded to T5's width), then T5's
            embeddings, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                          device=pipe.transformer.device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=False)
            return embeddings, {"pooled_projections": pooled}
        if family == "pixart":  # T5's tokens with their padding mask, and the size conditions
            device = pipe.transformer.device
            embeddings, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                        num_images_per_prompt=1, device=device)
            sizes = {"resolution": None, "aspect_ratio": None}  # PixArt-Sigma's: none
            if type(pipe).__name__ == "PixArtAlphaPipeline" and pipe.transformer.config.sample_size == 128:
                side = pipe.transformer.config.sample_size * pipe.vae_scale_factor  # PixArt-Alpha 1024's
                height, width = height or side, width or side
                sizes = {"resolution": torch.tensor([[height, width]] * len(prompts)),
                         "aspect_ratio": torch.tensor([[height / width]] * len(prompts))}
                sizes = {k: v.to(dtype=embeddings.dtype, device=device) for k, v in sizes.items()}
            return embeddings, {"encoder_attention_mask": mask, "added_cond_kwargs": sizes}
    raise ValueError(f"the methods condition {', '.join(METHOD_FAMILIES)} models, not {family} (docs/backbones.md)")


@dataclass
class DenoiserPass:
    """A conditional pass of a family's denoiser on noisy latents, as its pipeline's loop makes it: what the latent
    guidance (Attend-and-Excite, the test-time variant) differentiates through for the maps.

    `scale_input`: the sampler's input scaling where the pipeline applies it (SDXL's Euler divides by
    sqrt(sigma^2 + 1); SD's samplers leave the input as it is). `text_length`: the token positions the maps are read
    at, where the text sequence is longer: SD3's CLIP positions (77), before T5's; PixArt's prompt tokens, before
    T5's masked padding. `start_token`: whether position 0 is a start token (CLIP's), as Attend-and-Excite's maps
    expect; T5 has none, so its maps are read with an empty start column in front (`text_maps`, `text_groups`).
    """

    network: torch.nn.Module
    text: torch.Tensor
    kwargs: dict = field(default_factory=dict)
    scale_input: Callable | None = None
    text_length: int | None = None
    start_token: bool = True

    def __call__(self, latents: torch.Tensor, t: torch.Tensor):
        """The denoiser's output at `latents` (of any precision: the pass runs in the pipeline's)."""
        latents = latents.to(self.text.dtype)
        sample = self.scale_input(latents, t) if self.scale_input is not None else latents
        if self.text_length is not None:  # a transformer: a timestep per image, as its pipeline passes it
            return self.network(sample, timestep=t.expand(len(sample)), encoder_hidden_states=self.text,
                                **self.kwargs)
        return self.network(sample, t, encoder_hidden_states=self.text, **self.kwargs)

    def text_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Captured maps `(batch, H, W, tokens)` at the positions the token finder reads, each pixel's share
        renormalised over them, as a UNet's maps sum to one over CLIP's tokens: SD3's first 77 (CLIP's), PixArt's
        prompt tokens behind an empty start column; a UNet's as they are."""
        if self.text_length is None:
            return maps
        text = maps[..., :self.text_length]
        text = text / text.sum(dim=-1, keepdim=True)
        return text if self.start_token else torch.nn.functional.pad(text, (1, 0))

    def text_groups(self, token_groups):
        """The object token positions in `text_maps`' columns."""
        return token_groups if self.start_token else [[i + 1 for i in group] for group in token_groups]


def schedule_kwargs(pipe, height: int, width: int) -> dict:
    """What `scheduler.set_timesteps` needs beyond the step count to give the pipeline's own timesteps: a
    flow-matching scheduler with dynamic shifting takes the shift `mu` that SD3's pipeline computes from the image's
    token count; the others need nothing."""
    config = pipe.scheduler.config
    if model_family(pipe) != "sd3" or not config.get("use_dynamic_shifting"):
        return {}
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    patch = pipe.transformer.config.patch_size
    tokens = (height // pipe.vae_scale_factor // patch) * (width // pipe.vae_scale_factor // patch)
    return {"mu": calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                  config.get("base_shift", 0.5), config.get("max_shift", 1.16))}


def guidance_pass(pipe, prompt: str, batch: int, height: int, width: int) -> DenoiserPass:
    """The family's conditional pass for `batch` images of `prompt` at `height` x `width` pixels."""
    family = model_family(pipe)
    if family == "sd":  # the pipeline's own prompt encoding, repeated per image
        text, _ = pipe.encode_prompt(prompt, pipe._execution_device, batch, do_classifier_free_guidance=False)
        return DenoiserPass(pipe.unet, text)
    text, kwargs = conditioning(pipe, [prompt] * batch, height, width)
    if family == "sdxl":
        return DenoiserPass(pipe.unet, text, kwargs, pipe.scheduler.scale_model_input)
    if family == "pixart":  # the prompt's T5 tokens (its end token included), as the mask gives them
        return DenoiserPass(pipe.transformer, text, kwargs, text_length=int(kwargs["encoder_attention_mask"][0].sum()),
                            start_token=False)
    return DenoiserPass(pipe.transformer, text, kwargs, text_length=pipe.tokenizer.model_max_length)  # sd3


def sampled_size(pipe, height: int, width: int) -> tuple[int, int]:
    """The size the pipeline samples at when asked for `height` x `width` (PixArt samples at the nearest of its
    aspect-ratio bins and resizes the image after; the others at the size asked)."""
    if model_family(pipe) != "pixart":
        return height, width
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as pixart

    bins = {256: pixart.ASPECT_RATIO_2048_BIN, 128: pixart.ASPECT_RATIO_1024_BIN, 64: pixart.ASPECT_RATIO_512_BIN,
            32: pixart.ASPECT_RATIO_256_BIN}[pipe.transformer.config.sample_size]
    return pipe.image_processor.classify_height_width_bin(height, width, ratios=bins)
