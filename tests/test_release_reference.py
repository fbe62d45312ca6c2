"""The method's public release, restated from its training code, against `sae.finetune`.

The reference below restates in plain torch, independently of `sae/`, the release's per-pair training script
(github.com/adobe/SeperateAndEnhance, `src/train_individual.py`): its loop, its attention bookkeeping
(`src/ptp_utils.py`: the `AttentionStore` that keeps `attn[h // 2:]` of each attention call, and
`aggregate_attention`, which reshapes the kept rows to `(1, bs, -1, res, res, 77)` and averages the layers), its
losses and helpers (`src/utils.py`: `compute_separate_loss`, `compute_enhance_loss`, `GaussianSmoothing`,
`get_index`) and its optimizer set-up (`load_model`: AdamW over every `attn2.to_k`; the loop clips the gradient
norm over every `attn2` parameter). Nothing of `sae/` is used but `sae.models.load_pipeline` (to load the model)
and the functions whose output is checked against the release's format first (the training prompt).

Two departures are shared on purpose, each stated: the random numbers come from one seeded CPU generator per step
(the release draws from torch's global generators), drawn in the release's order (clean latents, noise,
timesteps, then the norm loss's), so that the runs can be compared number for number; and our loop's UNet stops
after the last layer the losses read (nothing after it reaches the losses or their gradients).

The model is the tiny SD-layout one (4 heads in every layer, maps 8x8 at 1/4 of its 32x32 latents), its folder
switched to Euler sampling, so that noising with the folder's own scheduler instead of the DDPM forward process
changes the result. Five AdamW steps at a learning rate of 1e-3, with the quirks on (it must match the release),
with them off (it must match the paper's reading: every batch element, heads averaged), and with the norm loss
(quirks on, the per-pair script's `--use_norm`: one combined step).

Sensitivity: each reversion below was made once in `sae/` (or in what the test hands to `finetune`), the test
run, and the change undone; the figure is `worst` (the norm of the difference of the trained keys' updates over
the norm of the reference's update; the test fails above TOL = 5e-4), quirks on unless said. As written, the
agreement is 3.2e-6 (quirks on), 2.7e-6 (off) and 1.2e-5 (norm loss), and every step's losses agree to 2e-9.

    reversion                                                           worst
    Enhance's kernel: the textbook Gaussian (smoothing="textbook")      7.7e-1
    latent scale: std 1 instead of the VAE's scaling_factor             1.1
    the kept batch half: the first half of the rows, not the second     1.2
    head grouping: one max over all heads of each kept image            6.9e-1
    training prompt: "a photo of a cat and a dog" (articles)            1.0 (quirks on), 1.1 (off)
    noising: the folder's own scheduler (Euler) instead of DDPM's       7.0e-1
    weight decay 0 instead of 1e-2                                      1.9e-3
    betas (0.8, 0.999) / (0.9, 0.99) instead of (0.9, 0.999)            6.2e-2 / 2.0e-3
    clipping: none, or the release's 1.0 (never reached here)           1.2e-1
    norm-loss step: its own AdamW step (the large-scale script's)       4.5e-1 (norm loss)
"""

import dataclasses
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from sae.finetune import ConceptPair, FinetuneConfig, finetune, release_pair_prompt
from sae.models import load_pipeline

C1, C2 = "cat", "dog"
BATCH, STEPS, SEED = 4, 5, 0
LR = 1e-3  # large enough that weight decay and the betas each show (the figures above)
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-8, 1e-2
# The release clips at 1.0 (`args.max_grad_norm`); the tiny model's gradient norm is about 0.007, which that never
# reaches, so both loops clip at 1e-3 here, where clipping acts at every step.
MAX_NORM = 1e-3
LAMBDA_SEP, LAMBDA_EN, NORM_WEIGHT = 1.0, 0.5, 1.0
TOL = 5e-4


def release_prompt(c1: str, c2: str) -> str:
    return f"a photo of {c1} and {c2}"  # train_individual.py, with --c1/--c2 as its script passes them


def get_index(prompts: list[str], target: str) -> list[int]:
    """utils.get_index: the word's position in the whitespace split, plus one (the start token)."""
    return [p.split().index(target) + 1 for p in prompts]


def smoothing_weight(channels: int) -> torch.Tensor:
    """utils.GaussianSmoothing(channels, kernel_size=3, sigma=0.5, dim=2)'s depthwise kernel."""
    grid = torch.meshgrid(torch.arange(3, dtype=torch.float32), torch.arange(3, dtype=torch.float32), indexing="ij")
    kernel = 1
    for axis in grid:
        kernel = kernel * 1 / (0.5 * math.sqrt(2 * math.pi)) * torch.exp(-((axis - 1) / (2 * 0.5)) ** 2)
    kernel = kernel / kernel.sum()
    return kernel.view(1, 1, 3, 3).repeat(channels, 1, 1, 1)


