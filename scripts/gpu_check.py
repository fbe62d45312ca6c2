"""GPU check: time a real-size SepEn finetune and generation on SD 1.4's architecture with random weights.

Needs no hub access: the model is written by `sae.models.write_tiny_model(DIR, arch="sd14")`. Usage on a CUDA
machine (3 minutes on one H200, after writing the model):

    python scripts/gpu_check.py --json results/gpu_check/<device>-<date>.json

On the CPU, `--arch tiny --steps 4 --generation-steps 2 --rounds 1 --compile aot_eager` dry-runs every part
in a minute (CI does, so it cannot rot).

What it measures, every ratio within this one run:
- the SepEn step (UNet truncated after the last captured layer, keys only) against a full forward+backward;
  a profile of one step in fp32 and in bf16 (host time against the GPU's kernel time, kernel count);
- the 200-step per-pair finetune at batch 4, eager, in fp32 (the reference, run twice for its own noise),
  TF32 and bf16 autocast; then replaying a CUDA graph of the step (bf16, TF32; `finetune`'s default on a
  GPU); with `--compile inductor` also bf16 with compiled blocks (`sae.speed.compile_blocks`, compilation
  timed apart): seconds, and each run's loss curve (first 50 steps) and trained `to_k` delta against fp32's
  and against the same precision run eagerly (relative difference, cosine, share of signs that agree);
- fp16 generation, 50 steps: diffusers' default call (batch 1, one image at a time, timed twice) against the
  harness (`sae.sampling.generate`, batch 1, then `sae.speed.for_inference` at batch 4 and 8, and compiled
  with --compile), on the same seeds: seconds per image, their ratio, and the largest pixel difference to
  the harness's batch-1 images; Attend-and-Excite and SepEn's test-time variant timed beside them.
The report is written to --json after every part, so a run stopped early keeps what it measured.
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

from benchmark.guidance import attend_and_excite, sepen_test_time  # noqa: E402
from sae.backbones import conditioning  # noqa: E402
from sae.finetune import (ConceptPair, FinetuneConfig, finetune, sepen_losses,  # noqa: E402
                          trainable_parameters)
from sae.models import load_pipeline, write_tiny_model  # noqa: E402
from sae.sampling import DEFAULT_GUIDANCE, generate, seed_generators  # noqa: E402
from sae.speed import compile_blocks, for_inference  # noqa: E402
from sae.tokens import find_token_indices  # noqa: E402

CUDA = torch.cuda.is_available()
PROMPT = "a photo of a cat and a dog"
OBJECTS = ["cat", "dog"]
SEEDS = list(range(8))


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timed(fn):
    """(result, seconds, peak GPU memory in GiB) of one call."""
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0


def max_level_difference(images, others) -> int:
    """The largest difference in 8-bit levels between two lists of images."""
    import numpy as np

    return int(max(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(images, others)))


def step_inputs(pipe, batch: int = 4):
    g = torch.Generator().manual_seed(0)
    size = pipe.unet.config.sample_size
    latents = torch.randn(batch, 4, size, size, generator=g).to(pipe.unet.device)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).to(pipe.unet.device)
    text, extra = conditioning(pipe, [PROMPT] * batch)
    return latents, timesteps, text, extra


def step_ratio(pipe, rounds: int) -> dict:
    """One SepEn step (truncated UNet, keys only) against a full forward+backward into every weight."""
    unet = pipe.unet
    latents, timesteps, text, extra = step_inputs(pipe)
    keys = list(trainable_parameters(unet).values())

    def sepen():
        unet.requires_grad_(False)
        for k in keys:
            k.requires_grad_(True)
        losses = sepen_losses(unet, latents, timesteps, text, [[5], [8]], unet_kwargs=extra)
        (losses["sep"] + 0.5 * losses["en"]).backward()

    def full():
        unet.requires_grad_(True)
        out = unet(latents, timesteps, encoder_hidden_states=text, **extra).sample
        torch.nn.functional.mse_loss(out, latents).backward()

    times = {}
    for name, fn in (("sepen_step_s", sepen), ("full_fwd_bwd_s", full)):
        fn()
        times[name] = min(timed(fn)[1] for _ in range(rounds))
        unet.zero_grad(set_to_none=True)
    unet.requires_grad_(False)
    times["ratio"] = times["sepen_step_s"] / times["full_fwd_bwd_s"]
    return times


def step_profile(pipe, dtype) -> dict:
    """One SepEn step under the profiler: wall time, the GPU's kernel time and the number of kernels (a step
    whose kernels take far less than its wall time is bound by the host launching them)."""
    from sae.speed import frozen_weights_in

    unet = pipe.unet
    latents, timesteps, text, extra = step_inputs(pipe)
    keys = list(trainable_parameters(unet).values())
    unet.requires_grad_(False)
    for k in keys:
        k.requires_grad_(True)

    def step():
        with torch.autocast(unet.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = sepen_losses(unet, latents, timesteps, text, [[5], [8]], unet_kwargs=extra)
        (losses["sep"] + 0.5 * losses["en"]).backward()
        unet.zero_grad(set_to_none=True)

    with frozen_weights_in(unet, dtype, keep=keys):
        step()
        wall = min(timed(step)[1] for _ in range(3))
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if CUDA else [])
        with torch.profiler.profile(activities=activities) as prof:
            step()
            sync()
    unet.requires_grad_(False)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0) for e in kernels)
    return {"wall_s": wall, "kernel_s": kernel_us / 1e6, "kernels": len(kernels),
            "ops": sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU)}


class Check:
    """The report, written to --json after every part."""

    def __init__(self, path: Path | None):
        self.path = path
        self.report = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__}
        import diffusers
        import transformers

        self.report.update(diffusers=diffusers.__version__, transformers=transformers.__version__,
                           started=time.strftime("%Y-%m-%d %H:%M:%S"))

    def put(self, key: str, value, part: str | None = None) -> None:
        """Set `key` (printing only its `part` when given) and write the report."""
        self.report[key] = value
        shown = value if part is None else {part: value[part]}
        print(f"{key}: {json.dumps(shown, default=str)}", flush=True)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.report, indent=2, default=str))


# The finetune's variants: FinetuneConfig settings, TF32 matmuls, CUDA-graph replay, compiled blocks.
VARIANTS = {
    "fp32": dict(settings=dict(mixed_precision="no")),
    "fp32_repeat": dict(settings=dict(mixed_precision="no")),  # run-to-run noise of the reference itself
    "tf32": dict(settings=dict(mixed_precision="no"), tf32=True),
    "bf16": dict(settings=dict(mixed_precision="bf16")),
    "bf16_graph": dict(settings=dict(mixed_precision="bf16"), graph=True),
    "tf32_graph": dict(settings=dict(mixed_precision="no"), tf32=True, graph=True),
    "bf16_compiled": dict(settings=dict(mixed_precision="bf16"), compiled=True),
}


def compare(result_history, delta, other) -> dict:
    """Loss curve (first 50 steps) and trained delta of one run against another's."""
    curve = [row["total"] for row in result_history[:50]]
    loss_difference = max(abs(a - b) for a, b in zip(curve, other["curve"]))
    ours = torch.cat([delta[n].flatten() for n in delta])
    theirs = torch.cat([other["delta"][n].flatten() for n in delta])
    return {"max_abs_loss_difference_first_50": loss_difference,
            "relative_delta_difference": float((ours - theirs).norm() / theirs.norm().clamp_min(1e-20)),
            # whether a difference is a drift of the whole delta or a few elements' Adam steps changing sign
            "delta_cosine": float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0)),
            "delta_sign_agreement": float((torch.sign(ours) == torch.sign(theirs)).float().mean())}


