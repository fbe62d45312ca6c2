"""The shapes model: a miniature Stable Diffusion (VAE + UNet + CLIP text encoder) for the 64 px shapes world.

Everything here is a plain diffusers/transformers component, so the trained model is a normal
`StableDiffusionPipeline` folder: `sae.models.load_pipeline(DIR)` and `StableDiffusionPipeline.from_pretrained(DIR)`
load it offline. `build_pipeline(config)` makes the untrained pipeline; `benchmark.shapes.train` trains it.

Design (measured on the project's 2-core CPU, see `ARCHITECTURES` and train.py):

* VAE: `AutoencoderKL` with downsampling factor 2 (64x64x3 -> 32x32x4 latents). The world's objects are
  12-22 px, so at factor 2 they are 6-11 latent px and the 1/4-resolution cross-attention maps (8x8) still give
  each object 1.5-3 cells; with factor 4 they would be 4x4 maps (an object under one cell), too coarse for the
  SepEn losses that read them, although each step would be ~2.5x cheaper. The flat colours reconstruct
  exactly enough for the detector after a few minutes of training.
* UNet: SD 1.x's layout in miniature (four resolutions 32/16/8/4, a cross-attention mid block), but
  cross-attention only where it is cheap on a CPU: `down_blocks.2` and `up_blocks.1` (8x8 = 1/4 of the latent
  side, the maps that SepEn reads), `down_blocks.3`/`up_blocks.0` and the mid block (4x4). The 32x32 and 16x16
  blocks are plain ResNet blocks (DownBlock2D/UpBlock2D): backpropagating attention over 1024 or 256 pixels
  dominated the step time on CPU while adding little for 64 px flat shapes.
* Text encoder: a small `CLIPTextModel` with CLIP's real tokenizer (built offline by `sae.models.clip_tokenizer`,
  77 tokens as in SD), trained jointly with the UNet.
* Scheduler: SD 1.x's betas (scaled_linear 0.00085-0.012, 1000 steps) rescaled to zero terminal SNR, with
  v-prediction (see `sd_scheduler_kwargs` for why). Training uses DDPM noising; the saved pipeline samples with
  DDPM's ancestral steps (`DDPMScheduler`, trailing timesteps, 30 steps; see `build_scheduler` for why).
* Latents: "RGB-like": training pulls latent channels 0-2 towards the 2x2-pooled image and keeps channel 3
  (sub-pixel edge detail) small (train.TrainConfig.vae_align), so that a UNet prediction that falls short of
  an object's latent decodes as a paler shape of the same hue rather than another colour. Afterwards the
  per-channel mean and std are folded into the VAE's quant convolutions (`normalize_latent_channels`), so
  latents are zero-mean and unit-variance per channel and the scaling factor is 1.
"""

from __future__ import annotations

import copy

import torch

# Latent side is 32 (64 px / 2); the 1/4-resolution maps are 8x8.
IMAGE_SIZE = 64
LATENT_SIZE = 32

# No self-attention in the VAE's mid block: at 32x32 it cost more than the rest of the encoder, which runs
# on every training batch (0.09 s instead of 0.25 s per 32 images on one core).
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False)

_DOWN = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")


def _unet(channels, layers=1, head_dim=8, cross_dim=64, down=_DOWN, up=_UP, groups=16):
    return dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=layers,
                block_out_channels=tuple(channels), down_block_types=down, up_block_types=up,
                cross_attention_dim=cross_dim, attention_head_dim=head_dim, norm_num_groups=groups)


def _text(hidden=64, layers=2, heads=4, mlp=4):
    return dict(hidden_size=hidden, intermediate_size=hidden * mlp, num_hidden_layers=layers,
                num_attention_heads=heads, projection_dim=hidden)


# name -> (unet config, text config). "small" is the shipped model; the others are probes (what each tests and
# what it showed: scripts/probes/README.md).
ARCHITECTURES = {
    "small": (_unet((32, 64, 128, 128)), _text(64)),
    "wide": (_unet((64, 64, 128, 128)), _text(64)),
    # diffusers reads `attention_head_dim` as the number of heads: 32 heads of 4 dims (the shipped model: 8 of 16)
    "small-wideheads": (_unet((32, 64, 128, 128), head_dim=32), _text(64)),
    # a text encoder without transformer layers: each token is its word plus its position, padding carries nothing
    "small-tokens": (_unet((32, 64, 128, 128)), _text(64, layers=0)),
    # SD's layout: cross-attention at 32, 16 and 8 px
    "small-sdlayout": (_unet((32, 64, 128, 128), down=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                             up=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3), _text(64)),
}


