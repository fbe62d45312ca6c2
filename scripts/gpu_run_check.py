"""GPU check of `benchmark run` itself: is the main command as fast as the library, and what does the paper's main
table cost? Every figure against a baseline measured in the same process, on SD 1.4's architecture with random
weights (`sae.models.write_tiny_model(DIR, arch="sd14")`, no hub access). On a CUDA machine (about 6 minutes):

    python scripts/gpu_run_check.py --json results/gpu_check/<device>-run-<date>.json

On the CPU, `--arch tiny --steps 2 --sepen-steps 3 --prompts 2 --seeds 2` dry-runs every part (the slow tier
does, so it cannot rot). The parts:

1. `generation`: `benchmark run --methods plain` (its default precision and `--batch-size auto`), seconds per
   image from the records, against the library's fast path on the same prompts and seeds (`sae.sampling.generate`,
   the same precision, channels-last, batches of 8). Goal: within 10%.
2. `sepen`: seconds per SepEn checkpoint inside `benchmark run` (`finetune.jsonl`) against `sae.finetune` on an
   fp32 pipeline with bf16 autocast and the CUDA graph (`sae train --mixed-precision bf16`). Goal: within 10%.
3. `projection`: the paper's main table (276 prompts x 64 seeds; plain, attend_excite, sepen, sepen_tt) in GPU
   hours from the rates measured by `benchmark run`, beside the anchors' way measured here: diffusers' default
   call one image at a time in fp16 (plain and SepEn's sampling), diffusers' Attend-and-Excite pipeline (its
   test-time variant counted at the same rate: there is no diffusers pipeline of it) and the release's fp32
   eager per-pair training. Goal: at most a third of the anchors' hours; Attend-and-Excite's share on its own.
4. `ranks`: two ranks of `benchmark run` on one GPU (`--processes 2`) against one: seconds, and the images
   (the largest pixel difference).
The report is written to --json after every part.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.generate import RunConfig, run  # noqa: E402
from benchmark.records import read_jsonl  # noqa: E402
from benchmark.suites import load_suite  # noqa: E402
from sae.finetune import ConceptPair, FinetuneConfig, finetune, release_pair_prompt  # noqa: E402
from sae.models import dtype_keyword, load_pipeline, write_tiny_model  # noqa: E402
from sae.sampling import DEFAULT_GUIDANCE, generate  # noqa: E402
from sae.speed import for_inference  # noqa: E402
from sae.tokens import find_token_indices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
PAPER_PROMPTS, PAPER_SEEDS = 276, 64  # Attend-and-Excite's prompts, 64 seeds each (the paper's main table)
METHODS = ("plain", "attend_excite", "sepen", "sepen_tt")


def sync():
    if CUDA:
        torch.cuda.synchronize()


def seconds_of(fn) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


class Report:
    def __init__(self, path: Path | None):
        self.path, self.data = path, {"device": torch.cuda.get_device_name() if CUDA else "cpu"}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        print(json.dumps({key: value}), flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def suite_file(folder: Path, count: int) -> Path:
    """The first `count` two-object prompts of Attend-and-Excite's suite, as a suite file."""
    lines = (ROOT / "prompts" / "ae276.jsonl").read_text().splitlines()
    path = folder / "ae_first.jsonl"
    path.write_text("".join(line + "\n" for line in lines[:count]))
    return path


def run_folder(model: Path, suite: Path, out: Path, methods, seeds: int, steps: int, sepen_steps: int,
               cache: Path) -> Path:
    config = RunConfig.resolve(str(suite), str(model), methods=list(methods), seeds=list(range(seeds)),
                               steps=steps, options={"sepen": {"steps": sepen_steps, "cache": str(cache)}}
                               if "sepen" in methods else None, metrics=[], out=out, device="auto",
                               batch_size="auto", progress=False)
    run(config)
    return out


