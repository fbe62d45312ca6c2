"""Generation methods, registered by name: adding one is one class with `name`, `description` and `generate`.

- `plain`: the base pipeline.
- `attend_excite`: Attend-and-Excite on our attention capture (`benchmark.guidance`).
- `sepen`: the base pipeline with a SepEn checkpoint: per prompt, trained through `sae` when the cache has
  none (cached by base weights, prompt, objects and config) or one large-scale checkpoint for all.
- `sepen+ae`: both.
- `sepen_tt`: SepEn's test-time variant (no finetuning; latent updates on Separate + Enhance).
"""

from __future__ import annotations

import logging
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from sae.backbones import EXPERIMENTAL_FAMILIES, METHOD_FAMILIES, denoiser
from safetensors import SafetensorError, safe_open

from sae.checkpoint import (apply_delta, base_fingerprints, check_base_model, check_fits, fingerprint_key, load_delta,
                            require_same_base)
from sae.finetune import (ConceptPair, FinetuneConfig, check_maps_fit, finetune, release_pair_prompt,
                          trainable_projections)
from sae.options import add_flags, flag_fields, flag_name, given_flags, option, same_option
from sae.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, seed_generators
from sae.speed import has_bf16
from sae.tokens import find_token_indices

from .guidance import attend_and_excite, sepen_test_time
from .plugins import load_class
from .records import write_json
from .registry import Registry
from .suites import SuitePrompt

logger = logging.getLogger(__name__)


DEFAULT_CHECKPOINT_CACHE = Path.home() / ".cache" / "sae" / "checkpoints"


@dataclass
class GenerationContext:
    """What every method of a run shares: the pipeline, and swapping trained key weights in and out of its denoiser
    (the UNet, or SD3's transformer; methods that apply checkpoints)."""

    pipe: object
    base_model: str
    progress: bool = True
    _hashes: dict = field(default_factory=dict)
    _base_keys: dict | None = None
    _fingerprint: dict | None = None

    def token_groups(self, item: SuitePrompt) -> list[list[int]]:
        return find_token_indices(self.pipe.tokenizer, item.prompt, item.object_words)

    def plain_images(self, item: SuitePrompt, seeds: list[int], sampling: dict, **kwargs):
        return self.pipe(prompt=[item.prompt] * len(seeds), generator=seed_generators(seeds),
                         num_inference_steps=sampling["steps"], guidance_scale=sampling["guidance"], **kwargs).images

    # --- the base keys, so that checkpoints can be swapped per prompt and the base restored
    def base_fingerprint(self) -> dict:
        if self._fingerprint is None:
            network = denoiser(self.pipe)
            self._fingerprint = base_fingerprints(network)
            # every text projection a checkpoint may train (k, q or v)
            self._base_keys = {n: p.detach().clone() for n, p in trainable_projections(network).items()}
        return self._fingerprint

    def apply_checkpoint(self, path: Path) -> None:
        """The base keys, then the checkpoint's: its base is checked against the fingerprint taken once per run
        rather than hashing the UNet again for every block."""
        self.restore_base()
        delta = load_delta(path)
        network = denoiser(self.pipe)
        key = fingerprint_key(network)
        require_same_base(delta, self.base_fingerprint()[key], key)
        apply_delta(network, delta, check_base=False)

    def checkpoint_sha256(self, path: Path) -> str:
        """Content hash of a checkpoint (`Delta.digest`, once per path and run), for the image records."""
        if path not in self._hashes:
            self._hashes[path] = load_delta(path).digest()
        return self._hashes[path]

    def restore_base(self) -> None:
        self.base_fingerprint()
        params = dict(denoiser(self.pipe).named_parameters())
        with torch.no_grad():
            for name, value in self._base_keys.items():
                params[name].copy_(value)