def configs(arch: str = "small") -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) keyword configs of an architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown shapes architecture {arch!r}: use one of {sorted(ARCHITECTURES)}")
    unet, text = ARCHITECTURES[arch]
    return copy.deepcopy(unet), copy.deepcopy(VAE_CONFIG), copy.deepcopy(text)


def sd_scheduler_kwargs() -> dict:
    """The noise schedule: SD 1.x's scaled_linear betas, rescaled to zero terminal SNR, with v-prediction.

    Measured on this world: with SD's own schedule (terminal SNR 0.005, epsilon prediction, min-SNR-5) the
    trained UNet barely used the prompt at high noise (its prediction moved < 1% between prompts at t=900 after
    1,000 steps) and samples came out yellow/orange whatever the colour asked: at t=999 the latents still
    carry 7% of the image, so the model learns to read colour and layout from that leak, which sampling
    (from pure noise) never provides. Zero terminal SNR (Lin et al. 2024) removes the leak; it needs v-prediction.
    """
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", rescale_betas_zero_snr=True)


def build_vae(seed: int = 0, init_logvar: float = -6.0):
    """The untrained VAE. The posterior's log-variance starts at `init_logvar` (std e^-3 = 0.05) instead of 0:
    from std 1 the reconstruction loss takes thousands of steps to shrink it, and meanwhile the decoder learns to
    blur (measured: std 0.55 and 54% of reconstructions detector-exact after 400 steps)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    with torch.no_grad():
        vae.encoder.conv_out.bias[VAE_CONFIG["latent_channels"]:] = init_logvar
    return vae


@torch.no_grad()
def normalize_latent_channels(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make the VAE's latents (posterior means) zero-mean, unit-std per channel without changing what it decodes.

    `mean`, `std`: per-channel statistics of the current latents. z' = (z - mean) / std is folded into the
    encoder's `quant_conv` (means and log-variances) and undone in the decoder's `post_quant_conv`; the
    scaling factor becomes 1. A single SD-style scaling factor left one channel at 0.13 of the others' spread,
    so that small UNet errors in it tinted whole backgrounds.
    """
    c = vae.config.latent_channels
    mean, std = mean.to(vae.quant_conv.weight), std.to(vae.quant_conv.weight)
    qw, qb = vae.quant_conv.weight, vae.quant_conv.bias
    qw[:c] /= std.view(c, 1, 1, 1)
    qb[:c] = (qb[:c] - mean) / std
    qb[c:] -= 2 * torch.log(std)
    pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias
    pb += (pw[:, :, 0, 0] @ mean)
    pw *= std.view(1, c, 1, 1)
    vae.register_to_config(scaling_factor=1.0)


def build_text_encoder(tokenizer, arch: str = "small", seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    _, _, text = configs(arch)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **text))


def build_unet(arch: str = "small", seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet, _, _ = configs(arch)
    return UNet2DConditionModel(**unet)


def build_scheduler():
    """The sampling scheduler saved with the pipeline: DDPM's ancestral steps with "trailing" timesteps (the first
    step at t=999, pure noise, as zero terminal SNR requires).

    Measured on the shipped model (results/shapes/sampler.md, validation seed 5000, 30 steps): deterministic DDIM
    finds the single object on 0.875 of 144 prompts at guidance 7.5, DDPM on 0.938 (0.986 at guidance 3), with
    three objects all present 0.097 vs 0.250. Its latents stay at unit variance, so A&E's and SepEn's latent
    updates (benchmark/guidance.py) apply unchanged; Euler ancestral, as good, works in sigma-scaled latents.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler(**sd_scheduler_kwargs(), clip_sample=False, timestep_spacing="trailing", steps_offset=1)


def training_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**sd_scheduler_kwargs(), clip_sample=False)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler or build_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(arch: str = "small", seed: int = 0):
    """The untrained shapes pipeline (all components random), built offline."""
    from sae.models import clip_tokenizer

    tokenizer = clip_tokenizer()
    return assemble_pipeline(build_vae(seed), build_text_encoder(tokenizer, arch, seed + 1), tokenizer,
                             build_unet(arch, seed + 2))


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