def finetune_variants(check: Check, names: list[str], model: Path, device: str, steps: int, compile_backend: str,
                      tmp: Path, runs: dict):
    """The per-pair finetune in fp32 (the reference, first) and faster settings, each against it."""
    source = ConceptPair(PROMPT, OBJECTS)
    for name in names:
        variant = VARIANTS[name]
        pipe = load_pipeline(model, device=device)
        base = {n: p.detach().clone() for n, p in trainable_parameters(pipe.unet).items()}
        torch.backends.cuda.matmul.allow_tf32 = variant.get("tf32", False)
        figures = {}
        if variant.get("compiled"):
            figures["blocks_compiled"] = compile_blocks(pipe.unet, backend=compile_backend)
            warm = FinetuneConfig(steps=2, checkpoint_every=1000, **variant["settings"])
            _, figures["compile_s"], _ = timed(lambda: finetune(pipe, source, warm, progress=False, cuda_graph=False))
            with torch.no_grad():  # back to the base keys after the warm-up
                for n, p in trainable_parameters(pipe.unet).items():
                    p.copy_(base[n])
        config = FinetuneConfig(steps=steps, **variant["settings"])
        result, seconds, peak = timed(lambda: finetune(pipe, source, config, out_dir=tmp / name, progress=False,
                                                       cuda_graph=variant.get("graph", False)))
        torch.backends.cuda.matmul.allow_tf32 = False
        delta = {n: result.tensors[n].float() - base[n].float() for n in base}
        figures.update(steps=steps, batch=config.batch_size, seconds=seconds, s_per_step=seconds / steps,
                       peak_gib=peak, last_losses=result.history[-1])
        runs[name] = {"seconds": seconds, "curve": [row["total"] for row in result.history[:50]], "delta": delta}
        if name != "fp32" and "fp32" in runs:
            figures["speedup_vs_fp32"] = runs["fp32"]["seconds"] / seconds
            figures.update(compare(result.history, delta, runs["fp32"]))
        eager = name.rsplit("_", 1)[0]
        if name.endswith(("_graph", "_compiled")) and eager in runs:  # the same arithmetic, other launching
            figures[f"against_{eager}"] = compare(result.history, delta, runs[eager])
        check.put(f"finetune_{name}", figures)