class Method:
    """A way of generating images, made with its sampling settings ({"steps", "guidance"}: the run's for this
    method; default its release's) and its options. A method with settings of its own declares them once, as a
    dataclass `Options` whose fields are `sae.options.option(default, "help")`: its defaults are the method's,
    each field with help is also a flag (`--<flag_prefix><field>`) and any field an `--option METHOD.FIELD=V`; a
    run records them per method and resumes only with the same `resume_key`."""

    name = ""
    description = ""
    # Sampling settings of the method's own release, used on natural models unless the run overrides them.
    release_sampling: dict = {}
    Options: type | None = None
    # The model families it runs on (`sae.models.FAMILIES`); None: any text-to-image pipeline. A run on another
    # family is refused before anything is loaded.
    families: tuple[str, ...] | None = None
    # The families where it is an experiment not yet validated on real weights: every report of a run on one says so
    experimental_families: tuple[str, ...] = ()

    def __init__(self, sampling: dict | None = None, **options):
        self.sampling = {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, **self.release_sampling,
                         **(sampling or {})}
        if self.Options is None:
            if options:
                raise ValueError(f"method {self.name} takes no options, got {', '.join(sorted(options))}")
            self.options = None
            return
        known = {f.name for f in fields(self.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"method {self.name} has no option {', '.join(unknown)}: its options are "
                             f"{', '.join(sorted(known))}")
        self.options = self.Options(**options)

    @classmethod
    def flag_prefix(cls) -> str:
        """What its options' flags begin with (methods sharing an `Options` class share their flags)."""
        return cls.name.replace("_", "-") + "-"

    @classmethod
    def add_arguments(cls, parser, title: str | None = None) -> None:
        """Command-line flags of this method's options, from the fields of `Options` declared with help."""
        if cls.Options is not None and flag_fields(cls.Options):
            group = parser.add_argument_group(title or f"{cls.name} options")
            add_flags(group, cls.Options, cls.flag_prefix(), dest_prefix=cls.Options.__name__ + ".")

    @classmethod
    def options_from_args(cls, args) -> dict:
        """The options the flags of `add_arguments` gave (those left out: not in the dict)."""
        return given_flags(cls.Options, args, cls.Options.__name__ + ".") if cls.Options is not None else {}

    def options_record(self) -> dict:
        """The options as the run folder records them (JSON)."""
        return json.loads(json.dumps(asdict(self.options), default=str)) if self.options is not None else {}

    def resume_key(self) -> dict:
        """What changes this method's images beyond the model and sampling: a run folder holds one value."""
        return self.options_record()

    def settings_note(self) -> str:
        """One phrase for the summary's settings table: the options that differ from their defaults, or ""."""
        if self.options is None:
            return ""
        defaults = self.Options()
        return ", ".join(f"{f.name}={getattr(self.options, f.name)}" for f in fields(self.Options)
                         if getattr(self.options, f.name) != getattr(defaults, f.name))

    def check(self, context: GenerationContext) -> None:
        """Raise ValueError on settings this method cannot run with; called before any work."""

    def prepare(self, context: GenerationContext, prompts: list[SuitePrompt]) -> list[dict]:
        """One-off work before generating (e.g. training checkpoints); returns its cost per prompt as rows
        {"prompt_id", "seconds", "cached"} and, where prompts share the work, its "checkpoint" (counted once)
        (empty: no one-off cost)."""
        return []

    def checkpoint_path(self, context: GenerationContext, item: SuitePrompt) -> Path | None:
        """The checkpoint this method applies for `item`, or None (it applies none)."""
        return None

    def images_key(self, item: SuitePrompt) -> str:
        """What this method's images of `item` depend on besides the seeds and the run's settings: its prompt and
        objects, not its id or category. A run makes the images of suite lines with equal keys once (GenEval's
        colour task repeats single-object prompts); a method that reads more of the line returns more."""
        return json.dumps([item.prompt, [vars(o) for o in item.objects]], sort_keys=True)

    def generate(self, context: GenerationContext, item: SuitePrompt, seeds: list[int]) -> list:
        raise NotImplementedError


# the methods below, and those of installed packages (entry points "benchmark.methods")
METHODS = Registry("method", "benchmark.methods")


def register_method(cls: type[Method]) -> type[Method]:
    return METHODS.add(cls)


def method_class(spec: str) -> type[Method]:
    """A registered name, or `package.module:ClassName` (a method of your own)."""
    if spec in METHODS:
        return METHODS[spec]
    if ":" in spec:
        cls = load_class(spec, "method")
        if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name):
            raise ValueError(f"{spec!r} is not a benchmark Method with a name")
        return cls
    raise ValueError(f"unknown method {spec!r}: choose from {', '.join(METHODS)} (`python -m benchmark ls methods`) "
                     "or name one as module:Class")


def get_method(spec: str, options: dict | None = None, sampling: dict | None = None) -> Method:
    return method_class(spec)(sampling, **(options or {}))


@register_method
class Plain(Method):
    name = "plain"
    description = "the base pipeline"
    release_sampling = {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE}  # SD's and A&E's baseline

    def generate(self, context, item, seeds):
        return context.plain_images(item, seeds, self.sampling)


