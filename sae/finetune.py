"""The SepEn finetuner: trains only the cross-attention projections (`attn2.to_k` by default; on SD3, the joint
attention's text keys `add_k_proj`).

Each step (no image data, as in the paper and its release): "clean" latents drawn as Gaussian noise times the
VAE's `scaling_factor` (std 0.18 for SD 1.x) are noised by the DDPM forward process of the model's training betas
(whatever its sampling scheduler) to a timestep drawn uniformly from [0, 1000), the UNet runs on the concept-pair
prompts with the 1/4-resolution maps captured, and `lambda_sep * Separate + lambda_en * Enhance` is minimised.
The UNet forward stops right after the last captured layer (`StopForward`): the rest of the network cannot
change the maps, so it is neither run nor backpropagated. `latents="samples"` noises the base model's own samples
of the pair prompt instead of Gaussian latents (a departure from the paper, measured on the shapes model:
results/shapes/sepen_lr_sweep.md).
The optional norm loss compares noise predictions with the frozen base on single-concept prompts; it needs the
whole UNet, and the frozen base is the same module called with the original projection weights
(`torch.func.functional_call`), not a second copy of the UNet.
On SD3 the same steps run on its transformer: the maps of every joint block
(`sae.attention.capture_transformer_attention`) and the flow-matching forward process
(`sae.backbones.FlowMatchingForward`); on PixArt, the maps of every block's `attn2`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from .attention import (MAP_KINDS, StopForward, capture_attention, cross_attention_layers,
                        is_joint_transformer, is_transformer, object_maps, transformer_attention_layers)
from .backbones import FlowMatchingForward, conditioning, denoiser
from .checkpoint import base_fingerprints, load_delta, save_delta
from .files import atomic_path
from .losses import SMOOTHING_KERNELS, enhance_peaks, norm_loss, separate_loss
from .models import model_family
from .options import option
from .sampling import DEFAULT_GUIDANCE, generate
from .speed import frozen_weights_in
from .tokens import find_token_indices

# k: the keys of the text tokens (attn2.to_k on a UNet; on SD3, add_k_proj, which "add_k" names); q, v: the ablation
PROJECTIONS = ("k", "q", "v", "add_k")
LATENT_SOURCES = ("noise", "samples")
LATENT_SCALES = ("vae", "unit")
NORM_STEPS = ("combined", "separate")
HEAD_REDUCTIONS = ("mean", "release")
# The release's large-scale script reads the maps of these token positions whatever the prompt: for
# "a photo of a cat and a dog" they are "and" and the end token.
RELEASE_TOKEN_POSITIONS = (6, 9)
# The learning rates the release's scripts pass (`run_individual.sh`, `run_large.sh`), scaled by its `--scale_lr`:
# times the batch size, and twice that with the norm loss (per pair 2e-6 x 4 = 8e-6; large-scale 5e-7 x 4 x 2 = 4e-6)
RELEASE_PAIR_RATE, RELEASE_LARGE_RATE = 2e-6, 5e-7
# latents="samples" draws its samples from seeds far from the benchmark's (0-63 and the tuning seeds 200-203),
# so that no finetuning sees the starting noise of an image it is scored on.
SAMPLE_SEED_BASE = 1_000_000
# Devices where the steps run ahead of the host and losses are fetched in blocks (finetune's `log_every`).
DEFERRED_DEVICES = ("cuda",)
GRAPH_WARM_UP_STEPS = 3  # eager steps before a step is captured as a CUDA graph (lazy setup happens in them)
CHECKPOINT_NAME = "sepen.safetensors"  # written once, when training has finished: its presence means "complete"
PARTIAL_NAME = "sepen.partial.safetensors"  # the intermediate checkpoints a stopped run resumes from
STATE_NAME = "train_state.pt"
LOSSES_NAME = "losses.csv"


def latent_scale_value(text: str | float) -> str | float:
    """`latent_scale` from the command line: vae, unit, or a number."""
    if text in LATENT_SCALES:
        return text
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"latent scale takes vae, unit or a number, got {text!r}") from None


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite."""


