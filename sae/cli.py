"""`python -m sae`: train a SepEn checkpoint, sample with one, or write a tiny offline test model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path

REPORT_GUIDANCE = 6.0  # `sample`'s default

EPILOG = """examples:
  python -m sae tiny-model /tmp/tiny
  python -m sae train --model /tmp/tiny --prompt "a cat and a dog" --objects cat,dog --out runs/cat_dog
  python -m sae train --model /tmp/tiny --prompt "a cat and a dog" --objects cat,dog --out runs/cat_dog --report
  python -m sae train --model CompVis/stable-diffusion-v1-4 --concepts concepts.txt --out runs/large
  python -m sae sample --model /tmp/tiny --delta runs/cat_dog/sepen.safetensors --prompt "a cat and a dog" \\
      --seeds 0-3 --out samples/
"""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help only where X says something: not for unset (None), off (False) or
    empty defaults, and not where the help already states its default (those depend on the model or mode)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in help:
            return help
        return super()._get_help_string(action)


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local diffusers pipeline folder: SD 1.x/2.x, SDXL; "
                                                        "SD3 and PixArt as an experiment (docs/backbones.md)")
    parser.add_argument("--device", default="auto", help="cuda, cpu, cuda:1, ... (default: cuda when present)")


def build_parser() -> argparse.ArgumentParser:
    from .finetune import FinetuneConfig
    from .options import add_flags

    parser = argparse.ArgumentParser(prog="python -m sae", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="finetune the cross-attention keys on a concept pair or list",
                                formatter_class=DefaultsHelpFormatter)
    _add_runtime_args(train)
    what = train.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help='per-pair training prompt, e.g. "a photo of a cat and a dog"')
    what.add_argument("--concepts", type=Path,
                      help="large-scale training: a text file with one concept per line, a JSON list, or a JSON "
                           "object whose 'train' (or 'concepts') key lists them (prompts/sepen_large_concepts.json)")
    train.add_argument("--objects", help="comma-separated object words of --prompt, e.g. cat,dog")
    train.add_argument("--out", required=True, type=Path, help="output folder (resumed if it holds this run)")
    add_flags(train.add_argument_group("training settings (FinetuneConfig)"), FinetuneConfig)
    train.add_argument("--release-quirks", action="store_true",
                       help="reproduce the release's quirks: its head grouping (the second half of the batch's "
                            "image x head rows in batch-size groups, each loss a max within a group), its scripts' "
                            "effective learning rate unless --lr is given, and large-scale token positions fixed "
                            "at 6 and 9 (docs/protocol.md)")
    train.add_argument("--no-cuda-graph", action="store_true",
                       help="run every step eagerly instead of replaying a CUDA graph of it (GPU, per pair)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--report", action="store_true",
                       help="write OUT/report/index.html: loss curves, and the training prompt's object maps "
                            "before and after training")
    train.add_argument("--report-steps", type=int, default=25, help="denoising steps of the report's samples")

    sample = commands.add_parser("sample", help="generate images, optionally with a SepEn checkpoint",
                                 formatter_class=DefaultsHelpFormatter)
    _add_runtime_args(sample)
    sample.add_argument("--delta", type=Path, help="SepEn checkpoint (.safetensors) to load onto the model")
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--seeds", default="0-3", help="e.g. 0-63 or 0,3,5-7")
    sample.add_argument("--out", required=True, type=Path, help="folder for the PNGs (one per seed)")
    sample.add_argument("--steps", type=int, default=50, help="denoising steps")
    sample.add_argument("--guidance", type=float, default=REPORT_GUIDANCE, help="classifier-free guidance scale")
    sample.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    sample.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 (the release: float16)")
    sample.add_argument("--generator-device", choices=["cpu", "cuda"], default="cpu",
                        help="where each seed's generator draws the initial noise: cpu (the same image on any "
                             "device) or cuda (the release's: other noise, reproducible only on CUDA)")

    tiny = commands.add_parser("tiny-model", help="write a random offline pipeline (tests, smoke runs, GPU timing)",
                               formatter_class=DefaultsHelpFormatter)
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--arch", choices=["tiny", "sd14", "sd2", "sdxl", "sdxl-base", "sd3", "pixart", "flux"],
                      default="tiny",
                      help="tiny (SD 1.x's layout, 1.6M-weight UNet, 64 px), sd14 (SD 1.4's real architecture, "
                           "random weights), sd2 (SD 2.x's layout in miniature: linear projections, heads of a "
                           "fixed width, v-prediction), sdxl (SDXL's layout in miniature: two text encoders), "
                           "sdxl-base (SDXL base 1.0's real architecture, random weights: 13 GB), or the transformer "
                           "families in miniature, with a T5 tokenizer over the suites' words: sd3 (MMDiT, two CLIP "
                           "encoders and T5, 64 px), pixart (PixArt-Sigma: DiT cross-attending to T5, 64 px) or flux "
                           "(FLUX.1: double- and single-stream blocks, CLIP and T5, 128 px)")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def read_concepts(path: Path) -> list[str]:
    """Concepts for large-scale training: a JSON list, a JSON object with a `train` (the shipped
    prompts/sepen_large_concepts.json) or `concepts` list, or a text file with one concept a line."""
    if not path.is_file():
        raise FileNotFoundError(f"--concepts {path}: no such file; pass a JSON list or a text file of concepts")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--concepts {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if isinstance(data, dict):
            data = next((data[key] for key in ("train", "concepts") if key in data), None)
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ValueError(f"--concepts {path}: expected a JSON list of concept strings, or an object with a "
                             "'train' or 'concepts' list of them")
        return [c.strip() for c in data if c.strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def cmd_train(args) -> int:
    from .finetune import ConceptPair, ConceptPool, FinetuneConfig, finetune
    from .models import load_pipeline, quiet_loading
    from .options import given_flags
    from .tokens import find_token_indices

    from .backbones import METHOD_FAMILIES, UNET_FAMILIES
    from .models import model_family

    if model_family(args.model) not in METHOD_FAMILIES:
        raise ValueError(f"--model {args.model}: SepEn training runs on {', '.join(METHOD_FAMILIES[:-1])} and "
                         f"{METHOD_FAMILIES[-1]} pipelines, not on {model_family(args.model)} (docs/backbones.md)")
    if args.report and model_family(args.model) not in UNET_FAMILIES:  # its maps are a UNet's cross-attention
        raise ValueError(f"--report draws the maps of {', '.join(UNET_FAMILIES)} models, not of "
                         f"{model_family(args.model)}: train without it")
    large = args.concepts is not None
    # the flags given; the rest are the per-pair or large-scale defaults
    config = (FinetuneConfig.large_scale if large else FinetuneConfig)(**given_flags(FinetuneConfig, args))
    if args.release_quirks:  # its learning rate unless --lr says otherwise
        config = config.with_release_quirks(large_scale=large)
        if args.learning_rate is not None:
            config = dataclasses.replace(config, learning_rate=args.learning_rate)
    if large:
        source = ConceptPool(read_concepts(args.concepts))
    else:
        if not args.objects:
            raise ValueError("--objects is required with --prompt (the object words, e.g. --objects cat,dog)")
        source = ConceptPair(args.prompt, [o.strip() for o in args.objects.split(",") if o.strip()])
    if args.no_progress:  # the libraries' loading bars too
        quiet_loading()
    pipe = load_pipeline(args.model, device=args.device)
    if not large:  # fail on a bad object word before any work
        find_token_indices(pipe.tokenizer, source.prompt, source.objects)
    if args.report:  # the maps with the base weights, before training changes them in place
        from .visual import sample_with_maps

        prompt, objects = source.draw(0, 1, config.seed)[0]
        groups = find_token_indices(pipe.tokenizer, prompt, objects)
        image, maps, _ = sample_with_maps(pipe, prompt, groups, config.seed, args.report_steps, REPORT_GUIDANCE)
    started = time.perf_counter()
    result = finetune(pipe, source, config, out_dir=args.out, base_model=args.model,
                      progress=not args.no_progress, cuda_graph=not args.no_cuda_graph)
    last = result.history[-1] if result.history else {}
    print(f"wrote {result.checkpoint} ({config.steps} steps, {time.perf_counter() - started:.1f} s; "
          f"last losses: {', '.join(f'{k}={v:.4f}' for k, v in last.items() if k != 'step' and v != '')})")
    if args.report:
        from .visual import write_training_report

        page = write_training_report(args.out, pipe, prompt, objects, groups, {"image": image, "maps": maps},
                                     args.report_steps, REPORT_GUIDANCE, seed=config.seed)
        print(f"wrote {page}")
    return 0


def cmd_sample(args) -> int:
    from .backbones import denoiser
    from .checkpoint import apply_delta
    from .models import load_pipeline
    from .sampling import generate, parse_seeds

    import torch

    seeds = parse_seeds(args.seeds)
    if args.generator_device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--generator-device cuda: this machine has no CUDA GPU; use --generator-device cpu")
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    if args.delta is not None:
        apply_delta(denoiser(pipe), args.delta)  # the UNet, or SD3's transformer
    pipe.set_progress_bar_config(disable=False)
    args.out.mkdir(parents=True, exist_ok=True)
    images = generate(pipe, args.prompt, seeds, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      batch_size=args.batch_size, generator_device=args.generator_device)
    for seed, image in zip(seeds, images, strict=True):
        image.save(args.out / f"seed{seed:04d}.png")
    print(f"wrote {len(images)} images to {args.out}")
    return 0


def cmd_tiny_model(args) -> int:
    from .models import write_tiny_model

    write_tiny_model(args.out, arch=args.arch, seed=args.seed)
    print(f"wrote a random {args.arch} pipeline to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr("sae")
    from .checkpoint import CheckpointError
    from .finetune import TrainingDivergedError
    from .models import ModelNotFoundError

    handlers = {"train": cmd_train, "sample": cmd_sample, "tiny-model": cmd_tiny_model}
    return run_command(handlers[args.command], args,
                       (ModelNotFoundError, CheckpointError, TrainingDivergedError, ValueError, FileNotFoundError))


INTERRUPTED = "interrupted: what was written stays; run the same command again to resume"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes (a test's capture, a redirected stream)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(_LevelFormatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return prefix + record.getMessage()


def log_to_stderr(*names: str) -> None:
    """The commands' messages (notes and warnings of the libraries' loggers `names`) on stderr, one line each;
    progress bars stay tqdm's. Called once per command; a second call adds nothing."""
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            logger.addHandler(_StderrHandler())


def run_command(handler, args, refusals: tuple, say=_to_stderr) -> int:
    """A command's errors as one line each (`say`): refusals and OS errors (permissions, a full disk) exit 2,
    Ctrl-C 130; what was written before stays, and the same command resumes."""
    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL):  # `_end_now` of the start
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return handler(args)
    except refusals as err:
        say(f"error: {err}")
        return 2
    except OSError as err:
        say(f"error: {err.strerror or err} ({err.filename or 'no file named'}); what was written stays: fix it and "
            "run the same command again")
        return 2
    except KeyboardInterrupt:
        say(INTERRUPTED)
        return 130


if __name__ == "__main__":
    sys.exit(main())
