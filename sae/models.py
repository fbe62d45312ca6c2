"""Loading text-to-image pipelines by hub id or local folder, and building test models offline.

`load_pipeline` is the one door to a model: a hub id or a local folder, with one clear error when neither
is reachable. `build_tiny_pipeline` writes a randomly initialised pipeline (tiny, or with SD 1.4's real
architecture; SD 1.x/2.x, SDXL, SD3, PixArt-Sigma, FLUX) whose every component is built here, the CLIP and T5
tokenizers included, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelNotFoundError(RuntimeError):
    """The model is neither a local folder nor reachable on the hub."""


def resolve_device(device: str | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)}") from None


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub id ("org/name"): absolute, relative with a dot, home, or deeper than one /."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def dtype_keyword() -> str:
    """diffusers reads `dtype=` from 0.40 on; older releases read `torch_dtype=` and would load a `dtype=` pipeline
    in fp32 without a word (0.40 and later still take `torch_dtype=`, with a deprecation warning)."""
    from diffusers import __version__
    from packaging.version import Version

    return "dtype" if Version(__version__).release >= (0, 40) else "torch_dtype"


# Model families by the pipeline class a model folder names (`model_index.json`'s `_class_name`): what `benchmark`
# methods declare they support. "sd": Stable Diffusion 1.x and 2.x; "sdxl": SDXL; others by their class.
FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
            "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "PixArtSigmaPipeline": "pixart",
            "PixArtAlphaPipeline": "pixart", "SanaPipeline": "sana"}


def pipeline_class_name(model: str | os.PathLike) -> str | None:
    """The pipeline class a local model folder names, or None (a hub id, or a folder without an index)."""
    try:
        return json.loads((Path(model).expanduser() / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def model_family(model) -> str:
    """A model's family (`FAMILIES`): of a loaded pipeline, or of a local folder; "sd" when it cannot be told
    from disk (a hub id), as every model this loader took before other families."""
    name = type(model).__name__ if not isinstance(model, (str, os.PathLike)) else pipeline_class_name(model)
    return FAMILIES.get(name or "StableDiffusionPipeline", name or "sd")


def load_pipeline(model: str | os.PathLike, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None):
    """Load a text-to-image pipeline from a hub id or a local folder (safety checker off, no code run): a
    `StableDiffusionPipeline`, or for another family the class its folder names (SDXL, SD3, FLUX, PixArt, ...,
    through diffusers' `DiffusionPipeline`).

    Raises `ModelNotFoundError` with a one-line remedy when the weights are not available.
    """
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    model = str(model)
    kwargs = {dtype_keyword(): resolve_dtype(dtype), "use_safetensors": None}
    local = Path(model).expanduser()
    sd = model_family(local) == "sd" if local.exists() else True
    if sd:  # (only its class takes these)
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    cls = StableDiffusionPipeline if sd else DiffusionPipeline
    if local.exists():
        check_model_folder(local)
        try:
            pipe = cls.from_pretrained(str(local), **kwargs)
        except (OSError, ValueError) as err:  # a component's weights or config missing
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelNotFoundError(f"{model}: the pipeline folder is incomplete or damaged ({reason}); "
                                     "download the model again (`hf download ID --local-dir DIR`)") from err
    elif looks_like_path(model):
        raise ModelNotFoundError(f"{model}: no such folder; pass a diffusers pipeline folder, or a hub id "
                                 "such as CompVis/stable-diffusion-v1-4")
    else:  # the hub: the class its index names (a safety checker it would load is off, as for local folders)
        try:
            pipe = DiffusionPipeline.from_pretrained(model, **{**kwargs, "safety_checker": None,
                                                               "requires_safety_checker": False})
        except Exception as err:  # hub errors come in many classes (offline, 404, gated, bad id)
            raise ModelNotFoundError(
                f"cannot load model {model!r}: not a local folder and not loadable from the Hugging Face hub "
                f"({type(err).__name__}). Download it where there is network (`hf download {model} "
                f"--local-dir DIR`) and pass --model DIR, or make a test model with `python -m sae tiny-model DIR`."
            ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device) if not isinstance(device, torch.device) else device)


def quiet_loading() -> None:
    """The libraries' loading bars off for this process (`--no-progress`)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def check_model_folder(folder: Path) -> None:
    """A local pipeline folder has its index and every component the index names, or `ModelNotFoundError` says
    what is missing (cheap: no weights read; `benchmark run` checks it before it starts its processes)."""
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(f"{folder}: folder has no model_index.json; pass a diffusers pipeline folder "
                                 "(e.g. one written by `python -m sae tiny-model DIR` or `hf download ID`)")
    missing = missing_components(folder)
    if missing:  # diffusers would load the pipeline without them and fail at the first prompt
        raise ModelNotFoundError(f"{folder}: the pipeline folder has no {', '.join(f'{m}/' for m in missing)} "
                                 "(model_index.json names it); download the model again "
                                 "(`hf download ID --local-dir DIR`)")


def missing_components(folder: Path) -> list[str]:
    """The components `model_index.json` names (a library and a class) that have no folder; [] when it cannot be
    read (loading names that)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    named = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
             and len(value) == 2 and all(value)]
    return [name for name in named if not (folder / name).is_dir()]


def clip_tokenizer(model_max_length: int = 77):
    """CLIP's BPE tokenizer built offline from the vocabulary that open_clip ships.

    Same ids as `openai/clip-vit-large-patch14`'s tokenizer (start 49406, end/pad 49407).
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    # open_clip names the special tokens differently from the hub's CLIP tokenizer
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# The shipped suites (where `benchmark.suites` finds them): their words make the offline T5 tokenizer's vocabulary
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


def t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer built offline, in T5's own layout (Unigram pieces, "▁" before each word, pad 0, end 1,
    unknown 2, an end token and no start token) over a small vocabulary: every word of the shipped suites as one
    piece, and single characters, so that any other word still encodes (letter by letter)."""
    import string

    from transformers import T5Tokenizer

    words, chars = set(), set(string.ascii_letters + string.digits + string.punctuation)
    for suite in sorted(PROMPTS_DIR.glob("*.jsonl")):  # none where only the package is installed: characters only
        for line in filter(str.strip, suite.read_text(encoding="utf-8").splitlines()):
            prompt = str(json.loads(line).get("prompt", ""))
            words.update(re.findall(r"\w+", prompt))
            chars.update("".join(prompt.split()))
    # a word's own piece scores above any split of it into characters
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -5.0) for word in sorted(words)] + [(char, -10.0) for char in sorted(chars)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(tokenizer, settings: dict):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings)


def _t5_encoder(tokenizer, settings: dict):
    """T5 v1.1's encoder (gated GELU), the text encoder of SD3, PixArt and FLUX, sized by `settings`."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                                   relative_attention_max_distance=32, **settings))