@dataclass
class FinetuneConfig:
    """Training settings; the defaults are the paper's per-pair run (method.md)."""

    steps: int = option(200, "training steps", shown_default="200 per pair, 10000 large-scale")
    batch_size: int = option(4, "noisy latents per step")
    learning_rate: float = option(5e-6, "AdamW learning rate (the paper's; the release's scripts' effective rate is "
                                        "8e-6)", flag="lr", shown_default="5e-6 per pair, 4e-6 large-scale")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    lambda_sep: float = option(1.0, "weight of the Separate loss")
    lambda_en: float = option(0.5, "weight of the Enhance loss")
    lambda_norm: float = option(0.0, "weight of the norm loss (keeps the keys' norms)",
                                shown_default="0 per pair, 0.5 large-scale")
    projection: str = option("k", "which attn2 projection is trained: k (the method), q or v (the ablation); on "
                                  "SD3 k and add_k train the text keys (add_k_proj)", choices=PROJECTIONS)
    pair_reduction: str = option("max", "Separate over object pairs when a prompt has 3+ objects",
                                 choices=("max", "mean"))
    map_downscale: int = option(4, "maps the losses read, at 1/N of the latent side (4: SD 1.x's 16x16, the paper)")
    # SD3: the joint blocks whose maps the losses average (None: every block, the plan's first choice); not a flag
    joint_blocks: tuple[int, ...] | None = None
    maps: str = option("probs", "maps the losses read: probs (softmax over all tokens, the method) or sharpened "
                                "(Attend-and-Excite's text maps)", choices=tuple(MAP_KINDS))
    smoothing: str = option("release", "Enhance's Gaussian kernel: the release's [0.212, 0.576, 0.212] or the "
                                       "textbook [0.107, 0.787, 0.107]", choices=SMOOTHING_KERNELS)
    # Amplitude of the Gaussian "clean" latents: "vae", times the VAE's scaling_factor (the release: std 0.18215
    # for SD 1.x); "unit", std 1 (the amplitude of real images' latents); or a number, that std.
    latent_scale: str | float = option("vae", "std of the Gaussian clean latents: the VAE's scaling_factor (vae, "
                                              "the release; 0.18 on SD 1.x), 1 (unit), or a number",
                                       parse=latent_scale_value, metavar="vae|unit|STD")
    # With the norm loss: "combined", one optimizer step on the sum (the release's per-pair run); "separate", a
    # second AdamW step on the norm loss alone, with its own backward and clipping (the release's large-scale run).
    norm_step: str = option("combined", "with the norm loss: one optimizer step on the sum, or a second step on "
                                        "the norm loss alone", choices=NORM_STEPS,
                            shown_default="combined per pair, separate large-scale, as the release")
    latent_size: int | None = None  # default: the UNet's sample_size
    # What gets noised: "noise", Gaussian latents (the paper: no image data); "samples", the base model's own
    # samples of the pair prompt (a departure, for models whose words attend only where an image has objects).
    latents: str = option("noise", "what training noises: noise (Gaussian latents, the paper) or samples (the base "
                                   "model's own samples of the prompt)", choices=LATENT_SOURCES)
    latent_samples: int = 8  # latents="samples": how many, generated once before training
    sample_steps: int = 30  # ... with these sampling settings
    sample_guidance: float = DEFAULT_GUIDANCE
    # Timesteps drawn uniformly from [low, high); the paper: all of [0, 1000). A narrower high-noise range is a
    # departure that trains only where the layout is still being decided (where the test-time variant acts).
    timesteps: tuple[int, int] = (0, 1000)
    seed: int = option(0, "seeds the latents, timesteps and pair draws")
    checkpoint_every: int = option(50, "steps between checkpoints (a rerun resumes from the last)")
    mixed_precision: str = option("no", "CUDA autocast: the trained keys stay fp32, the frozen weights are cast "
                                        "once; with the CUDA graph, bf16 trains 200 steps in 5.3 s on one H200 "
                                        "(fp32 without the graph: 16.6 s; docs/speed.md)",
                                  choices=("no", "bf16", "fp16"))
    # The release's quirks, off by default (`with_release_quirks` turns them on; docs/protocol.md):
    # "release": the release's attention bookkeeping (`release_head_groups`): the second half of the batch's
    # (image x head) rows, in `batch_size` groups of consecutive rows, each loss a max within its group
    heads: str = "mean"
    token_positions: tuple[int, ...] | None = None  # fixed object token positions instead of the tokenizer's

    @classmethod
    def large_scale(cls, **overrides) -> FinetuneConfig:
        """The paper's large-scale run: 10,000 steps, lr 4e-6, norm loss 0.5 in its own optimizer step."""
        return cls(**{"steps": 10_000, "learning_rate": 4e-6, "lambda_norm": 0.5, "norm_step": "separate",
                      **overrides})

    def with_release_quirks(self, large_scale: bool = False) -> FinetuneConfig:
        """This config with the release's quirks on: its head grouping, its scripts' effective learning rate (the
        rate they pass times the batch size, `--scale_lr`, and twice that with the norm loss) and, large-scale,
        its hard-coded token positions."""
        rate = (RELEASE_LARGE_RATE if large_scale else RELEASE_PAIR_RATE) * self.batch_size
        return dataclasses.replace(self, heads="release", learning_rate=rate * (2 if self.lambda_norm > 0 else 1),
                                   token_positions=RELEASE_TOKEN_POSITIONS if large_scale else None)

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.maps not in MAP_KINDS:
            raise ValueError(f"maps must be one of {tuple(MAP_KINDS)}, got {self.maps!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.latent_scale not in LATENT_SCALES:
            try:
                self.latent_scale = float(self.latent_scale)
            except (TypeError, ValueError):
                raise ValueError(f"latent_scale must be one of {LATENT_SCALES} or a number, "
                                 f"got {self.latent_scale!r}") from None
        choices = {"latents": LATENT_SOURCES, "norm_step": NORM_STEPS,
                   "heads": HEAD_REDUCTIONS, "smoothing": SMOOTHING_KERNELS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.token_positions is not None:
            self.token_positions = tuple(int(p) for p in self.token_positions)
        if self.joint_blocks is not None:
            self.joint_blocks = tuple(int(b) for b in self.joint_blocks)
        self.adam_betas = tuple(self.adam_betas)
        self.timesteps = tuple(self.timesteps)
        if len(self.timesteps) != 2 or not 0 <= self.timesteps[0] < self.timesteps[1]:
            raise ValueError(f"timesteps must be a range (low, high) with 0 <= low < high, got {self.timesteps!r}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Counts at least 1, rates and weights finite and in range: a NaN or infinite setting trains nothing
        (or NaN keys) and is refused here, before any model is loaded."""
        counts = ("steps", "batch_size", "checkpoint_every", "map_downscale", "latent_samples", "sample_steps")
        for name in counts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        ranges = {"learning_rate": (0, 1, False), "lambda_sep": (0, 1e3, True), "lambda_en": (0, 1e3, True),
                  "lambda_norm": (0, 1e3, True), "weight_decay": (0, 1, True), "adam_eps": (0, 1, False),
                  "max_grad_norm": (0, 1e6, False), "sample_guidance": (0, 100, True)}
        if not isinstance(self.latent_scale, str):
            ranges["latent_scale"] = (0, 1e3, False)
        for name, (low, high, low_allowed) in ranges.items():
            value = getattr(self, name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {value!r}") from None
            if not (math.isfinite(number) and (low <= number if low_allowed else low < number) and number <= high):
                raise ValueError(f"{name} must be a finite number in {'[' if low_allowed else '('}{low:g}, "
                                 f"{high:g}], got {value!r}")

    def to_dict(self) -> dict:
        settings = dataclasses.asdict(self)
        if settings["joint_blocks"] is None:  # left out at its default: the settings of UNet runs do not name it
            del settings["joint_blocks"]
        return settings


def release_pair_prompt(concepts: list[str]) -> str:
    """The release's per-pair training prompt, `"a photo of {} and {}".format(c1, c2)` with the concept names as
    its scripts pass them: "a photo of bear and book" (no articles). Three or more concepts: joined by "and"."""
    return "a photo of " + " and ".join(concepts)


@dataclass
class ConceptPair:
    """Per-pair training: one prompt and its object words, repeated over the batch."""

    prompt: str
    objects: list[str]

    @property
    def concepts(self) -> list[str]:
        return list(self.objects)

    def identity(self) -> dict:
        return {"prompt": self.prompt, "objects": list(self.objects)}

    def draw(self, step: int, batch_size: int, seed: int) -> list[tuple[str, list[str]]]:
        return [(self.prompt, self.objects)] * batch_size


@dataclass
class ConceptPool:
    """Large-scale training: each batch draws one connector and two distinct concepts per element."""

    concepts_list: list[str]
    connectors: tuple[str, ...] = ("and", "with")
    template: str = "a photo of a {a} {connector} a {b}"  # the release's (always "a", whatever the word)

    def __post_init__(self):
        if len(set(self.concepts_list)) < 2:
            raise ValueError("large-scale training needs at least two distinct concepts")

    @property
    def concepts(self) -> list[str]:
        return list(self.concepts_list)

    def identity(self) -> dict:
        return {"concepts": list(self.concepts_list), "connectors": list(self.connectors), "template": self.template}

    def draw(self, step: int, batch_size: int, seed: int) -> list[tuple[str, list[str]]]:
        """The release's draw: one connector for the whole batch and 2 x batch_size concepts without repeats, so
        no concept appears twice in a batch; a pool smaller than that draws each element's two concepts apart."""
        rng = random.Random(f"{seed}:{step}")  # per step, so that a resumed run draws the same pairs
        connector = rng.choice(self.connectors)
        if len(self.concepts_list) >= 2 * batch_size:
            drawn = rng.sample(self.concepts_list, 2 * batch_size)
            pairs = [drawn[2 * i:2 * i + 2] for i in range(batch_size)]
        else:
            pairs = [rng.sample(self.concepts_list, 2) for _ in range(batch_size)]
        return [(self.template.format(a=a, b=b, connector=connector), [a, b]) for a, b in pairs]


def trainable_parameters(unet, projection: str = "k") -> dict[str, torch.nn.Parameter]:
    """The `attn2.to_<projection>` weights (and biases, where a model has them) of every cross-attention layer; on
    SD3's transformer, the text keys' `add_k_proj` of every joint block (projection k or add_k)."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if is_joint_transformer(unet):
        if projection not in ("k", "add_k"):
            raise ValueError(f"on SD3 SepEn trains the text keys (projection k or add_k), not {projection!r}")
        # `.attn.`: SD3.5's second attention (`attn2`) is the image's own, with no text keys
        return {name: p for name, p in unet.named_parameters() if ".attn.add_k_proj." in name}
    if projection == "add_k":
        raise ValueError("projection add_k is SD3's add_k_proj; a UNet's text keys are attn2.to_k (projection k)")
    params = {name: p for name, p in unet.named_parameters() if f".attn2.to_{projection}." in name}
    if not params:
        raise ValueError(f"the UNet has no cross-attention attn2.to_{projection} projections")
    return params


def trainable_projections(network) -> dict[str, torch.nn.Parameter]:
    """Every projection a checkpoint may train on this denoiser: a UNet's attn2 keys, queries and values; SD3's text
    keys."""
    projections = ("k",) if is_joint_transformer(network) else ("k", "q", "v")
    return {name: p for projection in projections for name, p in trainable_parameters(network, projection).items()}


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text embeddings `(batch, 77, dim)` as the pipeline makes them (padded to the tokenizer's length)."""
    return conditioning(pipe, prompts)[0]


def sepen_losses(unet, noisy_latents, timesteps, text_embeddings, token_groups,
                 pair_reduction: str = "max", map_downscale: int = 4, maps_kind: str = "probs",
                 smoothing: str = "release", heads: str = "mean", unet_kwargs: dict | None = None,
                 joint_blocks=None) -> dict[str, torch.Tensor]:
    """Separate and Enhance of one UNet pass (stopped after the last captured layer), averaged over the batch.

    `maps_kind` "sharpened" reads the losses off Attend-and-Excite's text maps instead of the raw probabilities
    (`sae.attention.sharpened_text_maps`): a departure from the paper, for models whose object tokens get a small
    share of each pixel's attention (the shapes model: 3-4%). `heads="release"` reproduces the release's
    bookkeeping (`release_head_groups`). `unet_kwargs`: the family's other conditioning (`sae.backbones`).
    `unet` may be SD3's transformer: its maps are those of the joint blocks `joint_blocks` (default: all), and
    `map_downscale` is not read (`sae.attention.capture_attention`).
    """
    grouped = heads == "release"
    with capture_attention(unet, map_downscale, stop_after_last=True, keep_heads=grouped,
                           joint_blocks=joint_blocks) as store:
        try:
            unet(noisy_latents, timestep=timesteps, encoder_hidden_states=text_embeddings, **(unet_kwargs or {}))
        except StopForward:
            pass
        token_maps = MAP_KINDS[maps_kind](store.maps().float())  # (batch[, heads], H, W, tokens)
    if grouped:  # (groups, rows, K, H, W): the losses' max taken over each group's rows and pixels
        groups = release_head_groups(token_maps)
        maps = torch.stack([object_maps(groups[:, r], token_groups) for r in range(groups.shape[1])], 1)
        losses = {"en": (1 - enhance_peaks(maps, smoothing).amax(dim=1).amin(dim=-1)).mean()}
        if maps.shape[2] >= 2:
            losses["sep"] = separate_loss(maps, pair_reduction=pair_reduction).amax(dim=1).mean()
        return losses
    maps = object_maps(token_maps, token_groups)
    losses = {"en": (1 - enhance_peaks(maps, smoothing).amin(dim=-1)).mean()}
    if maps.shape[1] >= 2:
        losses["sep"] = separate_loss(maps, pair_reduction=pair_reduction).mean()
    return losses


def release_head_groups(token_maps: torch.Tensor) -> torch.Tensor:
    """The release's attention bookkeeping, `(batch, heads, H, W, tokens)` -> `(batch, rows, H, W, tokens)`.

    Its attention store keeps the second half of each cross-attention call's (image x head) rows, the slice that
    drops the unconditional half of a guidance batch, although training batches have none: images B/2 to B-1.
    Its `aggregate_attention` then reshapes those B*heads/2 rows to B groups of heads/2 consecutive rows, so on
    SD 1.4 (8 heads, batch 4) group 0 is heads 0-3 of image 2, group 1 heads 4-7 of image 2, and so on; group g
    is read with the token positions of prompt g, and each loss takes its max within a group."""
    batch, heads = token_maps.shape[:2]
    if heads % 2:
        raise ValueError(f"the release's head grouping needs an even number of heads, the model has {heads}")
    rows = token_maps.reshape(batch * heads, *token_maps.shape[2:])[batch * heads // 2:]
    return rows.reshape(batch, heads // 2, *token_maps.shape[2:])


def sample_latents(pipe, prompt: str, config: FinetuneConfig) -> torch.Tensor:
    """The base model's own samples of `prompt` as clean latents `(latent_samples, C, H, W)` on the CPU: what
    latents="samples" noises instead of Gaussian latents."""
    seeds = [SAMPLE_SEED_BASE + config.seed * config.latent_samples + i for i in range(config.latent_samples)]
    size = (config.latent_size or denoiser(pipe).config.sample_size) * pipe.vae_scale_factor
    with torch.no_grad():
        latents = generate(pipe, prompt, seeds, config.sample_steps, config.sample_guidance,
                           batch_size=config.batch_size, height=size, width=size, output_type="latent")
    return torch.stack(list(latents)).float().cpu()


def forward_process(pipe):
    """The DDPM forward process of the model's training betas: training noises with it whatever scheduler the
    pipeline samples with (a sigma-based one such as Euler's `add_noise` scales differently). SD3, trained by flow
    matching, has no betas: its forward process is `FlowMatchingForward`."""
    from diffusers import DDPMScheduler

    if model_family(pipe) == "sd3":
        return FlowMatchingForward(pipe.scheduler.config.num_train_timesteps)
    return DDPMScheduler.from_config(pipe.scheduler.config)


def latent_amplitude(pipe, latent_scale: str | float) -> float:
    """Std of the Gaussian "clean" latents: the VAE's scaling_factor (the release), 1, or the number given."""
    if latent_scale == "vae":
        return float(pipe.vae.config.scaling_factor)
    return 1.0 if latent_scale == "unit" else float(latent_scale)


def _noisy_batch(pipe, batch_size: int, latent_size: int, generator: torch.Generator, device,
                 pool: torch.Tensor | None = None, timestep_range: tuple[int, int] = (0, 1000),
                 amplitude: float = 1.0, forward=None):
    """Latents (Gaussian of std `amplitude`, or drawn from `pool`) noised by the DDPM forward process to timesteps
    drawn uniformly from `timestep_range` (capped at the training timesteps); drawn on the CPU so that runs
    reproduce anywhere."""
    network = denoiser(pipe)
    channels = network.config.in_channels
    shape = (batch_size, channels, latent_size, latent_size)
    forward = forward or forward_process(pipe)
    if pool is None:
        latents = torch.randn(shape, generator=generator) * amplitude
    else:
        latents = pool[torch.randint(0, len(pool), (batch_size,), generator=generator)]
    noise = torch.randn(shape, generator=generator)
    low, high = timestep_range
    high = min(high, forward.config.num_train_timesteps)
    if low >= high:
        raise ValueError(f"timesteps {timestep_range} leave no timestep below the scheduler's "
                         f"{forward.config.num_train_timesteps}")
    timesteps = torch.randint(low, high, (batch_size,), generator=generator)
    noisy = forward.add_noise(latents, noise, timesteps).to(network.dtype)
    if torch.device(device).type == "cuda":  # a copy from pageable memory would wait for the GPU every step
        noisy, timesteps = noisy.pin_memory(), timesteps.pin_memory()
    return noisy.to(device, non_blocking=True), timesteps.to(device, non_blocking=True)


def norm_prompts(source, batch: list[tuple[str, list[str]]]) -> list[str]:
    """The norm loss's single-concept prompts, as the release writes them: per pair, "a photo of {c1}" for the
    first half of the batch and "a photo of {c2}" for the second (no article); large-scale, "a photo of a {A}"
    with each element's first concept (always "a")."""
    if isinstance(source, ConceptPool):
        return [f"a photo of a {objects[0]}" for _, objects in batch]
    objects = source.objects
    return [f"a photo of {objects[i * len(objects) // len(batch)]}" for i in range(len(batch))]


@dataclass
class FinetuneResult:
    tensors: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None


def _write_losses(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "total", "sep", "en", "norm"])
        writer.writeheader()
        writer.writerows(history)


def check_maps_fit(network, config: FinetuneConfig) -> None:
    """The map settings the denoiser reads: a UNet's resolution (map_downscale), or a transformer's blocks (SD3's
    joint blocks, PixArt's cross-attending ones: `joint_blocks`). A refusal begins with the setting's name."""
    if is_transformer(network):
        default = FinetuneConfig.__dataclass_fields__["map_downscale"].default
        if config.map_downscale != default:
            raise ValueError(f"map_downscale {config.map_downscale}: a transformer's maps are at its patch grid in "
                             "every block; choose the blocks with joint_blocks instead")
        if config.maps == "sharpened":  # (the latent guidance reads them so, through `backbones.DenoiserPass`)
            raise ValueError("maps sharpened: Attend-and-Excite's maps drop a start token and the last of CLIP's 77, "
                             "which a transformer's text sequence does not end with; train on probs")
        try:  # blocks the transformer has
            transformer_attention_layers(network, config.joint_blocks)
        except ValueError as err:
            raise ValueError(f"joint_blocks {config.joint_blocks}: {err}") from None
    elif config.joint_blocks is not None:
        raise ValueError("joint_blocks chooses SD3's or PixArt's blocks; a UNet's maps are chosen by map_downscale")
    else:
        try:  # layers at that resolution
            cross_attention_layers(network, config.map_downscale)
        except ValueError as err:
            raise ValueError(f"map_downscale {config.map_downscale}: {err}") from None


def finetune(pipe, source: ConceptPair | ConceptPool, config: FinetuneConfig | None = None,
             out_dir: str | os.PathLike | None = None, base_model: str = "", progress: bool = True,
             resume: bool = True, log_every: int = 10, cuda_graph: bool = True) -> FinetuneResult:
    """Train the selected projections of `pipe.unet` (SD3: `pipe.transformer`) in place; returns the trained
    tensors and loss history.

    With `out_dir`, the checkpoint (`sepen.safetensors`), the optimizer state and `losses.csv` are written
    every `checkpoint_every` steps and at the end, and a run found there is resumed where it stopped.

    On a GPU the steps run without waiting for it: the losses are fetched every `log_every` steps (and before
    each checkpoint), a step whose gradients are not finite changes nothing (fused AdamW skips it on the
    device), and the first non-finite loss stops the run at that fetch, before anything after it is saved. On
    the CPU every step is checked as it ends (waiting costs nothing there). With mixed precision the frozen
    weights are cast once for the run; the trained weights stay fp32. With `cuda_graph` (per-pair runs without
    the norm loss, fp32 or bf16), the step is captured once as a CUDA graph after a few eager steps and
    replayed: the same kernels without the host's cost of launching two thousand of them every step.
    """
    trainer = _Trainer(pipe, source, config or FinetuneConfig(), out_dir, base_model, log_every, cuda_graph)
    if resume:
        trainer.resume()
    trainer.set_up_latents()  # after resuming: a finished run draws no samples
    return trainer.train(progress)


class _Trainer:
    """One finetuning run: set up, resumed from its out folder, then trained step by step (`finetune`)."""

    def __init__(self, pipe, source: ConceptPair | ConceptPool, config: FinetuneConfig,
                 out_dir: str | os.PathLike | None, base_model: str, log_every: int, cuda_graph: bool):
        self.pipe, self.source, self.config, self.base_model = pipe, source, config, base_model
        self.unet = denoiser(pipe)  # SD3: its transformer
        check_maps_fit(self.unet, config)
        self.device = self.unet.device
        self.latent_size = config.latent_size or self.unet.config.sample_size
        self._set_up_parameters()
        # where the steps run ahead of the host, their losses wait on the device and are fetched every few steps
        self.deferred = self.device.type in DEFERRED_DEVICES
        self.fetch_every = max(1, log_every) if self.deferred else 1
        self._set_up_optimizer(cuda_graph)
        self.separate_norm_step = config.lambda_norm > 0 and config.norm_step == "separate"
        self.out = Path(out_dir) if out_dir is not None else None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.start, self.history = 0, []
        self.pending: list[tuple[int, list[str], torch.Tensor]] = []  # steps whose losses are still on the device
        self.token_cache: dict[tuple[str, tuple[str, ...]], list[list[int]]] = {}
        self.embeddings_cache: dict[tuple[str, ...], tuple[torch.Tensor, dict]] = {}
        self.pool, self.forward, self.amplitude = None, None, None  # set_up_latents

    def _set_up_parameters(self) -> None:
        """Only the selected projections train; their original values are the frozen base of the norm loss."""
        self.unet.requires_grad_(False)
        self.pipe.text_encoder.requires_grad_(False)
        self.params = trainable_parameters(self.unet, self.config.projection)
        for p in self.params.values():
            p.requires_grad_(True)
        self.base_values = {name: p.detach().clone() for name, p in self.params.items()}
        self.fingerprint = base_fingerprints(self.unet)

    def _set_up_optimizer(self, cuda_graph: bool) -> None:
        """The precision (autocast and its gradient scaler, CUDA only), whether the step runs as a CUDA graph, and
        AdamW in the implementation these need: fused where the steps run ahead, capturable for a graph."""
        config, device = self.config, self.device
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
        self.use_autocast = self.autocast_dtype is not None and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_autocast and self.autocast_dtype == torch.float16)
        graphed = (cuda_graph and device.type == "cuda" and isinstance(self.source, ConceptPair)
                   and config.lambda_norm == 0 and not self.scaler.is_enabled())
        self.graph = _GraphedStep(self._optimise, device) if graphed else None
        self.implementation = dict(fused=self.deferred or None, capturable=graphed)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=config.learning_rate, betas=config.adam_betas,
                                           weight_decay=config.weight_decay, eps=config.adam_eps,
                                           **self.implementation)

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def resume(self) -> None:
        """Restore the run found in the out folder, if any: weights, optimizer state, step and loss history."""
        if self.out is None or not (self.out / STATE_NAME).exists():
            return
        state_path = self.out / STATE_NAME
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        self._check_same_run(state, state_path.parent)
        delta = load_delta(state_path.parent / state.get("checkpoint", CHECKPOINT_NAME))
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(delta.tensors[name].to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.start, self.history = state["step"], state["history"]
        for group in self.optimizer.param_groups:  # the saved groups carry the implementation they were saved with
            group.update(foreach=None, **self.implementation)
        if self.deferred:  # fused and capturable AdamW keep their step counts on the device
            for parameter_state in self.optimizer.state.values():
                parameter_state["step"] = parameter_state["step"].to(self.device, torch.float32)

    def _check_same_run(self, state: dict, folder: Path) -> None:
        """A folder holding another run (settings, prompt or concepts, base weights) is an error, not an
        overwrite."""
        config, source = self.config, self.source
        saved = {k: v for k, v in state["config"].items() if k not in ("steps", "checkpoint_every")}
        wanted = {k: v for k, v in config.to_dict().items() if k not in ("steps", "checkpoint_every")}
        differ = [what for what, same in (
            ("settings", json.loads(json.dumps(saved)) == json.loads(json.dumps(wanted))),
            ("concepts", state["concepts"] == source.concepts),
            ("prompt", state.get("source", source.identity()) == source.identity()),
            ("base weights", state["base_fingerprint"] == self.fingerprint)) if not same]
        if differ:
            raise ValueError(f"{folder} holds a training run with other {', '.join(differ)}; pass "
                             "another --out, or delete that folder to start over")
        if state["step"] > config.steps:  # its checkpoint is of more steps than asked: never report it as this run
            raise ValueError(f"{folder} holds a training run already {state['step']} steps long, past the "
                             f"{config.steps} asked; pass --steps {state['step']} or more to go on with it, or "
                             "another --out")

    def set_up_latents(self) -> None:
        """What the steps noise: Gaussian latents, or the base model's own samples (drawn once, here), and the
        forward process that noises them."""
        config = self.config
        if config.latents == "samples" and self.start < config.steps:
            if not isinstance(self.source, ConceptPair):
                raise ValueError("latents='samples' needs one concept pair (the model's samples of its prompt); "
                                 "large-scale training draws a new pair every step: use latents='noise'")
            self.pool = sample_latents(self.pipe, self.source.prompt, config)
        self.forward = forward_process(self.pipe)
        self.amplitude = latent_amplitude(self.pipe, config.latent_scale)

    def train(self, progress: bool) -> FinetuneResult:
        """The steps from where the run stands to `config.steps`, their losses checked and the checkpoints saved."""
        config, out = self.config, self.out
        self.bar = tqdm(range(self.start, config.steps), initial=self.start, total=config.steps,
                        desc="SepEn finetune", disable=not progress)
        checkpoint = None
        with frozen_weights_in(self.unet, self.autocast_dtype if self.use_autocast else None,
                               keep=self.params.values()):
            for step in self.bar:
                self.pending.append((step, *self.step(step)))
                last = step + 1 == config.steps
                save_now = out is not None and ((step + 1) % config.checkpoint_every == 0 or last)
                if save_now or last or len(self.pending) >= self.fetch_every:  # nothing is saved unchecked
                    self.fetch_losses()
                if save_now:
                    checkpoint = self.save(step + 1)
        if out is not None and checkpoint is None and self.start >= config.steps:
            checkpoint = out / CHECKPOINT_NAME  # a finished run found on disk
        for p in self.params.values():
            p.requires_grad_(False)
            p.grad = None
        # the graph holds the step (and so this trainer) and its memory pool: freed now, not at the next collection,
        # so that a run training one checkpoint after another does not keep each one's on the GPU
        self.graph = None
        return FinetuneResult(tensors={n: p.detach().clone() for n, p in self.params.items()},
                              history=self.history, checkpoint=checkpoint)

    def step(self, step: int) -> tuple[list[str], torch.Tensor]:
        """One optimisation step on the step's own draw (so that a resumed run trains the same batches); returns
        the names of its losses and their values (on the device)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        batch = self.source.draw(step, self.config.batch_size, self.config.seed)
        noisy, timesteps = self.noisy_batch(generator)
        if self.graph is not None:
            try:
                return self.graph(step, batch, noisy, timesteps)
            except _CaptureError as err:  # e.g. a model whose forward waits for the host: train on eagerly
                # stacklevel: finetune's caller (step < train < finetune)
                warnings.warn(f"the training step could not be captured as a CUDA graph ({err}); training "
                              "on without it (cuda_graph=False skips the attempt)", RuntimeWarning, stacklevel=4)
                self.graph = None
        return self._optimise(step, batch, noisy, timesteps, generator)

    def _optimise(self, step, batch, noisy, timesteps, generator=None) -> tuple[list[str], torch.Tensor]:
        """The losses of one batch, backward, clipping and the optimizer's step; `generator` draws the norm loss's
        latents (a graphed run has no norm loss)."""
        config = self.config
        groups = [self.token_groups(prompt, objects) for prompt, objects in batch]
        embeddings, extra = self.text_embeddings([prompt for prompt, _ in batch])
        with self.autocast():
            losses = sepen_losses(self.unet, noisy, timesteps, embeddings, groups,
                                  config.pair_reduction, config.map_downscale, config.maps, config.smoothing,
                                  config.heads, extra, config.joint_blocks)
            total = config.lambda_en * losses["en"] + config.lambda_sep * losses.get("sep", 0.0)
            if config.lambda_norm > 0 and not self.separate_norm_step:
                losses["norm"] = self.norm_term(batch, generator)
                total = total + config.lambda_norm * losses["norm"]
        self._update(total, step, losses)
        if self.separate_norm_step:  # the release's large-scale run: a second step on the norm loss alone
            with self.autocast():
                losses["norm"] = self.norm_term(batch, generator)
            self._update(config.lambda_norm * losses["norm"], step, {"norm": losses["norm"]})
            total = total.detach() + config.lambda_norm * losses["norm"].detach()
        names = list(losses)
        return ["total", *names], torch.stack([total.detach().float(), *(losses[n].detach().float() for n in names)])

    def _update(self, loss, step, values) -> None:
        """Backward, clipping and the optimizer's step; on the CPU a non-finite loss or weight stops the run here."""
        if not self.deferred and not math.isfinite(loss.item()):
            raise self._diverged(step, loss.item(), {name: value.item() for name, value in values.items()})
        self.optimizer.zero_grad(set_to_none=not self.graphed)  # a captured step needs its gradients where they are
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params.values(), self.config.max_grad_norm)
        if self.deferred and not self.scaler.is_enabled():  # (the fp16 scaler sets its own)
            self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not self.deferred:  # e.g. an fp16 overflow in the gradients
            self._check_weights(step)

    def autocast(self):  # (a CUDA graph cannot keep autocast's cache of cast weights between replays)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.use_autocast, cache_enabled=not self.graphed)

    def noisy_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return _noisy_batch(self.pipe, self.config.batch_size, self.latent_size, generator, self.device, self.pool,
                            self.config.timesteps, self.amplitude, self.forward)

    def token_groups(self, prompt: str, objects: list[str]) -> list[list[int]]:
        if self.config.token_positions is not None:  # the release's large-scale quirk: fixed positions, any prompt
            return [[position] for position in self.config.token_positions]
        key = (prompt, tuple(objects))
        if key not in self.token_cache:
            self.token_cache[key] = find_token_indices(self.pipe.tokenizer, prompt, objects)
        return self.token_cache[key]

    def text_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, dict]:
        """The frozen text encoders' output and the UNet's other conditioning (`sae.backbones`), computed once per
        batch of prompts (a pair repeats its batch every step); fp32 whatever the training precision."""
        key = tuple(prompts)
        if key not in self.embeddings_cache:
            if len(self.embeddings_cache) >= 8:  # a pool draws new prompts every step: keep few
                self.embeddings_cache.clear()
            side = self.latent_size * self.pipe.vae_scale_factor
            self.embeddings_cache[key] = conditioning(self.pipe, prompts, side, side)
        return self.embeddings_cache[key]

    def norm_term(self, batch, generator: torch.Generator) -> torch.Tensor:
        """The norm loss on fresh latents and timesteps, against the frozen base (its original projections)."""
        noisy, timesteps = self.noisy_batch(generator)
        embeddings, extra = self.text_embeddings(norm_prompts(self.source, batch))
        prediction = self.unet(noisy, timestep=timesteps, encoder_hidden_states=embeddings, **extra).sample
        with torch.no_grad():
            frozen = functional_call(self.unet, self.base_values, (noisy,),
                                     {"timestep": timesteps, "encoder_hidden_states": embeddings, **extra}).sample
        return norm_loss(prediction, frozen)

    def fetch_losses(self) -> None:
        """Move the pending steps' losses to the history in one transfer (rather than a wait for the device every
        step); stop at the first non-finite one."""
        if not self.pending:
            return
        rows = torch.stack([values for _, _, values in self.pending]).tolist()
        for (step, names, _), row in zip(self.pending, rows, strict=True):
            named = dict(zip(names, row, strict=True))
            total = named.pop("total")
            if not all(math.isfinite(v) for v in (total, *named.values())):
                raise self._diverged(step, total if not math.isfinite(total) else
                                     next(v for v in named.values() if not math.isfinite(v)), named)
            self.history.append({"step": step, "total": total, "sep": named.get("sep", ""), "en": named["en"],
                                 "norm": named.get("norm", "")})
        self._check_weights(self.pending[-1][0])
        self.pending.clear()
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in self.history[-1].items() if k != "step" and v != ""})

    def _check_weights(self, step: int) -> None:
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.params.values()]).all()):
            raise TrainingDivergedError(f"the trained weights became non-finite at step {step}; nothing of this "
                                        "step was saved. Lower --lr or train in fp32 (--mixed-precision no).")

    def _diverged(self, step: int, value: float, values: dict) -> TrainingDivergedError:
        out = self.out
        where = f"; training resumes from {out} (the last finite state)" if out is not None and \
            (out / STATE_NAME).exists() else ""
        return TrainingDivergedError(
            f"loss became {value} at step {step} ({values}){where}. Lower --lr, train in fp32 "
            "(--mixed-precision no), or check the prompt's object words.")

    def save(self, step: int) -> Path:
        """Tensors first (atomic), then the state that points at them: a kill between the two resumes from the
        previous state. Only the finished run's tensors carry the final name."""
        config, source, out = self.config, self.source, self.out
        name = CHECKPOINT_NAME if step >= config.steps else PARTIAL_NAME
        path = save_delta(out / name, {n: p for n, p in self.params.items()}, base_model=self.base_model,
                          base_fingerprint=self.fingerprint, concepts=source.concepts, config=config.to_dict())
        with atomic_path(out / STATE_NAME) as tmp:
            torch.save({"step": step, "optimizer": self.optimizer.state_dict(), "history": self.history,
                        "checkpoint": name, "config": config.to_dict(), "concepts": source.concepts,
                        "source": source.identity(), "base_fingerprint": self.fingerprint}, tmp)
        _write_losses(out / LOSSES_NAME, self.history)
        if name == CHECKPOINT_NAME:
            (out / PARTIAL_NAME).unlink(missing_ok=True)
        return path