@register_method
class AttendExcite(Method):
    name = "attend_excite"
    families = METHOD_FAMILIES  # the families whose text attention it reads (docs/backbones.md)
    experimental_families = EXPERIMENTAL_FAMILIES
    description = "Attend-and-Excite: latent updates on max_k(1 - max A_k) in the first 25 of 50 steps"
    release_sampling = {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE}  # Attend-and-Excite's release

    def generate(self, context, item, seeds):
        steps = self.sampling["steps"]
        return attend_and_excite(steps).generate(context.pipe, item.prompt, context.token_groups(item),
                                                 seed_generators(seeds), steps, self.sampling["guidance"])


TRAIN_PROMPTS = ("release", "suite")
PRECISIONS = ("auto", "no", "bf16", "fp16")


@contextmanager
def weights_in_float32(pipe, when: bool = True):
    """A half-precision pipeline's weights in float32 while SepEn trains on it, as `sae train` loads them (the
    trained keys must be fp32; autocast then computes in bf16 on a GPU), and back in the run's precision after:
    a half value cast up and down is itself, so the base weights come back unchanged."""
    dtype = pipe.dtype
    if not when or dtype == torch.float32:
        yield pipe
        return
    pipe.to(torch.float32)
    try:
        yield pipe
    finally:
        pipe.to(dtype)


def training_prompt(item: SuitePrompt, mode: str = "suite") -> str:
    """What per-prompt SepEn trains on: the suite prompt, or the release's "a photo of {c1} and {c2}" with the
    object names as its scripts pass them ("a photo of bear and book": no articles, no colour words). Counted
    objects ("two cats") have no such form: their suite prompt."""
    if mode not in TRAIN_PROMPTS:
        raise ValueError(f"SepEn training prompt must be one of {TRAIN_PROMPTS}, got {mode!r}")
    if mode == "suite" or any(o.count != 1 for o in item.objects):
        return item.prompt
    return release_pair_prompt(item.object_words)


