"""Train the shapes model from scratch: first the VAE, then the UNet and the text encoder jointly.

    python -m benchmark.shapes.train --out /tmp/shapes_run                  # the shipped model's run
    python -m benchmark.shapes.train --out /tmp/shapes_run --export benchmark/shapes/pretrained

Rerunning the same command resumes from the latest checkpoint in --out (written every --checkpoint-minutes and at
the end of each phase); a finished run only (re)exports. Everything random comes from --seed: the scenes of each
step are a function of (seed, step) (see data.py) and so are the noise and the timesteps, so an interrupted run
sees the same batches as an uninterrupted one.

With `--init PIPELINE` only phase 2 runs, continuing from that pipeline's weights (teaching the shipped model a new
caption mix).

Phases:
1. VAE (`--vae-steps`): L1 + MSE reconstruction of rendered scenes, with latent channels 0-2 pulled towards the
   2x2-pooled RGB image (an "RGB-like" latent, see TrainConfig.vae_align) and KL weight 0; afterwards the latents
   are normalised per channel (model.normalize_latent_channels; scaling factor 1).
2. Diffusion (`--steps`): DDPM v-prediction loss on SD's scaled_linear betas rescaled to zero terminal SNR
   (model.sd_scheduler_kwargs), x0 weight capped at 6 (as min-SNR-5), AdamW
   with warm-up and cosine decay, the text encoder at `--text-lr-mult` times the UNet's learning rate, 10% of
   captions dropped (for classifier-free guidance), an EMA of the weights, which is what gets exported.
   Training scenes hold 1-4 objects (`--count-probs`, single objects over-represented so that a one-object
   prompt yields one object), never both members of a held-out pair (data.HELDOUT_PAIRS). With `--grounding W`,
   W times the attention-grounding loss (grounding.py) on the cross-attention maps SepEn reads is added: each
   object word's map is pulled onto the cells its object covers in the scene.

Outputs in --out: vae/ (trained VAE), diffusion.pt (resumable state), latest/ (the EMA pipeline at the last
checkpoint, loadable by `sae.models.load_pipeline`), pipeline/ (the final EMA pipeline, fp32), log.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sae.attention import capture_cross_attention
from sae.files import atomic_path

from . import model as M
from .captions import parse_mix
from .grounding import CaptionTokens, grounding_loss
from .data import DECODER_STREAM, DIFFUSION_STREAM, VAE_STREAM, BatchStream

# Settings that change the trained weights; the rest (threads, device, workers, checkpoint interval) do not.
@dataclass
class TrainConfig:
    arch: str = "small"
    seed: int = 0
    # phase 1: VAE
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 2e-3
    # KL weight 0: with SD's 1e-6, Adam still followed the KL gradient and the posterior std grew to ~0.45 of
    # the latents' spread (noisy latents for the UNet); the small log-variance set at init (model.build_vae)
    # keeps the posterior nearly deterministic, and the scaling factor normalises the latents instead.
    vae_kl: float = 0.0
    # Latent channels 0-2 are pulled towards the 2x2-average-pooled RGB image (weight vae_align); channel 3 is
    # free for sub-pixel edge detail but kept small (vae_detail). Measured without it: the free latent packed
    # the six colours within ~0.5-1 latent std of the background, with edge codes taking most of the variance,
    # so the UNet's slightly shrunken predictions decoded orange as red, green as blue, blue as purple, yellow as
    # nothing (samples were mostly blank or wrong-coloured). An RGB-like latent shrinks to paler, same-hue shapes.
    vae_align: float = 1.0
    vae_detail: float = 0.1
    # phase 1b: the decoder alone (encoder frozen, so the latent space stays put) learns to decode latents with
    # Gaussian noise of std up to decoder_noise (latents have unit std per channel) to the clean image, so that
    # a UNet sample a little off the training latents still decodes to crisp palette-coloured shapes.
    decoder_steps: int = 400
    decoder_noise: float = 0.5
    # phase 2: UNet + text encoder
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    text_lr_mult: float = 3.0
    warmup: int = 200
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    ema: float = 0.999
    snr_cap: float = 5.0  # v-loss weight min(snr + 1, cap + 1) / (snr + 1), i.e. x0 weight min(snr + 1, cap + 1)
    caption_dropout: float = 0.1
    count_probs: tuple = (0.45, 0.2, 0.2, 0.15)
    max_grad_norm: float = 1.0
    # text context in tokens (CLIP's 77 by default; a four-object caption is 17): the pipeline's tokenizer pads to
    # it, so it sets how many padding tokens the cross-attention can read the whole prompt from
    context_length: int = 77
    # weight of the attention-grounding loss (grounding.py) on the cross-attention maps at 1/grounding_downscale of
    # the latent side (the maps SepEn reads); 0: the diffusion loss alone
    grounding: float = 0.0
    grounding_downscale: int = 4
    grounding_pixel: float = 1.0  # weight of the pixel term within it (0: the token term alone)
    # caption kinds by weight (captions.py), e.g. "full=0.55,colourless=0.15,count=0.15,relation=0.15";
    # empty: full captions only (the shipped model)
    caption_mix: str = ""
    # a pipeline folder (e.g. benchmark/shapes/pretrained) whose VAE, UNet and text encoder the diffusion phase
    # continues from, so a new caption mix is taught to a model that already draws; the VAE phases are skipped and
    # --arch / --context-length are the init's. Empty: from scratch.
    init: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


def _to_tensor(images: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream, step, 99]).generate_state(1)[0]
    return torch.Generator("cpu").manual_seed(int(state))


class _Log:
    def __init__(self, path: Path, header: str):
        self.path = path
        if not path.exists():
            path.write_text(header + "\n")

    def write(self, *values):
        with open(self.path, "a") as f:
            f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values) + "\n")


# ----------------------------------------------------------------------------------------------- phase 1: VAE

def _optimizer_step(loss, opt, params, max_norm: float = 1.0) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


def _checkpoint_vae(vae, opt, step: int, t0: float, last: float, minutes: float, path: Path) -> float:
    """Save the resumable state when `minutes` have passed since `last`; returns the time of the last save."""
    if time.time() - last <= minutes * 60:
        return last
    _atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                  "elapsed": time.time() - t0}, path)
    return time.time()


def train_vae(cfg: TrainConfig, out: Path, device, workers: int = 0, checkpoint_minutes: float = 5.0):
    """Train (or resume, or load) the VAE; returns it with its scaling factor set."""
    from diffusers import AutoencoderKL

    final = out / "vae"
    if (final / "config.json").is_file():
        return AutoencoderKL.from_pretrained(final).to(device)
    state_path = out / "vae_state.pt"
    vae = M.build_vae(cfg.seed).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start, elapsed = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        start, elapsed = state["step"], state["elapsed"]
    log = _Log(out / "vae_log.csv", "step,loss,l1,kl,elapsed_s")
    stream = BatchStream(start, cfg.vae_steps, workers, seed=cfg.seed, stream=VAE_STREAM,
                         batch_size=cfg.vae_batch, count_probs=(0.25, 0.25, 0.25, 0.25))
    t0, last_ckpt = time.time() - elapsed, time.time()
    bar = tqdm(stream, total=cfg.vae_steps, initial=start, desc="vae", dynamic_ncols=True)
    step = start
    try:
        for step, (images, _) in enumerate(bar, start=start):
            opt.param_groups[0]["lr"] = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
            x = _to_tensor(images, device)
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=_step_generator(cfg.seed, VAE_STREAM, step))
            recon = vae.decode(z).sample
            l1 = (recon - x).abs().mean()
            kl = posterior.kl().mean()
            mean = posterior.mean
            align = F.mse_loss(mean[:, :3], F.avg_pool2d(x, 2)) + cfg.vae_detail * mean[:, 3:].pow(2).mean()
            loss = l1 + F.mse_loss(recon, x) + cfg.vae_kl * kl + cfg.vae_align * align
            _optimizer_step(loss, opt, vae.parameters())
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", l1=f"{l1.item():.4f}")
                log.write(step, loss.item(), l1.item(), kl.item(), time.time() - t0)
            last_ckpt = _checkpoint_vae(vae, opt, step, t0, last_ckpt, checkpoint_minutes, state_path)
    finally:
        stream.close()
        bar.close()
    vae.eval()
    M.normalize_latent_channels(vae, *_latent_stats(vae, cfg, device))
    vae.save_pretrained(final, safe_serialization=True)
    (out / "vae_time.json").write_text(json.dumps({"elapsed_s": time.time() - t0}))
    return vae


@torch.no_grad()
def _latent_stats(vae, cfg: TrainConfig, device, n_batches: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the latents (posterior means) of scenes outside the training steps."""
    from .data import training_batch

    zs = torch.cat([vae.encode(_to_tensor(training_batch(10_000_000 + i, seed=cfg.seed, stream=VAE_STREAM,
                                                         batch_size=64)[0], device)).latent_dist.mean
                    for i in range(n_batches)])
    return zs.mean(dim=(0, 2, 3)), zs.std(dim=(0, 2, 3))