def _tiny_configs():
    # SD 1.x's layout in miniature: four resolutions, cross-attention in the first three down blocks and the
    # last three up blocks, so that the 1/4-resolution maps come from down_blocks.2 and up_blocks.1 as in SD.
    unet = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
               layers_per_block=1, norm_num_groups=16, sample_size=64)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=32)
    return unet, vae, text


def _sd14_configs():
    # Stable Diffusion v1.4's published architecture (random weights): for timing real-size runs offline.
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=2, norm_num_groups=32, sample_size=512)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768, hidden_act="quick_gelu")
    return unet, vae, text


def _sd2_configs():
    # SD 2.x's layout in miniature: SD 1.x's blocks with linear projections in the transformers, heads of a fixed
    # width (more heads in wider blocks: 2, 2, 4), a wider text encoder (OpenCLIP's place) and v-prediction.
    unet = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=48, attention_head_dim=(2, 2, 4, 4), use_linear_projection=True,
                norm_num_groups=16)
    vae = _tiny_configs()[1]
    text = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, projection_dim=48,
                hidden_act="gelu")
    return unet, vae, text


# SDXL's block layout (both its sizes): no attention at full size, linear projections, the pooled text embedding and
# the time ids added to the timestep embedding
SDXL_BLOCKS = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   use_linear_projection=True, addition_embed_type="text_time")


