"""A run's settings (`RunConfig`): resolved once from the command line and the defaults (`RunConfig.resolve`),
checked before anything is loaded or written (`validate`, `preflight`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sae.models import check_model_folder, model_family, resolve_device
from sae.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

from .domains import default_model, get_domain, model_domain
from .metrics import metric_class
from .run_folder import RunError, check_suite_matches
from .suites import SuitePrompt, load_suite


def split_names(text: str) -> list[str]:
    """A comma-separated list of names ("plain,sepen")."""
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class RunConfig:
    """Everything a run needs, as `run_config.json` records it. Build it with `resolve` (the commands do), or
    whole by hand (tests, scripts): `sampling` then holds each method's steps and guidance."""

    suite: str
    model: str
    methods: list[str] = field(default_factory=lambda: ["plain"])
    seeds: list[int] = field(default_factory=lambda: list(range(4)))
    limit: int | None = None
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    batch_size: int = 4
    out: Path = Path("runs/run")
    device: str = "auto"
    metrics: list[str] = field(default_factory=list)
    metric_models: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)  # method -> {"steps", "guidance"}; others: steps and guidance
    options: dict = field(default_factory=dict)  # method -> its options (`Method.Options` fields)
    progress: bool = True
    html: bool = False  # write the HTML report (`report/`) at the end; the CLI's default is on
    attention_prompts: int = 2  # prompts of the report's attention-map page
    # the pipeline's precision (`resolve`: float16 on CUDA, the release's, float32 elsewhere); changes images
    dtype: str = "float32"

    @classmethod
    def resolve(cls, suite: str, model: str | None = None, *, methods: list[str] | None = None,
                seeds: list[int] | None = None, num_seeds: int | None = None, steps: int | None = None,
                guidance: float | None = None, per_method: dict | None = None, options: dict | None = None,
                metrics: list[str] | None = None, dtype: str | None = None, **settings) -> RunConfig:
        """A run's settings from what the user gave (None: not given) and the defaults, each taken from its one
        place: the model's domain (its run defaults and its suite's, its method options), then on natural models
        each method's own release sampling (`Method.release_sampling`), then what was given: `steps`/`guidance`
        for every method, `per_method` {method: {"steps", "guidance"}} for some, `options` {method: {field:
        value}}; `dtype` None or "auto": float16 on CUDA (the SepEn release samples so), float32 elsewhere (the
        CPU's images bit for bit). `benchmark run` and `benchmark paper` both build their runs here; `settings`
        are the other fields (out, device, batch_size, ...)."""
        from .methods import method_class

        model = str(model or default_model())
        domain = get_domain(model_domain(model))
        defaults = domain.defaults_for(suite)
        methods = methods if methods is not None else split_names(defaults["methods"])
        classes = {name: method_class(name) for name in methods}  # an unknown name fails here, before anything
        per_method, options = per_method or {}, options or {}
        for what, named in (("--steps/--guidance", per_method), ("--option", options)):
            stray = sorted(set(named) - set(methods))
            if stray:
                raise RunError(f"{what} name {', '.join(stray)}, not a method of this run ({', '.join(methods)})")
        common = {"steps": defaults["steps"] if steps is None else steps,
                  "guidance": defaults["guidance"] if guidance is None else guidance}
        given = {key: value for key, value in (("steps", steps), ("guidance", guidance)) if value is not None}
        # a value given (for one method or all) beats the method's release settings, which beat the domain's
        sampling = {name: {**common, **(dict(cls.release_sampling) if domain.release_sampling else {}), **given,
                           **per_method.get(name, {})} for name, cls in classes.items()}
        options = {name: {**domain.method_options.get(cls.name, {}), **options.get(name, {})}
                   for name, cls in classes.items()}
        if num_seeds is not None and num_seeds < 1:
            raise RunError(f"--num-seeds {num_seeds}: give N >= 1")
        if seeds is None:
            seeds = list(range(defaults["num_seeds"] if num_seeds is None else num_seeds))
        if dtype in (None, "auto"):
            dtype = "float16" if _device_type(settings.get("device", "auto")) == "cuda" else "float32"
        return cls(suite=suite, model=model, methods=methods, seeds=seeds, steps=common["steps"],
                   guidance=common["guidance"], sampling=sampling, options={n: o for n, o in options.items() if o},
                   metrics=split_names(defaults["metrics"]) if metrics is None else metrics, dtype=dtype, **settings)

    def to_json(self) -> dict:
        data = asdict(self)
        return json.loads(json.dumps(data, default=str))

    def sampling_of(self, method: str) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, **self.sampling.get(method, {})}

    def build_methods(self) -> list:
        """The run's methods, each with its options and its sampling."""
        from .methods import get_method

        return [get_method(name, self.options.get(name), self.sampling_of(name)) for name in self.methods]

    def validate(self) -> None:
        """Refuse numbers no run can use, before anything is loaded or written."""
        _check_device(self.device)
        if not self.methods:
            raise RunError("--methods names no method: give one or more (`python -m benchmark ls methods`)")
        if self.attention_prompts < 0:
            raise RunError(f"--attention-prompts {self.attention_prompts}: give N >= 0")
        if not self.seeds:
            raise RunError("no seeds: give --seeds (e.g. 0-3) or --num-seeds N with N >= 1")
        if any(int(seed) < 0 for seed in self.seeds):
            raise RunError("seeds must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise RunError(f"--limit {self.limit}: give N >= 1 prompts, or leave it out for the whole suite")
        if self.batch_size != AUTO and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                        or self.batch_size < 1):
            raise RunError(f"--batch-size {self.batch_size}: give N >= 1 images per pipeline call, or auto")
        if self.dtype not in DTYPE_NAMES:
            raise RunError(f"--dtype {self.dtype}: give one of {', '.join(DTYPE_NAMES)} (or auto)")
        if self.dtype == "float16" and _device_type(self.device) != "cuda":
            raise RunError(f"--dtype float16 on {self.device}: half precision runs on CUDA GPUs; give float32 or "
                           "bfloat16 here")
        for method in self.methods:
            sampling = self.sampling_of(method)
            if not 1 <= int(sampling["steps"]) <= MAX_STEPS:
                raise RunError(f"--steps {sampling['steps']} for {method}: give 1 to {MAX_STEPS} denoising steps "
                               "(the schedulers' training timesteps)")
            guidance = float(sampling["guidance"])
            if not (0 <= guidance <= MAX_GUIDANCE):  # also NaN
                raise RunError(f"--guidance {sampling['guidance']} for {method}: give a scale from 0 to "
                               f"{MAX_GUIDANCE:g}")

    def preflight(self) -> tuple[list[SuitePrompt], list]:
        """Every refusal that needs no model (the numbers, the device, the suite, the methods and their options,
        the metrics), before anything is loaded or written; returns the prompts and the methods. `benchmark run`
        calls it before it starts itself again as several processes, so that a refusal is one line from one
        process; `run` calls it first."""
        self.validate()
        if Path(self.model).expanduser().is_dir():
            check_model_folder(Path(self.model).expanduser())
        domain = get_domain(model_domain(self.model))
        prompts = load_suite(self.suite, domain.suites_dir, domain.object_problem)
        if self.limit is not None:
            prompts = prompts[:self.limit]
        methods = self.build_methods()
        check_families(self.model, methods)
        for name in self.metrics:  # an unknown metric, or suite lines a metric cannot read
            metric_class(name).check_prompts(prompts)
        check_suite_matches(Path(self.out), self.suite, prompts)
        return prompts, methods