def generation(check: Check, model: Path, device: str, steps: int, compile_backend: str, delta_path: Path | None):
    """fp16 generation: diffusers' default call against the harness, same seeds; guided methods beside."""
    dtype = "float16" if CUDA else "float32"
    pipe = load_pipeline(model, device=device, dtype=dtype)
    guidance = DEFAULT_GUIDANCE  # diffusers' default, and the release's
    generate(pipe, PROMPT, [0], num_inference_steps=2, guidance_scale=guidance, batch_size=1)  # warm-up

    def default_call():
        return [pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(s)).images[0]
                for s in SEEDS]

    default, default_s, default_peak = timed(default_call)
    reference, reference_s, _ = timed(lambda: generate(pipe, PROMPT, SEEDS, steps, guidance, batch_size=1))
    figures = {"dtype": dtype, "steps": steps, "images": len(SEEDS), "size": list(default[0].size),
               "diffusers_default_s_per_image": default_s / len(SEEDS), "diffusers_default_peak_gib": default_peak,
               "harness_batch1_s_per_image": reference_s / len(SEEDS),
               "harness_batch1_max_level_difference_to_default": max_level_difference(reference, default)}
    check.put("generate", figures)
    _, again_s, _ = timed(default_call)  # the same call again: how much the host's speed varies
    figures["diffusers_default_again_s_per_image"] = again_s / len(SEEDS)
    check.put("generate", figures, "diffusers_default_again_s_per_image")
    default_s = min(default_s, again_s)  # the ratios below are against the faster of the two

    def variant(name, batch_size):
        generate(pipe, PROMPT, SEEDS[:batch_size], 2, guidance, batch_size=batch_size)  # warm-up at this shape
        images, seconds, peak = timed(lambda: generate(pipe, PROMPT, SEEDS, steps, guidance, batch_size=batch_size))
        figures[name] = {"batch": batch_size, "s_per_image": seconds / len(SEEDS), "peak_gib": peak,
                         "speedup_vs_diffusers_default": default_s / seconds,
                         "max_level_difference_to_harness_batch1": max_level_difference(images, reference)}
        check.put("generate", figures, name)

    for_inference(pipe, channels_last=True)
    variant("harness_channels_last_batch4", 4)
    variant("harness_channels_last_batch8", 8)

    groups = find_token_indices(pipe.tokenizer, PROMPT, OBJECTS)
    for name, guide in (("attend_excite", attend_and_excite(steps)),
                        ("sepen_tt", sepen_test_time(num_inference_steps=steps))):
        _, seconds, _ = timed(lambda: guide.generate(pipe, PROMPT, groups, seed_generators(SEEDS[:4]), steps,
                                                     guidance))
        figures[f"{name}_batch4_s_per_image"] = seconds / 4
        check.put("generate", figures, f"{name}_batch4_s_per_image")
    if compile_backend != "none":
        compile_blocks(pipe.unet, backend=compile_backend)
        _, figures["compile_s"], _ = timed(lambda: generate(pipe, PROMPT, SEEDS[:4], 2, guidance, batch_size=4))
        check.put("generate", figures, "compile_s")
        variant("harness_compiled_batch4", 4)
    if delta_path is not None and delta_path.exists():
        from sae.checkpoint import apply_delta

        _, figures["apply_checkpoint_s"], _ = timed(lambda: apply_delta(pipe.unet, delta_path))
        check.put("generate", figures, "apply_checkpoint_s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="existing sd14-architecture folder (default: write one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--arch", default="sd14",
                        help="sd14 or sdxl-base (SDXL base 1.0's architecture: 1024 px; --parts finetune "
                             "--variants bf16,bf16_graph for its per-pair goal); tiny or sdxl: a dry run on the CPU")
    parser.add_argument("--variants", default=None,
                        help="comma-separated finetune variants to run (default: all of the parts asked for)")
    parser.add_argument("--generation-steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the step ratio (best of)")
    parser.add_argument("--compile", default="none",
                        help="torch.compile backend of the compiled variants: none (skip them: on one H200 they "
                             "were slower, results/gpu_check/), inductor, or aot_eager (a CPU dry run)")
    parser.add_argument("--parts", default="steps,finetune,generate,graphs",
                        help="which parts to run, in this order (graphs: the CUDA-graph finetunes)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not CUDA and args.arch in ("sd14", "sdxl-base"):
        print("no CUDA device: this check is for GPU machines (--arch tiny dry-runs it on the CPU)", file=sys.stderr)
        return 1
    device = "cuda" if CUDA else "cpu"
    parts = set(args.parts.split(","))
    check = Check(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = tmp / args.arch
            _, seconds, _ = timed(lambda: write_tiny_model(model, arch=args.arch))
            check.put("write_model_s", seconds)
        if "steps" in parts:
            pipe = load_pipeline(model, device=device)
            check.put("step_ratio", step_ratio(pipe, args.rounds))
            try:  # a profiler that fails must not cost the timings after it
                check.put("step_profile", {"fp32": step_profile(pipe, None),
                                           "bf16": step_profile(pipe, torch.bfloat16 if CUDA else None)})
            except Exception as err:  # noqa: BLE001
                check.put("step_profile", {"error": repr(err)})
            del pipe
        runs = {}
        if "finetune" in parts:
            names = ["fp32", "fp32_repeat", "tf32", "bf16"] + (["bf16_compiled"] if args.compile != "none" else [])
            names = [n for n in names if args.variants is None or n in args.variants.split(",")]
            finetune_variants(check, names, model, device, args.steps, args.compile, tmp, runs)
        if "generate" in parts:
            generation(check, model, device, args.generation_steps, args.compile, tmp / "fp32" / "sepen.safetensors")
        if "graphs" in parts:  # last: a capture that fails must not cost the other figures
            names = [n for n in ("bf16_graph", "tf32_graph") if args.variants is None or n in args.variants.split(",")]
            finetune_variants(check, names, model, device, args.steps, args.compile, tmp, runs)
    check.put("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