def _sdxl_configs():
    # SDXL's layout in miniature: three resolutions, cross-attention at 1/2 and 1/4 of the latent side (no attention
    # at full size), two CLIP text encoders whose outputs are concatenated (cross_attention_dim = 32 + 32), and
    # the pooled text embedding and six time ids added to the timestep embedding (6 x 8 + 32 = 80).
    unet = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
                attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 2), addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=16, **SDXL_BLOCKS)
    vae = {**_tiny_configs()[1], "scaling_factor": 0.13025}
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=32)
    return unet, vae, text


def _sdxl_base_configs():
    # SDXL base 1.0's published architecture (random weights): for timing real-size runs offline. Its second text
    # encoder (OpenCLIP bigG) is larger than the first (CLIP ViT-L): its config rides along as "text_2".
    unet = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, cross_attention_dim=2048, norm_num_groups=32,
                **SDXL_BLOCKS)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768, hidden_act="quick_gelu")
    text["text_2"] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                          projection_dim=1280, hidden_act="gelu")
    return unet, vae, text


# A tiny CLIP text encoder of the transformer families (one or two of them beside T5)
_TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)


def _sd3_configs():
    # SD3's layout in miniature (MMDiT): joint blocks over 2x2 patches of a 16-channel latent, 64 px; two CLIP
    # encoders with projections (their pooled outputs concatenated: 32 + 32) and T5, whose width the CLIP hidden
    # states (32 + 32) are padded to before the three run as one text sequence.
    transformer = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                       attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                       pooled_projection_dim=64, pos_embed_max_size=32)
    vae = {**_tiny_configs()[1], "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
           "scaling_factor": 1.5305, "shift_factor": 0.0609}
    text = dict(clip=_TINY_CLIP, t5=dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4))
    return transformer, vae, text


def _pixart_configs():
    # PixArt-Sigma's layout in miniature: a DiT whose blocks cross-attend to T5 (caption_channels: T5's width),
    # with one timestep modulation for all blocks (AdaLN-single) and a learned variance (twice the latent channels
    # out). Asked for 64 px, the pipeline samples at its smallest aspect-ratio bin (256 px) and resizes: patches of
    # 8x8 latent pixels keep that to 16x16 tokens.
    transformer = dict(sample_size=32, patch_size=8, in_channels=4, out_channels=8, num_layers=2,
                       attention_head_dim=8, num_attention_heads=4, cross_attention_dim=32, caption_channels=32,
                       norm_type="ada_norm_single")
    text = dict(t5=dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4))
    # (no attention in the VAE's middle block: over 128x128 latent pixels it would cost more than all the rest)
    return transformer, {**_tiny_configs()[1], "mid_block_add_attention": False}, text


def _flux_configs():
    # FLUX.1's layout in miniature: double-stream (joint) blocks then single-stream blocks over 2x2-packed patches
    # of a 16-channel latent; text from T5 alone, CLIP's pooled output as the global vector, the guidance scale as
    # an input (FLUX.1-dev's distilled guidance). The pipeline's default size is 128 latent pixels a side whatever
    # the model, so a VAE that does not downsample keeps its images at 128 px.
    transformer = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                       num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                       axes_dims_rope=(4, 6, 6))
    vae = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16,),
               down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), layers_per_block=1,
               norm_num_groups=16, sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
               scaling_factor=0.3611, shift_factor=0.1159, mid_block_add_attention=False)  # (as PixArt's)
    text = dict(clip=_TINY_CLIP, t5=dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4))
    return transformer, vae, text


ARCHITECTURES = {"tiny": _tiny_configs, "sd14": _sd14_configs, "sd2": _sd2_configs, "sdxl": _sdxl_configs,
                 "sdxl-base": _sdxl_base_configs, "sd3": _sd3_configs, "pixart": _pixart_configs,
                 "flux": _flux_configs}