def per_image(out: Path) -> dict:
    """Seconds per image of each method, from the records (the generation alone, not the loading)."""
    rows = read_jsonl(out / "samples.jsonl")
    return {m: sum(r["seconds"] for r in rows if r["method"] == m) / max(1, sum(r["method"] == m for r in rows))
            for m in dict.fromkeys(r["method"] for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an existing pipeline folder (default: write --arch's)")
    parser.add_argument("--arch", default="sd14", help="sd14 (SD 1.4's architecture) or tiny (the CPU dry run)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--sepen-steps", type=int, default=200, help="per-pair finetuning steps")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--parts", default="generation,sepen,projection,ranks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    report = Report(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or write_tiny_model(tmp / "model", arch=args.arch)
        suite = suite_file(tmp, args.prompts)
        dtype = "float16" if CUDA else "float32"
        prompts = [json.loads(line)["prompt"] for line in suite.read_text().splitlines()]
        images = args.prompts * args.seeds
        rates = {}
        if parts & {"generation", "projection"}:
            out = run_folder(model, suite, tmp / "all", METHODS, args.seeds, args.steps, args.sepen_steps,
                             tmp / "cache")
            rates = per_image(out)
            checkpoints = [r["seconds"] for r in read_jsonl(out / "finetune.jsonl")]
            rates["sepen_checkpoint"] = sum(checkpoints) / max(1, len(checkpoints))
            settings = json.loads((out / "run_config.json").read_text())
            report.put("benchmark_run", {"dtype": settings["dtype"], "batch_size": settings["batch_size"],
                                         "s_per_image": {m: rates[m] for m in METHODS},
                                         "s_per_sepen_checkpoint": rates["sepen_checkpoint"]})
        pipe = load_pipeline(model, device="auto", dtype=dtype)
        for_inference(pipe)
        if "generation" in parts:
            generate(pipe, prompts[0], [0], 2, DEFAULT_GUIDANCE, batch_size=8)  # warm-up
            seconds = sum(seconds_of(lambda p=p: generate(pipe, p, list(range(args.seeds)), args.steps,
                                                          DEFAULT_GUIDANCE, batch_size=8)) for p in prompts)
            library = seconds / images
            report.put("generation", {"library_s_per_image": library, "benchmark_run_s_per_image": rates["plain"],
                                      "ratio": rates["plain"] / library, "goal": "<= 1.10"})
        if parts & {"sepen", "projection"}:
            full = load_pipeline(model, device="auto")  # sae train's pipeline: fp32 weights
            source = ConceptPair(release_pair_prompt(["cat", "dog"]), ["cat", "dog"])
            bf16 = FinetuneConfig(steps=args.sepen_steps, mixed_precision="bf16" if CUDA else "no")
            library = seconds_of(lambda: finetune(full, source, bf16, progress=False))
            if "sepen" in parts:
                report.put("sepen", {"library_s_per_checkpoint": library,
                                     "benchmark_run_s_per_checkpoint": rates.get("sepen_checkpoint"),
                                     "ratio": rates.get("sepen_checkpoint", float("nan")) / library,
                                     "goal": "<= 1.10"})
        if "projection" in parts:
            from diffusers import StableDiffusionAttendAndExcitePipeline

            def per_image_of(fn, count: int) -> float:
                fn(1)  # warm-up
                return seconds_of(lambda: fn(count)) / count

            count = min(4, args.seeds)
            default = per_image_of(lambda n: [pipe(prompts[0], num_inference_steps=args.steps).images
                                              for _ in range(n)], count)
            # from_pipe casts the shared modules to float32 unless told the dtype (in place: ours too)
            anchor_ae = StableDiffusionAttendAndExcitePipeline.from_pipe(pipe, **{dtype_keyword(): pipe.dtype})
            anchor_ae.set_progress_bar_config(disable=True)
            indices = [i for group in _token_groups(pipe, prompts[0]) for i in group][:2]
            ae = per_image_of(lambda n: [anchor_ae(prompts[0], token_indices=indices, num_inference_steps=args.steps)
                                         for _ in range(n)], count)
            release = seconds_of(lambda: finetune(full, source, FinetuneConfig(steps=args.sepen_steps),
                                                  progress=False, cuda_graph=False))
            hours = 3600.0
            n = PAPER_PROMPTS * PAPER_SEEDS
            ours = {m: n * rates[m] / hours for m in METHODS}
            ours["sepen"] += PAPER_PROMPTS * rates["sepen_checkpoint"] / hours
            anchors = {"plain": n * default / hours, "attend_excite": n * ae / hours,
                       "sepen": (n * default + PAPER_PROMPTS * release) / hours, "sepen_tt": n * ae / hours}
            report.put("projection", {
                "images_per_method": n, "ours_gpu_hours": ours, "anchors_gpu_hours": anchors,
                "ours_total": sum(ours.values()), "anchors_total": sum(anchors.values()),
                "ratio": sum(ours.values()) / sum(anchors.values()), "goal": "<= 0.333",
                "attend_excite_share_of_ours": ours["attend_excite"] / sum(ours.values()),
                "attend_excite_ratio": ours["attend_excite"] / anchors["attend_excite"],
                "anchor_rates": {"diffusers_default_s_per_image": default, "diffusers_attend_excite_s_per_image": ae,
                                 "release_fp32_s_per_checkpoint": release}})
        if "ranks" in parts:
            figures = {}
            for ranks in (1, 2):
                out = tmp / f"ranks{ranks}"
                command = [sys.executable, "-m", "benchmark", "run", "--suite", str(suite), "--model", str(model),
                           "--methods", "plain", "--num-seeds", str(args.seeds), "--steps", str(args.steps),
                           "--processes", str(ranks), "--out", str(out), "--no-progress", "--no-html"]
                started = time.perf_counter()
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                figures[f"{ranks}_processes_s"] = time.perf_counter() - started
                if done.returncode != 0:
                    figures[f"{ranks}_processes_error"] = done.stderr[-1500:]
            two = sorted((tmp / "ranks2" / "images").rglob("*.png"))
            pairs = [(path, tmp / "ranks1" / path.relative_to(tmp / "ranks2")) for path in two]
            pairs = [(a, b) for a, b in pairs if b.exists()]  # a run that failed left fewer (its error is above)
            figures["images"], figures["images_in_both"] = len(two), len(pairs)
            # the same images; on the CPU a rank's single thread may round a last bit apart (OMP_NUM_THREADS)
            figures["max_level_difference"] = max((int(np.abs(
                np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).max()) for a, b in pairs),
                default=None)
            report.put("ranks", figures)
    report.put("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    return 0


def _token_groups(pipe, prompt: str) -> list[list[int]]:
    """The token positions of the prompt's objects (Attend-and-Excite's pipeline takes indices)."""
    item = next(p for p in load_suite("ae276") if p.prompt == prompt)
    return find_token_indices(pipe.tokenizer, prompt, item.object_words)


if __name__ == "__main__":
    sys.exit(main())
