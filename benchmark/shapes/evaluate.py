"""How well a shapes model draws what its prompt asks, judged by the exact detector.

    python -m benchmark.shapes.evaluate --model benchmark/shapes/pretrained --n-per-count 96 --seed 1000

For each object count (1-4) it samples `n_per_count` prompts of the world's form ("a red circle and a blue
square"), generates one image per prompt from its own seeded generator, and reports
  presence  (count 1): the asked colour+shape was found;  all_found (counts 2-4): every asked object was found
  no_extra : nothing besides the asked objects was detected (no other palette shape, no unrecognised blob)
  exact    : all found and no extra
Single-object prompts cycle through all 18 colour x shape objects. Multi-object prompts are random scenes drawn
from seeds disjoint from the training streams; "heldout" uses the held-out pairs (data.HELDOUT_PAIRS), never
seen together in training.
Images are sampled as `benchmark run` samples this world (its steps and guidance, the model's own scheduler);
`--scheduler` swaps in another sampler to compare (results/shapes/sampler.md).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from .data import HELDOUT_PAIRS
from .detector import presence
from .domain import DOMAIN
from .geometry import SHAPES
from .world import COLOURS, caption_for, sample_scene

EVAL_STREAM = 3  # data.py's streams 1, 2 and 4 are training's; evaluation scenes come from their own stream

SHAPES_DEFAULTS = DOMAIN.run_defaults  # the benchmark's sampling settings for this world
# --scheduler: diffusers schedulers to compare, each built from the model's own scheduler config (its betas,
# prediction type and timestep spacing), as diffusers swaps schedulers
SAMPLERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler_ancestral": "EulerAncestralDiscreteScheduler",
            "euler": "EulerDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler",
            "unipc": "UniPCMultistepScheduler"}


def eval_prompts(count: int | str, n: int, seed: int = 1000) -> list[list[tuple[str, str]]]:
    """The object lists evaluated for a count (1-4) or "heldout"; fixed by (seed, count)."""
    rng = np.random.default_rng([seed, EVAL_STREAM, 0 if count == "heldout" else int(count)])
    if count == 1:
        objects = [(c, s) for c in COLOURS for s in SHAPES]
        order = np.concatenate([rng.permutation(len(objects)) for _ in range(-(-n // len(objects)))])
        return [[objects[i]] for i in order[:n]]
    if count == "heldout":
        pairs = [list(p) if rng.random() < 0.5 else list(p[::-1]) for p in HELDOUT_PAIRS * (-(-n // 6))]
        return pairs[:n]
    return [sample_scene(rng, int(count)).labels for _ in range(n)]


@torch.no_grad()
def generate(pipe, object_lists, seed: int = 1000, steps: int = SHAPES_DEFAULTS["steps"],
             guidance: float = SHAPES_DEFAULTS["guidance"], batch_size: int = 64, guidance_rescale: float = 0.0,
             eta: float = 0.0):
    """One image (HxWx3 float in 0-1) per object list, each from its own generator (seed + index)."""
    images = []
    for start in range(0, len(object_lists), batch_size):
        chunk = object_lists[start:start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        out = pipe(prompt=[caption_for(o) for o in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="np", guidance_rescale=guidance_rescale,
                   **({"eta": eta} if eta else {}))
        images.extend(out.images)
    return images


def score(images, object_lists) -> dict:
    results = [presence(img, objs) for img, objs in zip(images, object_lists, strict=False)]
    no_extra = [not r["extra"] and not r["unknown"] for r in results]
    return {"n": len(results),
            "all_found": float(np.mean([r["all_found"] for r in results])),
            "no_extra": float(np.mean(no_extra)),
            "exact": float(np.mean([r["all_found"] and ne for r, ne in zip(results, no_extra, strict=False)])),
            "found_fraction": float(np.mean([len(r["found"]) / len(objs)
                                             for r, objs in zip(results, object_lists, strict=False)]))}


def evaluate(pipe, n_per_count: int = 48, seed: int = 1000, counts=(1, 2, 3, 4),
             steps: int = SHAPES_DEFAULTS["steps"], guidance: float = SHAPES_DEFAULTS["guidance"],
             heldout: bool = True, batch_size: int = 64, guidance_rescale: float = 0.0) -> dict:
    """Rates per count ("1".."4", and "heldout" pairs): all_found (= presence for one object), no_extra, exact.

    `seed` picks both the prompts and the generators; use seeds other than the ones a result was tuned on.
    """
    report, samples = {}, {}
    keys = list(counts) + (["heldout"] if heldout else [])
    for count in keys:
        object_lists = eval_prompts(count, n_per_count, seed)
        images = generate(pipe, object_lists, seed + (0 if count == "heldout" else 10 * int(count)),
                          steps, guidance, batch_size, guidance_rescale)
        report[str(count)] = score(images, object_lists)
        samples[str(count)] = (images, object_lists)
    report["images"] = samples  # (images, object lists) per count, for the grid; not part of the JSON
    report["settings"] = {"n_per_count": n_per_count, "seed": seed, "steps": steps, "guidance": guidance,
                          "guidance_rescale": guidance_rescale, "scheduler": type(pipe.scheduler).__name__}
    return report


def format_report(report: dict) -> str:
    lines = []
    for key, r in report.items():
        if key in ("settings", "images"):
            continue
        name = "1 object (presence)" if key == "1" else ("held-out pairs" if key == "heldout" else f"{key} objects")
        lines.append(f"{name:>22}: all_found {r['all_found']:.3f}  no_extra {r['no_extra']:.3f}  "
                     f"exact {r['exact']:.3f}  found_fraction {r['found_fraction']:.3f}  (n={r['n']})")
    lines.append(f"{'settings':>22}: {report.get('settings')}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="benchmark/shapes/pretrained")
    p.add_argument("--n-per-count", type=int, default=96)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--counts", default="1,2,3,4")
    p.add_argument("--steps", type=int, default=SHAPES_DEFAULTS["steps"])
    p.add_argument("--guidance", type=float, default=SHAPES_DEFAULTS["guidance"])
    p.add_argument("--guidance-rescale", type=float, default=0.0)
    p.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None,
                   help="sample with this scheduler instead of the model's own (to compare samplers)")
    p.add_argument("--no-heldout", action="store_true")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--grid", default=None, help="also save a PNG of the first 8 images of each count, with the "
                                                "detector's verdicts drawn (to check them by eye)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sae.models import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    if args.scheduler:
        import diffusers

        pipe.scheduler = getattr(diffusers, SAMPLERS[args.scheduler]).from_config(pipe.scheduler.config)
    t0 = time.time()
    report = evaluate(pipe, args.n_per_count, args.seed, [int(c) for c in args.counts.split(",") if c],
                      args.steps, args.guidance, not args.no_heldout, args.batch_size, args.guidance_rescale)
    report["settings"]["seconds"] = round(time.time() - t0, 1)
    report["settings"]["model"] = str(args.model)
    print(format_report(report))
    samples = report.pop("images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.grid:
        save_grid(samples, args.grid)


def save_grid(samples: dict, path, per_count: int = 8) -> None:
    """One row per count: images with their detections drawn and the prompt under each."""
    from .viz import grid

    images, titles = [], []
    for images_of_count, objects in samples.values():
        for image, objs in list(zip(images_of_count, objects, strict=False))[:per_count]:
            images.append((np.asarray(image) * 255).round().astype(np.uint8))
            titles.append(" + ".join(f"{c} {s}" for c, s in objs))
    grid(images, ncols=per_count, titles=titles).save(path)


if __name__ == "__main__":
    main()