def compute_separate_loss(amap1, amap2):
    return (amap1 * amap2 / (amap1 + amap2)).max()


def compute_enhance_loss(amap1, amap2):
    """The maps of one group (heads x res x res), each smoothed per head (reflect padding), the weaker peak."""
    def peak(amap):
        padded = F.pad(amap.unsqueeze(0), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(padded, smoothing_weight(amap.shape[0]), groups=amap.shape[0]).squeeze(0).max()

    first, second = peak(amap1), peak(amap2)
    return 1 - second if first > second else 1 - first


class Store:
    """ptp_utils.AttentionStore for one forward: each cross-attention call's probabilities, computed explicitly
    as the release's patched forward does (softmax of Q K^T * scale, rows (image x head) image-major), the second
    half of the rows kept under the quirks (`attn[h // 2:]`), every row otherwise."""

    def __init__(self, unet, quirks: bool):
        self.quirks, self.kept, self.hooks = quirks, [], []
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                self.hooks.append(module.register_forward_hook(self.record, with_kwargs=True))

    def record(self, attn, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs["encoder_hidden_states"]
        q, k = attn.head_to_batch_dim(attn.to_q(hidden)), attn.head_to_batch_dim(attn.to_k(context))
        probs = (torch.einsum("b i d, b j d -> b i j", q, k) * attn.scale).softmax(dim=-1)
        self.kept.append(probs[probs.shape[0] // 2:] if self.quirks else probs)

    def close(self):
        for hook in self.hooks:
            hook.remove()


def aggregate_attention(store: Store, res: int, bs: int) -> torch.Tensor:
    """ptp_utils.aggregate_attention: the layers at `res`, reshaped to (1, bs, -1, res, res, tokens), averaged."""
    out = [item.reshape(1, bs, -1, res, res, item.shape[-1]) for item in store.kept if item.shape[1] == res * res]
    out = torch.cat(out, dim=0)
    return out.sum(0) / out.shape[0]


def release_training(model, quirks: bool, steps: int, norm: bool = False) -> tuple[list[dict], dict]:
    """train_individual.py's loop: the loss history and the trained to_k weights."""
    from diffusers import DDPMScheduler

    pipe = load_pipeline(model, device="cpu", dtype="float32")
    unet, tokenizer, text_encoder = pipe.unet, pipe.tokenizer, pipe.text_encoder
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")  # load_model's
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    to_k = [p for n, p in unet.named_parameters() if "attn2.to_k" in n]  # create_model
    for p in to_k:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(to_k, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS)
    frozen = load_pipeline(model, device="cpu", dtype="float32").unet.requires_grad_(False)  # unet_clone
    size = unet.config.sample_size
    res = size // 4  # 16 for SD 1.4's 64x64 latents, as the script's res=16
    history = []

    def encode(prompts):
        ids = tokenizer(prompts, truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        return text_encoder(ids)[0]

    def noisy_batch(generator, count):
        latents = torch.randn((count, 4, size, size), generator=generator) * pipe.vae.config.scaling_factor
        noise = torch.randn((count, 4, size, size), generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (count,), generator=generator)
        return noise_scheduler.add_noise(latents, noise, timesteps), timesteps

    for step in range(steps):
        generator = torch.Generator().manual_seed(SEED * 1_000_003 + step)
        p_full = [release_prompt(C1, C2) for _ in range(BATCH)]
        noisy_latents, timesteps = noisy_batch(generator, BATCH)
        store = Store(unet, quirks)
        try:
            unet(noisy_latents, timesteps, encode(p_full))
        finally:
            store.close()
        index_c1, index_c2 = get_index(p_full, C1), get_index(p_full, C2)
        if quirks:
            amap_full = aggregate_attention(store, res, BATCH)  # (bs, rows, res, res, 77)
            loss_sep = loss_en = 0
            for ii in range(BATCH):
                amap_c1, amap_c2 = amap_full[ii, :, :, :, index_c1[ii]], amap_full[ii, :, :, :, index_c2[ii]]
                loss_sep += compute_separate_loss(amap_c1, amap_c2)
                loss_en += compute_enhance_loss(amap_c1, amap_c2)
        else:  # the paper's reading: heads averaged, every element
            layers = [item.reshape(BATCH, -1, res, res, item.shape[-1]).mean(1) for item in store.kept
                      if item.shape[1] == res * res]
            amap_full = torch.stack(layers).mean(0)  # (bs, res, res, 77)
            loss_sep = loss_en = 0
            for ii in range(BATCH):
                amap_c1 = amap_full[ii:ii + 1, :, :, index_c1[ii]]
                amap_c2 = amap_full[ii:ii + 1, :, :, index_c2[ii]]
                loss_sep += compute_separate_loss(amap_c1, amap_c2)
                loss_en += compute_enhance_loss(amap_c1, amap_c2)
        loss = LAMBDA_SEP * loss_sep / BATCH + LAMBDA_EN * loss_en / BATCH
        row = {"sep": float(loss_sep / BATCH), "en": float(loss_en / BATCH)}
        if norm:  # --use_norm: "a photo of {c1}" for half the batch, "{c2}" for the other, in the same step
            p_norm = [f"a photo of {C1}"] * (BATCH // 2) + [f"a photo of {C2}"] * (BATCH // 2)
            norm_noisy, norm_timesteps = noisy_batch(generator, BATCH)
            states = encode(p_norm)
            model_pred = unet(norm_noisy, norm_timesteps, states).sample
            target_prior = frozen(norm_noisy, norm_timesteps, states).sample.detach()
            norm_loss = F.mse_loss(model_pred.float(), target_prior.float(), reduction="mean")
            loss = loss + NORM_WEIGHT * norm_loss
            row["norm"] = float(norm_loss)
        row["total"] = float(loss)
        history.append(row)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for n, p in unet.named_parameters() if "attn2" in n], MAX_NORM)
        optimizer.step()
        optimizer.zero_grad()
    return history, {n: p.detach().clone() for n, p in unet.named_parameters() if "attn2.to_k" in n}


def sae_training(model, quirks: bool, steps: int, norm: bool = False) -> tuple[list[dict], dict]:
    config = FinetuneConfig(steps=steps, batch_size=BATCH, seed=SEED, lambda_norm=NORM_WEIGHT if norm else 0.0)
    if quirks:
        config = config.with_release_quirks()
    config = dataclasses.replace(config, learning_rate=LR, max_grad_norm=MAX_NORM)
    pipe = load_pipeline(model, device="cpu", dtype="float32")
    result = finetune(pipe, ConceptPair(release_pair_prompt([C1, C2]), [C1, C2]), config, progress=False)
    return result.history, {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "attn2.to_k" in n}


@pytest.fixture(scope="module")
def euler_model(tiny_model_dir, tmp_path_factory):
    """The tiny model, its folder sampling with Euler: a scheduler whose `add_noise` is not DDPM's."""
    import json

    from diffusers import EulerDiscreteScheduler

    model = tmp_path_factory.mktemp("euler") / "model"
    shutil.copytree(tiny_model_dir, model)
    EulerDiscreteScheduler.from_pretrained(model / "scheduler").save_pretrained(model / "scheduler")
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(index))
    return model


@pytest.fixture(scope="module")
def before(tiny_model_dir):
    unet = load_pipeline(tiny_model_dir, device="cpu", dtype="float32").unet
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "attn2.to_k" in n}


def worst(trained: dict, reference: dict, before: dict) -> float:
    """How far the trained keys' updates are from the reference's: the norm of their difference over the norm of
    the reference update, every to_k weight together. (A largest element-wise difference would be dominated by
    the few weights whose gradient is near AdamW's eps, where float rounding is amplified.)"""
    difference = torch.cat([(trained[n] - reference[n]).flatten() for n in reference])
    update = torch.cat([(reference[n] - before[n]).flatten() for n in reference])
    return (difference.norm() / update.norm()).item()


def test_the_training_prompt_is_the_releases():
    assert release_pair_prompt(["bear", "book"]) == release_prompt("bear", "book") == "a photo of bear and book"


CASES = {"quirks on": dict(quirks=True), "quirks off": dict(quirks=False),
         "quirks on, norm loss": dict(quirks=True, norm=True)}


@pytest.mark.parametrize("case", [pytest.param(case, marks=() if case == "quirks on" else pytest.mark.slow)
                                  for case in CASES])  # (each case about 20 s: one in the quick tier)
def test_training_matches_the_release_restated(euler_model, before, case):
    ours, ours_keys = sae_training(euler_model, steps=STEPS, **CASES[case])
    release, release_keys = release_training(euler_model, steps=STEPS, **CASES[case])
    assert set(ours_keys) == set(release_keys)
    moved = max((release_keys[n] - before[n]).abs().max().item() for n in before)
    assert moved > 50 * LR * TOL, "the reference barely moved the keys: the comparison would be vacuous"
    for mine, theirs in zip(ours, release):
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (case, key, ours, release)
    assert worst(ours_keys, release_keys, before) < TOL


def test_the_quirks_change_the_training(euler_model, before):
    quirks, quirks_keys = sae_training(euler_model, quirks=True, steps=2)
    paper, paper_keys = sae_training(euler_model, quirks=False, steps=2)
    assert all(abs(quirks[0][k] - paper[0][k]) > 1e-3 for k in ("sep", "en"))
    assert worst(quirks_keys, paper_keys, before) > 10 * TOL