class _CaptureError(RuntimeError):
    """The training step could not be captured as a CUDA graph."""


class _GraphedStep:
    """The training step of a per-pair run as a CUDA graph. The first steps run eagerly on a side stream, as
    capturing requires (lazy setup happens in them); the next is captured once, and from then on each step copies
    its latents and timesteps into the graph's fixed buffers and replays it (the prompts never change). Capturing
    runs nothing, so the step of the capture is trained by its first replay."""

    def __init__(self, optimise, device: torch.device):
        self.optimise = optimise  # (step, batch, noisy, timesteps) -> (loss names, values on the device)
        self.device = device
        self.side = torch.cuda.Stream(device)
        self.eager_steps, self.names = 0, None
        self.graph = None

    def __call__(self, step: int, batch, noisy: torch.Tensor, timesteps: torch.Tensor):
        if self.graph is None and self.eager_steps >= GRAPH_WARM_UP_STEPS:
            self._capture(step, batch, noisy, timesteps)
        if self.graph is None:
            return self._warm_up(step, batch, noisy, timesteps)
        return self.names, self._replay(noisy, timesteps)

    def _warm_up(self, step, batch, noisy, timesteps):
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            self.names, values = self.optimise(step, batch, noisy, timesteps)
        current.wait_stream(self.side)
        self.eager_steps += 1
        return self.names, values

    def _capture(self, step, batch, noisy, timesteps) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self.side)
        try:
            self.noisy, self.timesteps = noisy.clone(), timesteps.clone()
            graph = torch.cuda.CUDAGraph()
            # captured on a stream of the training's GPU: the current device's would record nothing on another
            with torch.cuda.device(self.device), torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device)):
                self.values = self.optimise(step, batch, self.noisy, self.timesteps)[1]
        except RuntimeError as err:
            raise _CaptureError(str(err)) from err
        self.graph = graph

    def _replay(self, noisy, timesteps) -> torch.Tensor:
        """A copy of the step's loss values (the next replay overwrites the graph's own)."""
        self.noisy.copy_(noisy, non_blocking=True)
        self.timesteps.copy_(timesteps, non_blocking=True)
        self.graph.replay()
        return self.values.clone()