def checkpoint_key(fingerprint: dict, item: SuitePrompt, config: FinetuneConfig, train_prompt: str = "suite") -> str:
    """Cache key of a per-prompt checkpoint: base weights, training prompt (and its rule), objects, config."""
    blob = json.dumps({"base": fingerprint["float16"], "prompt": training_prompt(item, train_prompt),
                       "train_prompt": train_prompt, "objects": item.object_words, "config": config.to_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def training_lock(folder: Path):
    """One process trains a cached checkpoint at a time; the others wait, then find it finished."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".train.lock"):
        yield


def heal_cached_checkpoint(path: Path) -> None:
    """A cached checkpoint that cannot be read (a copy cut short, a damaged disk) is moved aside with its folder,
    in one line, so that it is trained again rather than failing every run that needs it."""
    if not path.exists():
        return
    with training_lock(path.parent):
        if not path.exists():  # moved aside meanwhile by another process
            return
        try:
            with safe_open(path, "pt"):  # the header and the file's length only: a copy cut short fails here
                return
        except (SafetensorError, OSError) as err:
            reason = str(err)
        aside = path.parent.with_name(path.parent.name + ".damaged")
        number = 1
        while aside.exists():
            number += 1
            aside = path.parent.with_name(f"{path.parent.name}.damaged{number}")
        path.parent.rename(aside)
    logger.warning(f"cached SepEn checkpoint {path} cannot be read ({reason}); moved aside to {aside.name} and "
                   "trained again")


@dataclass
class SepEnOptions:
    """SepEn's settings in a run: the per-prompt finetuning (defaults: `FinetuneConfig`'s, the paper's per-pair
    run), what it trains on, and where checkpoints live. `checkpoint`: one large-scale checkpoint for every
    prompt instead of per-prompt finetuning."""

    steps: int = same_option(FinetuneConfig, "steps", help="per-prompt finetuning steps", shown_default=None)
    learning_rate: float = same_option(FinetuneConfig, "learning_rate", help="per-prompt finetuning learning rate",
                                       shown_default=None)
    maps: str = same_option(FinetuneConfig, "maps")
    map_downscale: int = same_option(FinetuneConfig, "map_downscale")
    latents: str = same_option(FinetuneConfig, "latents", help="what per-prompt finetuning noises: noise (Gaussian "
                               "latents, the paper) or samples (the base model's own samples of the prompt, at the "
                               "run's steps and guidance)")
    latent_scale: str | float = same_option(FinetuneConfig, "latent_scale")
    # the release's "a photo of {c1} and {c2}", or "suite": the suite prompt
    train_prompt: str = option("release", "what per-prompt SepEn trains on: the release's 'a photo of {c1} and {c2}' "
                                          "or the suite prompt itself", choices=TRAIN_PROMPTS)
    checkpoint: str | None = option(None, "a large-scale SepEn checkpoint used for every prompt")
    cache: str = option(str(DEFAULT_CHECKPOINT_CACHE), "where per-prompt SepEn checkpoints are cached and reused",
                        flag="--checkpoint-cache")
    training_precision: str = option("auto", "per-prompt finetuning's autocast: auto (bf16 with the CUDA graph on "
                                             "a GPU, as `sae train --mixed-precision bf16`; none on the CPU), no, "
                                             "bf16 or fp16; the trained keys are fp32 in every case",
                                     choices=PRECISIONS)
    finetune: dict = field(default_factory=dict)  # any other `FinetuneConfig` field, e.g. {"batch_size": 1}

    def __post_init__(self):
        if self.train_prompt not in TRAIN_PROMPTS:
            raise ValueError(f"SepEn training prompt must be one of {TRAIN_PROMPTS}, got {self.train_prompt!r}")
        if self.checkpoint is not None and not str(self.checkpoint).strip():
            raise ValueError("SepEn checkpoint is empty: pass a .safetensors file, or leave it out to finetune per "
                             "prompt")
        try:  # the finetuning settings are checked now, before any model is loaded or anything written
            self.finetune_config()
        except ValueError as err:
            raise ValueError(f"SepEn: {err}") from None

    def finetune_config(self, sampling: dict | None = None, device: str = "cpu") -> FinetuneConfig:
        """Per-prompt finetuning settings. With latents="samples" the samples are drawn with the run's `sampling`
        (steps, guidance); otherwise those stay out, so that a run with other sampling reuses the checkpoints."""
        precision = self.training_precision
        if precision == "auto":  # bf16 where the GPU has it (Ampere and later), else fp32
            precision = "bf16" if has_bf16(device) else "no"
        fields_ = {"mixed_precision": precision, "steps": self.steps, "learning_rate": self.learning_rate,
                   "maps": self.maps, "map_downscale": self.map_downscale, "latents": self.latents,
                   "latent_scale": self.latent_scale}
        if self.latents == "samples" and sampling is not None:
            fields_.update(sample_steps=sampling["steps"], sample_guidance=sampling["guidance"])
        try:
            return FinetuneConfig(**{**fields_, **self.finetune})
        except TypeError as err:
            raise ValueError(f"option finetune={self.finetune}: {err}") from None


@register_method
class SepEn(Method):
    name = "sepen"
    families = METHOD_FAMILIES  # the families whose text attention it reads (docs/backbones.md)
    experimental_families = EXPERIMENTAL_FAMILIES
    description = "the base pipeline with SepEn-finetuned keys (per prompt, trained and cached, or large-scale)"
    release_sampling = {"steps": DEFAULT_STEPS, "guidance": 6.0}  # the SepEn release's sampling script
    use_attend_excite = False
    Options = SepEnOptions

    def __init__(self, sampling: dict | None = None, **options):
        super().__init__(sampling, **options)
        self.checkpoint_sha256: str | None = None  # of the large-scale checkpoint, once checked
        self.device = "cpu"  # the pipeline's device, once the run has one (`check`)

    @classmethod
    def flag_prefix(cls) -> str:
        return "sepen-"  # shared with sepen+ae

    def finetune_config(self) -> FinetuneConfig:
        """Per-prompt finetuning settings. With latents="samples" the samples are drawn with the run's steps and
        guidance; otherwise those stay out, so that a run with other sampling reuses the cached checkpoints. The
        autocast follows the device the run's pipeline is on (its precision is part of the cache key)."""
        return self.options.finetune_config(self.sampling, self.device)

    def resume_key(self) -> dict:
        if self.options.checkpoint is not None:
            return {"checkpoint_sha256": self.checkpoint_sha256}
        return {"finetune": self.finetune_config().to_dict(), "train_prompt": self.options.train_prompt}

    def settings_note(self) -> str:
        return "large-scale checkpoint" if self.options.checkpoint else self.options.train_prompt

    def checkpoint_path(self, context: GenerationContext, item: SuitePrompt) -> Path:
        self.device = str(context.pipe.device)
        if self.options.checkpoint is not None:
            return Path(self.options.checkpoint)
        key = checkpoint_key(context.base_fingerprint(), item, self.finetune_config(), self.options.train_prompt)
        return Path(self.options.cache).expanduser() / key / "sepen.safetensors"

    def check(self, context):
        self.device = str(context.pipe.device)  # what per-prompt finetuning runs on (its precision)
        if self.options.checkpoint is not None:  # shapes, finiteness and base weights, before any image
            path = Path(self.options.checkpoint)
            delta = load_delta(path)
            check_fits(denoiser(context.pipe), delta)
            check_base_model(denoiser(context.pipe), delta)
            self.checkpoint_sha256 = delta.digest()
            return
        try:  # the maps per-prompt finetuning reads fit the model (a UNet's resolution, a transformer's blocks)
            check_maps_fit(denoiser(context.pipe), self.finetune_config())
        except ValueError as err:  # named by its flag ("map_downscale 16: ..." -> "--sepen-map-downscale 16: ...")
            setting, _, rest = str(err).partition(" ")
            flags = {f.name: flag_name(f, self.flag_prefix()) for f in flag_fields(SepEnOptions)}
            raise ValueError(f"{flags.get(setting, 'SepEn ' + setting)} {rest}") from None

    def prepare(self, context, prompts):
        if self.options.checkpoint is not None:
            return []
        for path in {self.checkpoint_path(context, p) for p in prompts}:
            heal_cached_checkpoint(path)
        config = self.finetune_config()
        # one per checkpoint: prompts with the same training prompt and objects share theirs
        missing = list({self.checkpoint_path(context, p): p for p in prompts
                        if not self.checkpoint_path(context, p).exists()}.values())
        with weights_in_float32(context.pipe, bool(missing)):
            self._train(context, missing, config)
        context.restore_base()
        trained = {self.checkpoint_path(context, item).parent for item in missing}
        costs = []  # every prompt's checkpoint, trained now or found in the cache
        for item in prompts:
            info = self.checkpoint_path(context, item).parent / "prompt.json"
            if info.exists():
                costs.append({"prompt_id": item.id, "seconds": json.loads(info.read_text())["seconds"],
                              "cached": info.parent not in trained, "checkpoint": info.parent.name})
        return costs

    def _train(self, context, missing: list[SuitePrompt], config: FinetuneConfig) -> None:
        """The per-prompt checkpoints not in the cache, each by one process (the others wait, then find it)."""
        for item in tqdm(missing, desc="SepEn checkpoints", disable=not context.progress or not missing):
            out = self.checkpoint_path(context, item).parent
            with training_lock(out):
                if self.checkpoint_path(context, item).exists():
                    continue  # trained meanwhile by another process (a rank of the same run, `sepen+ae`)
                context.restore_base()
                started = time.perf_counter()
                prompt = training_prompt(item, self.options.train_prompt)
                finetune(context.pipe, ConceptPair(prompt, item.object_words), config, out_dir=out,
                         base_model=context.base_model, progress=False)
                write_json(out / "prompt.json", {"prompt": prompt, "objects": item.object_words,
                                                 "train_prompt": self.options.train_prompt,
                                                 "seconds": time.perf_counter() - started}, indent=None)

    def generate(self, context, item, seeds):
        context.apply_checkpoint(self.checkpoint_path(context, item))
        try:
            if self.use_attend_excite:
                return AttendExcite(self.sampling).generate(context, item, seeds)
            return context.plain_images(item, seeds, self.sampling)
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
    families = METHOD_FAMILIES  # the families whose text attention it reads (docs/backbones.md)
    experimental_families = EXPERIMENTAL_FAMILIES
    description = "SepEn test-time variant: latent updates on Separate + Enhance in the first 25 of 50 steps"
    release_sampling = {"steps": DEFAULT_STEPS, "guidance": 6.0}  # sampled as the SepEn release samples

    def generate(self, context, item, seeds):
        config = FinetuneConfig()  # the losses' weights and kernel, as per-prompt finetuning uses them
        steps = self.sampling["steps"]
        return sepen_test_time(config.lambda_sep, config.lambda_en, steps, smoothing=config.smoothing).generate(
            context.pipe, item.prompt, context.token_groups(item), seed_generators(seeds), steps,
            self.sampling["guidance"])
