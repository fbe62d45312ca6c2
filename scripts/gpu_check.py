"""GPU check: time a real-size SepEn finetune and generation on SD 1.4's architecture with random weights.

Needs no hub access: the model is written by `python -m sae tiny-model DIR --arch sd14`. Prints one JSON
object with the timings and peak memory (and writes it to --json). Usage on a CUDA machine:

    python scripts/gpu_check.py --json results/gpu_check/<device>-<date>.json

On the CPU, `--arch tiny --steps 2 --generation-steps 2 --rounds 1` dry-runs every part in about a minute
(CI does, so it cannot rot).
Besides the timings it measures, in the same run: the finetune in bf16 autocast against fp32 (speed ratio, the
first steps' loss curves, the final `to_k` deltas' relative difference), and the harness's generation (batch 4)
against diffusers' default call (batch 1, one image at a time) on the same seeds: images per second, their ratio
and the largest pixel difference between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.checkpoint import apply_delta  # noqa: E402
from sae.finetune import ConceptPair, FinetuneConfig, encode_prompts, finetune, sepen_losses  # noqa: E402
from sae.models import load_pipeline, write_tiny_model  # noqa: E402
from sae.sampling import generate  # noqa: E402


CUDA = torch.cuda.is_available()


def timed(fn):
    """(result, seconds, peak GPU memory in GiB) of one call."""
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if CUDA:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0


PROMPT = "a photo of a cat and a dog"
SEEDS = [0, 1, 2, 3]


def max_level_difference(images, others) -> int:
    """The largest difference in 8-bit levels between two lists of images."""
    import numpy as np

    return int(max(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(images, others)))


def precision_comparison(folder: Path, report: dict) -> dict:
    """bf16 autocast against fp32: speed, the loss curves of the first steps, the final trained keys."""
    from sae.checkpoint import load_delta

    fp32, bf16 = (load_delta(folder / p / "sepen.safetensors").tensors for p in ("no", "bf16"))
    relative = max(float((bf16[n] - fp32[n]).norm() / fp32[n].norm().clamp_min(1e-12)) for n in fp32)
    curves = {}
    for precision in ("no", "bf16"):
        with open(folder / precision / "losses.csv") as handle:
            rows = [line.strip().split(",") for line in handle][1:51]
        curves[precision] = [float(r[1]) for r in rows if len(r) > 1 and r[1]]
    differences = [abs(a - b) for a, b in zip(curves["no"], curves["bf16"])]
    return {"speed_ratio_bf16_over_fp32": report["finetune_bf16"]["seconds"] / report["finetune_no"]["seconds"],
            "max_abs_loss_difference_first_50": max(differences) if differences else None,
            "max_relative_key_difference": relative}


def step_ratio(pipe, latent_size, rounds=10):
    """One SepEn step (truncated UNet, keys only) against a full forward+backward into every weight."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, latent_size, latent_size, generator=g).to(unet.device)
    timesteps = torch.randint(0, 1000, (4,), generator=g).to(unet.device)
    text = encode_prompts(pipe, ["a photo of a cat and a dog"] * 4)
    keys = [p for n, p in unet.named_parameters() if ".attn2.to_k." in n]

    def sepen():
        unet.requires_grad_(False)
        for k in keys:
            k.requires_grad_(True)
        losses = sepen_losses(unet, latents, timesteps, text, [[5], [8]])
        (losses["sep"] + 0.5 * losses["en"]).backward()

    def full():
        unet.requires_grad_(True)
        out = unet(latents, timesteps, encoder_hidden_states=text).sample
        torch.nn.functional.mse_loss(out, latents).backward()

    times = {}
    for name, fn in (("sepen_step_s", sepen), ("full_fwd_bwd_s", full)):
        fn()
        best = float("inf")
        for _ in range(rounds):
            best = min(best, timed(fn)[1])
        times[name] = best
        unet.zero_grad(set_to_none=True)
    unet.requires_grad_(False)
    times["ratio"] = times["sepen_step_s"] / times["full_fwd_bwd_s"]
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="existing sd14-architecture folder (default: write one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--arch", default="sd14", help="tiny: a dry run of this script on the CPU")
    parser.add_argument("--generation-steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of the step ratio (best of)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not CUDA and args.arch == "sd14":
        print("no CUDA device: this check is for GPU machines (--arch tiny dry-runs it on the CPU)", file=sys.stderr)
        return 1
    device = "cuda" if CUDA else "cpu"
    report = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / args.arch
            _, report["write_model_s"], _ = timed(lambda: write_tiny_model(model, arch=args.arch))
        pipe, report["load_s"], _ = timed(lambda: load_pipeline(model, device=device))

        report.update(step_ratio(pipe, pipe.unet.config.sample_size, args.rounds))
        print("step ratio:", {k: report[k] for k in ("sepen_step_s", "full_fwd_bwd_s", "ratio")}, flush=True)
        source = ConceptPair("a photo of a cat and a dog", ["cat", "dog"])
        for precision in ("no", "bf16"):
            config = FinetuneConfig(steps=args.steps, mixed_precision=precision)
            result, seconds, peak = timed(lambda: finetune(pipe, source, config, out_dir=Path(tmp) / precision,
                                                           base_model=str(model), progress=False))
            report[f"finetune_{precision}"] = {"steps": args.steps, "batch": config.batch_size, "seconds": seconds,
                                               "s_per_step": seconds / args.steps, "peak_gib": peak,
                                               "last_losses": result.history[-1]}
            print(f"finetune_{precision}:", report[f"finetune_{precision}"], flush=True)
            pipe = load_pipeline(model, device=device)  # back to the base weights
        report["bf16_vs_fp32"] = precision_comparison(Path(tmp), report)
        print("bf16_vs_fp32:", report["bf16_vs_fp32"], flush=True)

        steps = args.generation_steps
        for dtype in ("float16", "float32") if CUDA else ("float32",):
            pipe = load_pipeline(model, device=device, dtype=dtype)
            _, apply_s, _ = timed(lambda: apply_delta(pipe.unet, Path(tmp) / "no" / "sepen.safetensors"))
            generate(pipe, PROMPT, [0], num_inference_steps=2, guidance_scale=6.0, batch_size=1)  # warm-up
            images, seconds, peak = timed(lambda: generate(pipe, PROMPT, SEEDS, num_inference_steps=steps,
                                                           guidance_scale=6.0, batch_size=4))
            default, default_s, _ = timed(lambda: [pipe(PROMPT, num_inference_steps=steps, guidance_scale=6.0,
                                                        generator=torch.Generator("cpu").manual_seed(s)).images[0]
                                                   for s in SEEDS])
            report[f"generate_{dtype}"] = {
                "images": len(images), "steps": steps, "seconds": seconds, "s_per_image": seconds / len(images),
                "peak_gib": peak, "apply_checkpoint_s": apply_s, "size": list(images[0].size),
                "diffusers_default_s_per_image": default_s / len(default),
                "speedup_vs_diffusers_default": default_s / seconds,
                "max_level_difference_to_default": max_level_difference(images, default)}
            print(f"generate_{dtype}:", report[f"generate_{dtype}"], flush=True)
    text = json.dumps(report, indent=2, default=str)
    print(text, flush=True)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
