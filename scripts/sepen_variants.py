"""SepEn variants beside plain on a prompt suite: any per-prompt finetuning setting, not only the CLI's flags.

    python scripts/sepen_variants.py --out /tmp/sep_only --set learning_rate=1e-4 --set lambda_en=0
    python scripts/sepen_variants.py --out /tmp/phrases --set learning_rate=3e-5 --phrases

Runs `plain,sepen` through the benchmark's own `run` (same generation, checkpoint cache and presence metric as
`python -m benchmark run`), with `--set KEY=VALUE` overriding `sae.finetune.FinetuneConfig` fields (lambda_en,
lambda_sep, lambda_norm, latents, timesteps, ...) on top of the model's domain defaults. `--phrases` gives SepEn each
object as its attribute-and-noun phrase ("red circle": the map is the mean of both words' maps) instead of the
noun alone. Defaults: the tuning set of results/shapes/sepen_lr_sweep.md (the shapes model, the first 12 prompts
of `two_object`, seeds 200-203).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pandas as pd

from benchmark.domains import default_model, get_domain, model_domain
from benchmark.generate import RunConfig, run
from benchmark.report import markdown_table
from benchmark.suites import SuitePrompt
from sae.sampling import parse_seeds


def setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: latents=samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model()))
    parser.add_argument("--suite", default="two_object")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--seeds", default="200-203")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a FinetuneConfig field for SepEn's per-prompt finetuning (repeatable)")
    parser.add_argument("--phrases", action="store_true", help="objects as attribute-and-noun phrases")
    parser.add_argument("--checkpoint-cache", type=Path, default=Path.home() / ".cache" / "sae" / "checkpoints")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    domain = get_domain(model_domain(args.model))
    defaults = domain.run_defaults
    # SepEn's own option fields stay options; any other FinetuneConfig field goes into its `finetune` dict
    own = {"steps", "learning_rate", "maps", "map_downscale", "latents", "latent_scale", "train_prompt"}
    given = dict(args.set)
    sepen = {**domain.method_options.get("sepen", {}), **{k: v for k, v in given.items() if k in own},
             "finetune": {k: v for k, v in given.items() if k not in own}, "cache": str(args.checkpoint_cache)}
    if args.phrases:  # the phrase is what the detector looks for (SuiteObject.phrase)
        SuitePrompt.object_words = property(lambda item: [o.phrase for o in item.objects])
    out = run(RunConfig(suite=args.suite, model=args.model, methods=["plain", "sepen"],
                        seeds=parse_seeds(args.seeds), limit=args.limit, steps=defaults["steps"],
                        guidance=defaults["guidance"], out=args.out, metrics=["presence"],
                        options={"sepen": sepen}, progress=False))
    print(f"SepEn settings: {sepen}" + (" with phrase objects" if args.phrases else ""))
    print(markdown_table(pd.read_csv(out / "summary.csv")), end="")


if __name__ == "__main__":
    main()
