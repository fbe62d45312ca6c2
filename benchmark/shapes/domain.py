"""The shapes world as a benchmark domain: its suites (`prompts/shapes/`, the natural suites' names), the shipped
model (the embedded default), the world's instruments (exact detector, world CLIP) and its paper recipe.

Run defaults are sized to finish on 2 CPU cores; guidance 3 (with the model's DDPM sampler) was chosen on a
validation seed no result uses (results/shapes/sampler.md). Every method samples alike here (the model never saw
"a photo of ..." captions, hence its SepEn also trains on the suite prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..domains import Domain, PaperRecipe
from ..suites import PROMPTS_DIR
from . import instruments
from .suites import write_suites

NAME = "shapes"
SUITES_DIR = PROMPTS_DIR / "shapes"
MODEL = Path(__file__).resolve().parent / "pretrained"
LARGE_STEPS = 300  # the world's large-scale SepEn checkpoint for the paper's second table


def train_large_checkpoint(model: str, out: Path, method_options: dict, progress: bool) -> Path:
    """SepEn's large-scale training on the world's seen objects (resumed or reused if already in `out`)."""
    from sae.finetune import ConceptPool, FinetuneConfig, finetune
    from sae.models import load_pipeline

    concepts = json.loads((SUITES_DIR / "sepen_large_concepts.json").read_text())
    checkpoint = out / "sepen.safetensors"
    config = FinetuneConfig.large_scale(steps=LARGE_STEPS, learning_rate=method_options["learning_rate"])
    done = out / "done.json"
    if checkpoint.is_file() and done.is_file() and json.loads(done.read_text()) == config.to_dict():
        return checkpoint
    pool = ConceptPool(concepts["train"], connectors=tuple(concepts["connectors"]), template=concepts["template"])
    finetune(load_pipeline(model, device="cpu"), pool, config, out_dir=out, base_model=model, progress=progress)
    done.write_text(json.dumps(config.to_dict()))
    return checkpoint


# GenEval makes 4 images a prompt and its suite is scored by its own rules
GENEVAL_DEFAULTS = {"num_seeds": 4, "metrics": "geneval"}


DOMAIN = Domain(
    name=NAME,
    title="shapes-world suites (the shipped shapes model, the default --model)",
    suites_dir=SUITES_DIR,
    run_defaults={"methods": "plain,attend_excite,sepen", "num_seeds": 2, "steps": 30, "guidance": 3.0,
                  "metrics": "presence,clip,fid", "processes": "auto"},
    release_sampling=False,
    method_options={name: {"steps": 100, "learning_rate": 3e-5, "train_prompt": "suite"}
                    for name in ("sepen", "sepen+ae")},
    paper=PaperRecipe(main_suite="two_object", published=False, out_name=NAME,
                      train_large_checkpoint=train_large_checkpoint),
    suite_descriptions={
        "single_object": "each of the 18 colour x shape objects alone: the quality bar",
        "two_object": "two objects; the held-out pairs (never together in training) in both orders",
        "multi_object": "three objects (one of each shape) and four objects",
        "sepen_large": "pairs of seen-seen, seen-unseen, unseen-unseen objects (large-scale SepEn; unseen: orange, "
                       "purple)",
        "ci": "two prompts of every category, for regression checks",
        "geneval": "GenEval's six tasks in the world's words (score with --metrics geneval: the exact detector)",
    },
    instruments=instruments.INSTRUMENTS,
    unavailable={"blip": "BLIP has no counterpart in the shapes world (a natural-image captioner would judge "
                         "64-pixel shape scenes)"},
    default_model=MODEL,
    suite_defaults={"geneval": GENEVAL_DEFAULTS},
    object_problem=instruments.object_problem,
    write_suites=write_suites,
)