def build_tiny_pipeline(arch: str = "tiny", seed: int = 0):
    """A randomly initialised pipeline built entirely offline: a `StableDiffusionPipeline`, or SDXL's, SD3's,
    PixArt-Sigma's or FLUX's by `arch`."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)}")
    unet_cfg, vae_cfg, text_cfg = ARCHITECTURES[arch]()
    torch.manual_seed(seed)
    if arch in _TRANSFORMER_PIPELINES:
        return _TRANSFORMER_PIPELINES[arch](unet_cfg, AutoencoderKL(**vae_cfg), text_cfg)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    tokenizer = clip_tokenizer()

    def text_config(settings):
        return _clip_text_config(tokenizer, settings)

    second = text_cfg.pop("text_2", text_cfg)
    text_encoder = CLIPTextModel(text_config(text_cfg))
    if unet_cfg.get("addition_embed_type") == "text_time":  # SDXL's layout
        return _tiny_sdxl(unet, vae, tokenizer, text_encoder, text_config(second))
    # SD 1.x's scheduler settings; SD 2.x's (768 px) DDIM with v-prediction
    if arch == "sd2":
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type="v_prediction")
    else:
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                                  set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _tiny_sdxl(unet, vae, tokenizer, text_encoder, text_config):
    """SDXL's pipeline around the parts: a second CLIP text encoder with its projection (the pooled embedding),
    the same offline tokenizer twice, and SDXL's Euler sampler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=unet,
                                     scheduler=scheduler, force_zeros_for_empty_prompt=True)


def _tiny_sd3(transformer_cfg, vae, text_cfg):
    """SD3's pipeline: the MMDiT, CLIP twice with projections (the same offline tokenizer), T5, flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    transformer = SD3Transformer2DModel(**transformer_cfg)
    tokenizer, t5 = clip_tokenizer(), t5_tokenizer()
    clip = _clip_text_config(tokenizer, text_cfg["clip"])
    return StableDiffusion3Pipeline(transformer=transformer, vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    text_encoder=CLIPTextModelWithProjection(clip), tokenizer=tokenizer,
                                    text_encoder_2=CLIPTextModelWithProjection(clip), tokenizer_2=clip_tokenizer(),
                                    text_encoder_3=_t5_encoder(t5, text_cfg["t5"]), tokenizer_3=t5)


def _tiny_pixart(transformer_cfg, vae, text_cfg):
    """PixArt-Sigma's pipeline: the DiT, T5 alone, and its DPM-Solver++ sampler on the linear beta schedule."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(**transformer_cfg)
    t5 = t5_tokenizer()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2,
                                            lower_order_final=True)
    return PixArtSigmaPipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                               text_encoder=_t5_encoder(t5, text_cfg["t5"]), tokenizer=t5)


def _tiny_flux(transformer_cfg, vae, text_cfg):
    """FLUX's pipeline: the transformer, CLIP (pooled vector) and T5 (the sequence), flow matching with its shift
    growing with the image's token count."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    transformer = FluxTransformer2DModel(**transformer_cfg)
    tokenizer, t5 = clip_tokenizer(), t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                        text_encoder=CLIPTextModel(_clip_text_config(tokenizer, text_cfg["clip"])),
                        tokenizer=tokenizer, text_encoder_2=_t5_encoder(t5, text_cfg["t5"]), tokenizer_2=t5)


_TRANSFORMER_PIPELINES = {"sd3": _tiny_sd3, "pixart": _tiny_pixart, "flux": _tiny_flux}


def write_tiny_model(out_dir: str | os.PathLike, arch: str = "tiny", seed: int = 0) -> Path:
    """Write a random pipeline folder that `load_pipeline(out_dir)` loads offline."""
    out = Path(out_dir)
    pipe = build_tiny_pipeline(arch=arch, seed=seed)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
