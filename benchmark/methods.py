"""Generation methods, registered by name: adding one is one class with `name`, `description` and `generate`.

- `plain`: the base pipeline.
- `attend_excite`: Attend-and-Excite on our attention capture (`benchmark.guidance`).
- `sepen`: the base pipeline with a SepEn checkpoint: per prompt, trained through `sae` when the cache has
  none (cached by base weights, prompt, objects and config) or one large-scale checkpoint for all.
- `sepen+ae`: both.
- `sepen_tt`: SepEn's test-time variant (no finetuning; latent updates on Separate + Enhance).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae.attention import cross_attention_layers
from sae.checkpoint import apply_delta, base_fingerprints, fingerprint_key, load_delta, require_same_base
from sae.finetune import ConceptPair, FinetuneConfig, finetune, release_pair_prompt, trainable_parameters
from sae.sampling import seed_generators
from sae.tokens import find_token_indices

from .guidance import attend_and_excite, sepen_test_time
from .records import file_sha256
from .suites import SuitePrompt


@dataclass
class GenerationContext:
    """What every method needs: the pipeline and the run's sampling and SepEn settings."""

    pipe: object
    base_model: str
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    sepen_config: FinetuneConfig = field(default_factory=FinetuneConfig)
    checkpoint_cache: Path = Path("runs/checkpoints")
    sepen_checkpoint: Path | None = None  # a large-scale checkpoint used for every prompt
    sepen_train_prompt: str = "suite"  # per-prompt training on the suite prompt or the release's template
    progress: bool = True
    finetune_seconds: dict = field(default_factory=dict)  # prompt id -> seconds spent training (this run)
    _hashes: dict = field(default_factory=dict)
    _base_keys: dict | None = None
    _fingerprint: dict | None = None

    def token_groups(self, item: SuitePrompt) -> list[list[int]]:
        return find_token_indices(self.pipe.tokenizer, item.prompt, item.object_words)

    def plain_images(self, item: SuitePrompt, seeds: list[int], **kwargs):
        return self.pipe(prompt=[item.prompt] * len(seeds), generator=seed_generators(seeds),
                         num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                         **kwargs).images

    # --- the base keys, so that checkpoints can be swapped per prompt and the base restored
    def base_fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = base_fingerprints(self.pipe.unet)
            self._base_keys = {n: p.detach().clone() for n, p in
                               trainable_parameters(self.pipe.unet, self.sepen_config.projection).items()}
        return self._fingerprint

    def apply_checkpoint(self, path: Path) -> None:
        """The base keys, then the checkpoint's: its base is checked against the fingerprint taken once per run
        rather than hashing the UNet again for every block."""
        self.restore_base()
        delta = load_delta(path)
        key = fingerprint_key(self.pipe.unet)
        require_same_base(delta, self.base_fingerprint()[key], key)
        apply_delta(self.pipe.unet, delta, check_base=False)

    def checkpoint_sha256(self, path: Path) -> str:
        """Content hash of a checkpoint file (once per path and run), for the image records."""
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        return self._hashes[path]

    def restore_base(self) -> None:
        self.base_fingerprint()
        params = dict(self.pipe.unet.named_parameters())
        with torch.no_grad():
            for name, value in self._base_keys.items():
                params[name].copy_(value)


class Method:
    name = ""
    description = ""
    # Sampling settings of the method's own release, used on natural models unless the run overrides them.
    release_sampling: dict = {}

    def check(self, context: GenerationContext) -> None:
        """Raise ValueError on settings this method cannot run with; called before any work."""

    def prepare(self, context: GenerationContext, prompts: list[SuitePrompt]) -> None:
        """One-off work before generating (e.g. training checkpoints)."""

    def checkpoint_path(self, context: GenerationContext, item: SuitePrompt) -> Path | None:
        """The SepEn checkpoint this method applies for `item`, or None (it applies none)."""
        return None

    def generate(self, context: GenerationContext, item: SuitePrompt, seeds: list[int]) -> list:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)} (`python -m benchmark ls methods`)")
    return METHODS[name]()


@register_method
class Plain(Method):
    name = "plain"
    description = "the base pipeline"
    release_sampling = {"steps": 50, "guidance": 7.5}  # Stable Diffusion's and Attend-and-Excite's baseline

    def generate(self, context, item, seeds):
        return context.plain_images(item, seeds)