def harden_decoder(cfg: TrainConfig, out: Path, vae, device, workers: int = 0, checkpoint_minutes: float = 5.0):
    """Phase 1b: train the decoder on noised latents (see TrainConfig.decoder_noise); the encoder is untouched."""
    from diffusers import AutoencoderKL

    final = out / "vae_decoder"
    if (final / "config.json").is_file():
        return AutoencoderKL.from_pretrained(final).to(device)
    if cfg.decoder_steps <= 0:
        return vae
    state_path = out / "decoder_state.pt"
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr / 2, weight_decay=0.0)
    start, elapsed = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        start, elapsed = state["step"], state["elapsed"]
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    log = _Log(out / "decoder_log.csv", "step,loss,elapsed_s")
    stream = BatchStream(start, cfg.decoder_steps, workers, seed=cfg.seed, stream=DECODER_STREAM,
                         batch_size=cfg.vae_batch, count_probs=(0.25, 0.25, 0.25, 0.25))
    t0, last_ckpt = time.time() - elapsed, time.time()
    bar = tqdm(stream, total=cfg.decoder_steps, initial=start, desc="decoder", dynamic_ncols=True)
    try:
        for step, (images, _) in enumerate(bar, start=start):
            opt.param_groups[0]["lr"] = cfg.vae_lr / 2 * 0.5 * (1 + math.cos(math.pi * step / cfg.decoder_steps))
            x = _to_tensor(images, device)
            gen = _step_generator(cfg.seed, DECODER_STREAM, step)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
                sigma = torch.rand(len(z), 1, 1, 1, generator=gen).to(device) * cfg.decoder_noise
                z = z + sigma * torch.randn(z.shape, generator=gen).to(device)
            recon = vae.decode(z).sample
            loss = (recon - x).abs().mean() + F.mse_loss(recon, x)
            _optimizer_step(loss, opt, params)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                log.write(step, loss.item(), time.time() - t0)
            last_ckpt = _checkpoint_vae(vae, opt, step, t0, last_ckpt, checkpoint_minutes, state_path)
    finally:
        stream.close()
        bar.close()
    vae.requires_grad_(False).eval()
    vae.save_pretrained(final, safe_serialization=True)
    (out / "decoder_time.json").write_text(json.dumps({"elapsed_s": time.time() - t0}))
    return vae