DTYPE_NAMES = ("float32", "float16", "bfloat16")
AUTO = "auto"  # --batch-size auto: the largest batch the GPU's memory holds (`generate.fitting_batch_size`)


def _device_type(device: str) -> str:
    try:
        return resolve_device(device).type
    except RuntimeError:  # named in validate()
        return "cpu"


MAX_STEPS = 1000  # a diffusers scheduler cannot take more inference steps than its 1000 training timesteps
MAX_GUIDANCE = 100.0  # classifier-free guidance past this makes saturated noise, not images


def _check_device(device: str) -> None:
    try:
        resolved = resolve_device(device)
    except RuntimeError:  # torch's own message for "nonsense" is a paragraph
        raise RunError(f"--device {device!r}: not a device; give auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device}: this machine has no CUDA GPU; give --device cpu (or auto)")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise RunError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise RunError(f"--device {device}: give auto, cpu, cuda or cuda:N")


def check_families(model: str, methods: list) -> None:
    """Every method runs on the model's family (`Method.families`), or the run is refused before anything loads."""
    family = model_family(model)
    for method in methods:
        if method.families is not None and family not in method.families:
            raise RunError(f"{method.name} runs on {', '.join(method.families)} models, not on {family} ({model}); "
                           f"`python -m benchmark ls methods --model {model}` lists the methods that do")


def batch_size_value(text: str) -> int | str:
    """--batch-size: a whole number, or auto."""
    return text if text == "auto" else int(text)


def add_dtype_argument(parser) -> None:
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="the pipeline's precision; auto: float16 on CUDA (as the SepEn release samples), "
                             "float32 elsewhere (the CPU's images bit for bit); A&E's and SepEn's optimisation "
                             "steps read their maps in float32, SepEn trains fp32 keys (docs/speed.md)")