@register_method
class AttendExcite(Method):
    name = "attend_excite"
    description = "Attend-and-Excite: latent updates on max_k(1 - max A_k) in the first 25 of 50 steps"
    release_sampling = {"steps": 50, "guidance": 7.5}  # Attend-and-Excite's release

    def generate(self, context, item, seeds):
        return attend_and_excite(context.num_inference_steps).generate(context.pipe, item.prompt, context.token_groups(item),
                                            seed_generators(seeds), context.num_inference_steps,
                                            context.guidance_scale)


TRAIN_PROMPTS = ("release", "suite")


def training_prompt(item: SuitePrompt, mode: str = "suite") -> str:
    """What per-prompt SepEn trains on: the suite prompt, or the release's "a photo of {c1} and {c2}" with each
    object's phrase (attribute and name). Counted objects ("two cats") have no such phrase: their suite prompt."""
    if mode not in TRAIN_PROMPTS:
        raise ValueError(f"SepEn training prompt must be one of {TRAIN_PROMPTS}, got {mode!r}")
    if mode == "suite" or any(o.count != 1 for o in item.objects):
        return item.prompt
    return release_pair_prompt([f"{o.attribute} {o.name}" if o.attribute else o.name for o in item.objects])


def checkpoint_key(fingerprint: dict, item: SuitePrompt, config: FinetuneConfig, train_prompt: str = "suite") -> str:
    """Cache key of a per-prompt checkpoint: base weights, training prompt (and its rule), objects, config."""
    blob = json.dumps({"base": fingerprint["float16"], "prompt": training_prompt(item, train_prompt),
                       "train_prompt": train_prompt, "objects": item.object_words, "config": config.to_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@register_method
class SepEn(Method):
    name = "sepen"
    description = "the base pipeline with SepEn-finetuned keys (per prompt, trained and cached, or large-scale)"
    release_sampling = {"steps": 50, "guidance": 6.0}  # the SepEn release's sampling script
    use_attend_excite = False

    def checkpoint_path(self, context: GenerationContext, item: SuitePrompt) -> Path:
        if context.sepen_checkpoint is not None:
            return context.sepen_checkpoint
        key = checkpoint_key(context.base_fingerprint(), item, context.sepen_config, context.sepen_train_prompt)
        return context.checkpoint_cache / key / "sepen.safetensors"

    def check(self, context):
        if context.sepen_checkpoint is None:  # per-prompt finetuning reads the maps at this size
            try:
                cross_attention_layers(context.pipe.unet, context.sepen_config.map_downscale)
            except ValueError as err:
                raise ValueError(f"--sepen-map-downscale {context.sepen_config.map_downscale}: {err}") from None

    def prepare(self, context, prompts):
        if context.sepen_checkpoint is not None:
            load_delta(context.sepen_checkpoint)  # fail early on an unreadable file
            return
        missing = [p for p in prompts if not self.checkpoint_path(context, p).exists()]
        for item in tqdm(missing, desc="SepEn checkpoints", disable=not context.progress or not missing):
            out = self.checkpoint_path(context, item).parent
            context.restore_base()
            started = time.perf_counter()
            prompt = training_prompt(item, context.sepen_train_prompt)
            finetune(context.pipe, ConceptPair(prompt, item.object_words), context.sepen_config, out_dir=out,
                     base_model=context.base_model, progress=False)
            context.finetune_seconds[item.id] = time.perf_counter() - started
            (out / "prompt.json").write_text(json.dumps({"prompt": prompt, "objects": item.object_words,
                                                         "train_prompt": context.sepen_train_prompt,
                                                         "seconds": context.finetune_seconds[item.id]}))
        context.restore_base()

    def generate(self, context, item, seeds):
        context.apply_checkpoint(self.checkpoint_path(context, item))
        try:
            if self.use_attend_excite:
                return AttendExcite().generate(context, item, seeds)
            return context.plain_images(item, seeds)
        finally:
            context.restore_base()


@register_method
class SepEnAttendExcite(SepEn):
    name = "sepen+ae"
    description = "SepEn checkpoint and Attend-and-Excite together"
    use_attend_excite = True


@register_method
class SepEnTestTime(Method):
    name = "sepen_tt"
    description = "SepEn test-time variant: latent updates on Separate + Enhance in the first 25 of 50 steps"
    release_sampling = {"steps": 50, "guidance": 6.0}  # sampled as the SepEn release samples

    def generate(self, context, item, seeds):
        config = context.sepen_config
        return sepen_test_time(config.lambda_sep, config.lambda_en, context.num_inference_steps,
                               smoothing=config.smoothing).generate(
            context.pipe, item.prompt, context.token_groups(item), seed_generators(seeds),
            context.num_inference_steps, context.guidance_scale)