# ----------------------------------------------------------------------------------------- phase 2: diffusion

class _Tokens:
    """Caption -> padded ids, cached (the captions repeat a lot and CLIP's BPE is slow in Python)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids, strict=False))
        return torch.stack([self.cache[c] for c in captions])


def _smooth(running: float | None, value: float) -> float:
    return value if running is None else 0.98 * running + 0.02 * value


def _ema_update(ema_params, params, decay: float) -> None:
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1 - decay)


def train_diffusion(cfg: TrainConfig, out: Path, vae, device, workers: int = 0, checkpoint_minutes: float = 5.0,
                    init=None):
    """Train (or resume) the UNet and text encoder, from scratch or from `init` (a loaded pipeline); returns
    (unet, text_encoder, tokenizer), the networks holding the EMA weights."""
    from sae.models import clip_tokenizer

    if init is not None:
        tokenizer, unet, text_encoder = init.tokenizer, init.unet, init.text_encoder
    else:
        tokenizer = clip_tokenizer(cfg.context_length)
        unet = M.build_unet(cfg.arch, cfg.seed + 2).to(device)
        text_encoder = M.build_text_encoder(tokenizer, cfg.arch, cfg.seed + 1).to(device)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = [p for p in unet.parameters()] + [p for p in text_encoder.parameters()]
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": cfg.lr},
                             {"params": list(text_encoder.parameters()), "lr": cfg.lr * cfg.text_lr_mult}],
                            betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    noise_sched = M.training_scheduler()
    alphas = noise_sched.alphas_cumprod.to(device)
    state_path = out / "diffusion.pt"
    start, elapsed = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        start, elapsed = state["step"], state["elapsed"]
    if start >= cfg.steps:
        return ema_unet, ema_text, tokenizer
    vae.requires_grad_(False).eval()
    scale = vae.config.scaling_factor
    tokens = _Tokens(tokenizer)
    log = _Log(out / "log.csv", "step,loss,lr,elapsed_s" + (",grounding" if cfg.grounding else ""))
    mask_side = M.LATENT_SIZE // cfg.grounding_downscale if cfg.grounding else 0
    stream = BatchStream(start, cfg.steps, workers, seed=cfg.seed, stream=DIFFUSION_STREAM,
                         batch_size=cfg.batch, count_probs=tuple(cfg.count_probs),
                         caption_dropout=cfg.caption_dropout, mask_side=mask_side,
                         caption_mix=parse_mix(cfg.caption_mix) if cfg.caption_mix else None)
    caption_tokens = CaptionTokens(tokenizer)

    def checkpoint(next_step: int):
        _atomic_save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                      "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                      "opt": opt.state_dict(), "step": next_step, "elapsed": time.time() - t0,
                      "config": cfg.to_dict()}, state_path)
        save_pipeline(out / "latest", vae, ema_text, tokenizer, ema_unet)

    t0, last_ckpt = time.time() - elapsed, time.time()
    bar = tqdm(stream, total=cfg.steps, initial=start, desc="diffusion", dynamic_ncols=True)
    running = grounding_running = None
    unet.train()
    text_encoder.train()
    # With grounding, the maps are captured for the whole phase: swapping the processors once, not at every step.
    captures = contextlib.ExitStack()
    store = captures.enter_context(capture_cross_attention(unet, cfg.grounding_downscale)) if cfg.grounding else None
    try:
        for step, (images, captions, *grounding_masks) in enumerate(bar, start=start):  # masks: with grounding
            for group, base in zip(opt.param_groups, base_lrs, strict=False):
                group["lr"] = base * _lr_factor(step, cfg)
            gen = _step_generator(cfg.seed, DIFFUSION_STREAM, step)
            with torch.no_grad():
                # The posterior mean: the VAE is nearly deterministic, except that channels the decoder barely uses
                # drift to a large posterior std (KL weight 0), which would only feed the UNet noise.
                latents = vae.encode(_to_tensor(images, device)).latent_dist.mode() * scale
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(images),), generator=gen).to(device)
            noisy = noise_sched.add_noise(latents, noise, t)
            target = noise_sched.get_velocity(latents, noise, t)  # v-prediction (model.sd_scheduler_kwargs)
            context = text_encoder(tokens(captions).to(device))[0]
            pred = unet(noisy, t, context).sample
            if cfg.grounding:
                grounding = grounding_loss(store.maps(), captions, grounding_masks[0], caption_tokens,
                                           cfg.grounding_pixel)
            per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
            if cfg.snr_cap > 0:
                # The v-loss weighs x0 errors by snr + 1: ~1 at high noise, where layout and colours are decided
                # (epsilon-loss weighs them by snr, ~0 there). Capping it at cap + 1 (as min-SNR does) keeps the
                # low-noise steps from dominating.
                snr = alphas[t] / (1 - alphas[t])
                per_sample = per_sample * (snr + 1).clamp(max=cfg.snr_cap + 1) / (snr + 1)
            loss = per_sample.mean()
            if cfg.grounding:
                loss = loss + cfg.grounding * grounding
                grounding_running = _smooth(grounding_running, grounding.item())
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            with torch.no_grad():
                _ema_update(ema_params, params, min(cfg.ema, (1 + step) / (10 + step)))
            running = _smooth(running, loss.item())
            if step % 25 == 0:
                shown = {"grounding": f"{grounding_running:.4f}"} if cfg.grounding else {}
                bar.set_postfix(loss=f"{running:.4f}", **shown)
                log.write(step, running, opt.param_groups[0]["lr"], time.time() - t0,
                          *([grounding_running] if cfg.grounding else []))
            if time.time() - last_ckpt > checkpoint_minutes * 60:
                checkpoint(step + 1)
                last_ckpt = time.time()
    finally:
        captures.close()
        stream.close()
        bar.close()
    checkpoint(cfg.steps)
    return ema_unet, ema_text, tokenizer


# -------------------------------------------------------------------------------------------------- export

def save_pipeline(path: Path, vae, text_encoder, tokenizer, unet, dtype: torch.dtype = torch.float32) -> Path:
    """Write a `StableDiffusionPipeline` folder (safetensors) from the given components (copied, cast to dtype)."""
    path = Path(path)
    comps = [copy.deepcopy(m).to("cpu", dtype) for m in (vae, text_encoder, unet)]
    pipe = M.assemble_pipeline(comps[0], comps[1], tokenizer, comps[2])
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    from benchmark.domains import DOMAIN_FILE

    from .domain import NAME

    (tmp / DOMAIN_FILE).write_text(json.dumps({"domain": NAME}) + "\n")  # the benchmark picks the world's suites
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


VAE_KEYS = ("seed", "vae_steps", "vae_batch", "vae_lr", "vae_kl", "vae_align", "vae_detail", "decoder_steps",
            "decoder_noise")


def _check_settings(cfg: TrainConfig, out: Path) -> None:
    """A resumed phase must use the settings it started with (the VAE's for phase 1, all for phase 2)."""
    given = json.loads(json.dumps(cfg.to_dict()))
    path = out / "config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        started = (out / "diffusion.pt").is_file()
        keys = given if started else [k for k in VAE_KEYS if (out / "vae").is_dir() or (out / "vae_state.pt").is_file()]
        defaults = json.loads(json.dumps(TrainConfig().to_dict()))  # settings added since the run was saved
        diff = {k: (saved.get(k, defaults[k]), given[k]) for k in keys if saved.get(k, defaults[k]) != given[k]}
        if diff:
            raise SystemExit(f"{out} holds a run with other settings (saved, given): {diff}; "
                             f"use another --out or the same settings")
    path.write_text(json.dumps(given, indent=1))


def _load_init(model: str, device: str):
    """The pipeline `--init` continues from, in fp32 (the project's loader: a folder or a hub id)."""
    from sae.models import ModelNotFoundError, load_pipeline

    try:
        return load_pipeline(model, device=device, dtype=torch.float32)
    except ModelNotFoundError as err:
        raise SystemExit(f"--init: not a pipeline folder this can load: {err}") from None


def run(cfg: TrainConfig, out: Path, device: str = "cpu", threads: int = 1, workers: int = 0,
        checkpoint_minutes: float = 5.0, export: Path | None = None, export_dtype: str = "float16") -> Path:
    if cfg.caption_mix:  # a bad mix fails before any work
        parse_mix(cfg.caption_mix)
        if cfg.grounding:
            raise SystemExit("--grounding reads each object's colour and shape word from full captions: train a "
                             "--caption-mix without it")
    init = _load_init(cfg.init, device) if cfg.init else None  # a bad --init fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    _check_settings(cfg, out)
    device = torch.device(device)
    if device.type == "cuda":  # TF32 matmuls: ~2x faster on Ampere and later, well within this model's tolerance
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if init is not None:
        vae = init.vae
    else:
        vae = train_vae(cfg, out, device, workers, checkpoint_minutes)
        vae = harden_decoder(cfg, out, vae, device, workers, checkpoint_minutes)
    unet, text_encoder, tokenizer = train_diffusion(cfg, out, vae, device, workers, checkpoint_minutes, init)
    final = save_pipeline(out / "pipeline", vae, text_encoder, tokenizer, unet)
    if export is not None:
        from sae.models import resolve_dtype

        save_pipeline(Path(export), vae, text_encoder, tokenizer, unet, resolve_dtype(export_dtype))
        print(f"exported {export} ({folder_size(Path(export)) / 2**20:.1f} MiB, {export_dtype})")
    return final


def main(argv=None):
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints; rerun to resume)")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        if f.name == "count_probs":
            p.add_argument(name, type=float, nargs=4, default=list(defaults.count_probs),
                           help="probabilities of 1, 2, 3, 4 objects per training scene")
        elif f.name == "init":
            p.add_argument(name, default="", metavar="PIPELINE",
                           help="continue the diffusion phase from this pipeline's weights (e.g. "
                                "benchmark/shapes/pretrained; VAE phases skipped); default: from scratch")
        elif f.name == "caption_mix":
            p.add_argument(name, default=defaults.caption_mix, metavar="KIND=W,...",
                           help="caption kinds by weight: full, colourless, count, relation (GenEval's grammar; "
                                "captions.py), e.g. full=0.55,colourless=0.15,count=0.15,relation=0.15; default: "
                                "full captions only, as the shipped model")
        else:
            p.add_argument(name, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads: 1 when other jobs share a 2-core CPU; on an idle one 2 "
                        "(3.2 s per diffusion step at batch 128 against 5.4 with 1)")
    p.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (0: inline)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--export", type=Path, default=None, help="also write the final pipeline here")
    p.add_argument("--export-dtype", default="float16", help="weights dtype of --export (float16 or float32)")
    args = p.parse_args(argv)
    cfg = TrainConfig(**{f.name: (tuple(getattr(args, f.name)) if f.name == "count_probs" else getattr(args, f.name))
                         for f in dataclasses.fields(TrainConfig)})
    final = run(cfg, args.out, args.device, args.threads, args.workers, args.checkpoint_minutes, args.export,
                args.export_dtype)
    print(f"pipeline: {final}")


if __name__ == "__main__":
    main()
