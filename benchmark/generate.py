"""`benchmark run`: suite -> jobs -> images -> records -> tables.

Jobs are (method, prompt, seed); each image has its own seeded generator, so its initial noise depends on
its seed alone, and the same command reproduces every image bit for bit on the CPU (another batch size can
move a pixel by one 8-bit level: batched kernels round differently). Finished images are skipped, so a run
stopped at any point and started again completes what is missing and ends as an uninterrupted run would. Under `accelerate launch` the
(method, prompt) units are split across processes without overlap; the main process merges the records.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae.checkpoint import check_base_model, check_fits, load_delta
from sae.finetune import FinetuneConfig
from sae.models import load_pipeline
from sae.tokens import encode_prompt_ids

from .domains import model_domain, prompts_dir
from .methods import GenerationContext, get_method
from .metrics import MetricContext, MetricUnavailable, SetMetric, get_metric, suite_vocabulary
from .records import (append_jsonl, file_sha256, image_path, quarantine_damaged, read_scores, record_key, scan_records,
                      write_image, write_text_atomic)
from .report import write_report
from .suites import SuitePrompt, load_suite

# settings that change an image: a run folder holds images of one value of each
IMAGE_SETTINGS = ("model", "steps", "guidance", "sampling", "sepen", "sepen_train_prompt", "scheduler",
                  "sepen_checkpoint_sha256")
# ... of which older run folders did not record these: compared only where the folder has them
LATER_SETTINGS = ("sampling", "sepen_train_prompt", "scheduler", "sepen_checkpoint_sha256")
LOCK_NAME = ".lock"


class RunError(ValueError):
    """A run that cannot start (bad input); nothing has been written when it is raised."""


@dataclass
class RunConfig:
    suite: str
    model: str
    methods: list[str] = field(default_factory=lambda: ["plain"])
    seeds: list[int] = field(default_factory=lambda: list(range(4)))
    limit: int | None = None
    steps: int = 50
    guidance: float = 7.5
    batch_size: int = 4
    out: Path = Path("runs/run")
    device: str = "auto"
    metrics: list[str] = field(default_factory=list)
    metric_models: dict = field(default_factory=dict)
    sepen: dict = field(default_factory=lambda: {"steps": 200, "learning_rate": 5e-6})
    sepen_train_prompt: str = "suite"  # per-prompt SepEn trains on the suite prompt or the release's template
    sampling: dict = field(default_factory=dict)  # method -> {"steps", "guidance"}; others: steps and guidance
    sepen_checkpoint: str | None = None
    sepen_checkpoint_sha256: str | None = None  # its content, filled in by `run`
    checkpoint_cache: Path = Path.home() / ".cache" / "sae" / "checkpoints"
    progress: bool = True
    html: bool = False  # write the HTML report (`report/`) at the end; the CLI's default is on
    attention_prompts: int = 2  # prompts of the report's attention-map page

    def to_json(self) -> dict:
        data = asdict(self)
        return json.loads(json.dumps(data, default=str))

    def sampling_of(self, method: str) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, **self.sampling.get(method, {})}

    def validate(self) -> None:
        """Refuse numbers no run can use, before anything is loaded or written."""
        if not self.seeds:
            raise RunError("no seeds: give --seeds (e.g. 0-3) or --num-seeds N with N >= 1")
        if any(int(seed) < 0 for seed in self.seeds):
            raise RunError("seeds must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise RunError(f"--limit {self.limit}: give N >= 1 prompts, or leave it out for the whole suite")
        if self.batch_size < 1:
            raise RunError(f"--batch-size {self.batch_size}: give N >= 1 images per pipeline call")
        for method in self.methods:
            sampling = self.sampling_of(method)
            if int(sampling["steps"]) < 1:
                raise RunError(f"--steps {sampling['steps']} for {method}: give N >= 1 denoising steps")
            if float(sampling["guidance"]) < 0:
                raise RunError(f"--guidance {sampling['guidance']} for {method}: give a scale >= 0")


def method_sampling(methods: list[str], steps: int, guidance: float, release: bool,
                    overrides: dict | None = None) -> dict:
    """Each method's {"steps", "guidance"}: a per-method override, else (with `release`) the method's own
    release settings, else the run's `steps` and `guidance`."""
    from .methods import METHODS

    result = {}
    for name in methods:
        own = dict(METHODS[name].release_sampling) if release and name in METHODS else {}
        result[name] = {"steps": steps, "guidance": guidance, **own, **(overrides or {}).get(name, {})}
    return result

def _check_prompts(pipe, prompts: list[SuitePrompt]) -> None:
    """Every prompt fits the text encoder and names its objects: fail before generating anything."""
    from sae.tokens import find_token_indices

    for item in prompts:
        try:
            encode_prompt_ids(pipe.tokenizer, item.prompt)
            find_token_indices(pipe.tokenizer, item.prompt, item.object_words)
        except ValueError as err:
            raise RunError(f"prompt {item.id}: {err}") from err


def _check_run_folder(out: Path, config: RunConfig, scheduler: str) -> None:
    path = out / "run_config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    # the sampler comes with the model folder, so the same --model can sample differently after an edit
    wanted = {**config.to_json(), "scheduler": scheduler}
    keys = [key for key in IMAGE_SETTINGS if key in saved or key not in LATER_SETTINGS]
    # a folder can gain methods: the sampling of the methods it already holds must be the same
    common = set(saved.get("sampling") or {}) & set(wanted["sampling"])
    saved["sampling"] = {m: v for m, v in (saved.get("sampling") or {}).items() if m in common}
    wanted["sampling"] = {m: v for m, v in wanted["sampling"].items() if m in common}
    differ = [key for key in keys if saved.get(key) != wanted.get(key)]
    if differ:
        raise RunError(f"{out} holds a run made with other {', '.join(differ)} "
                       f"({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); pass another --out to keep both")


def _distributed(device: str):
    """accelerate's process state when launched with it (or torchrun), else a single process."""
    from accelerate import PartialState

    # without cpu=True, accelerate does not take CPU processes as a distributed group
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def _setup_metrics(names: list[str], context: MetricContext) -> list:
    metrics = []
    for name in names:
        metric = get_metric(name)
        try:
            metric.setup(context)
        except MetricUnavailable as err:
            print(f"metric {metric.name or name} unavailable: {err}", file=sys.stderr)
            continue
        metrics.append(metric)
    return metrics


def score_missing(run_dir: Path, metrics: list, progress: bool = True, again: bool = False) -> int:
    """Score finished images that lack a metric's columns (e.g. after a kill between writing and scoring), or
    with `again` every image (a later line replaces an earlier one); set metrics get their groups' values.
    Images are read from disk, never made."""
    from PIL import Image

    scores = read_scores(run_dir)
    done = 0
    for metric in metrics:
        if isinstance(metric, SetMetric):
            done += score_sets(run_dir, metric, progress=progress, again=again)
            continue
        todo = [r for r in scan_records(run_dir)
                if again or not set(metric.columns) <= set(scores.get(record_key(r), {}))]
        for start in tqdm(range(0, len(todo), 16), desc=f"scoring {metric.name}", disable=not progress or not todo):
            batch = todo[start:start + 16]
            images = [Image.open(run_dir / r["path"]).convert("RGB") for r in batch]
            _append_scores(run_dir, metric, batch, metric.score(images, batch))
            done += len(batch)
    return done


def score_sets(run_dir: Path, metric, progress: bool = True, again: bool = False) -> int:
    """A set metric's values per (method, category) and per (method, "all"), into `scores/<name>.sets.json`.

    Images the metric has not seen in this process (a resumed run, `benchmark score`) are read from disk.
    Nothing is done when the stored values cover exactly these images with this convention (unless `again`).
    Returns the number of images read."""
    from PIL import Image

    records = scan_records(run_dir)
    path = run_dir / "scores" / f"{metric.name}.sets.json"
    described = metric.describe()
    fingerprint = hashlib.sha256(json.dumps([described, [record_key(r) for r in records]], default=str)
                                 .encode()).hexdigest()
    if not again and path.exists() and json.loads(path.read_text()).get("fingerprint") == fingerprint:
        return 0
    if again:
        metric.reset()
    todo = [r for r in records if record_key(r) not in metric.states]
    for start in tqdm(range(0, len(todo), 16), desc=f"scoring {metric.name}", disable=not progress or not todo):
        batch = todo[start:start + 16]
        metric.update([Image.open(run_dir / r["path"]).convert("RGB") for r in batch], batch)
    groups: dict[tuple[str, str], list] = {}
    for record in records:
        for category in (record["category"], "all"):
            groups.setdefault((record["method"], category), []).append(record_key(record))
    rows = [{"method": method, "category": category, "images": len(keys),
             "values": metric.compute([metric.states[k] for k in keys])} for (method, category), keys in groups.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"fingerprint": fingerprint, "metric": described, "groups": rows}, indent=1))
    return len(todo)


def rescore(run_dir: Path, metric_names: list[str] | None = None, metric_models: dict | None = None,
            device: str = "auto", again: bool = False, progress: bool = True):
    """`benchmark score`: load the metrics once, score the run's images from disk, rebuild the tables."""
    from sae.models import resolve_device

    run_dir = Path(run_dir)
    config_path = run_dir / "run_config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a benchmark run folder (no run_config.json)")
    config = json.loads(config_path.read_text())
    names = metric_names if metric_names is not None else config.get("metrics", [])
    for name in names:
        get_metric(name)  # unknown names fail before any work
    models = {**config.get("metric_models", {}), **(metric_models or {})}
    domain = config.get("domain", "natural")
    vocabulary = suite_vocabulary(config.get("suite", ""), domain, lambda: scan_records(run_dir))
    metrics = _setup_metrics(names, MetricContext(device=str(resolve_device(device)), model_paths=models,
                                                  domain=domain, vocabulary=vocabulary))
    score_missing(run_dir, metrics, progress=progress, again=again)
    described = {**config.get("metrics_described", {}), **{m.name: m.describe() for m in metrics}}
    config.update(metrics=sorted(set(config.get("metrics", [])) | set(names)), metrics_described=described)
    (run_dir / "run_config.json").write_text(json.dumps(config, indent=1))
    return write_report(run_dir)


def _append_scores(run_dir: Path, metric, records: list[dict], values: list[dict]) -> None:
    rows = [{"method": r["method"], "prompt_id": r["prompt_id"], "seed": r["seed"], "values": v}
            for r, v in zip(records, values)]
    append_jsonl(run_dir / "scores" / f"{metric.name}.jsonl", rows)


def run(config: RunConfig) -> Path | None:
    """Generate what is missing, score it, and write the tables. Returns the run folder (None on the other
    processes of a distributed run)."""
    config.validate()
    domain = model_domain(config.model)
    prompts = load_suite(config.suite, prompts_dir(domain))
    if config.limit is not None:
        prompts = prompts[:config.limit]
    methods = [get_method(name) for name in config.methods]
    out = Path(config.out)
    state = _distributed(config.device)
    device = str(state.device) if state.num_processes > 1 else config.device
    pipe = load_pipeline(config.model, device=device)
    scheduler = type(pipe.scheduler).__name__
    if config.sepen_checkpoint:  # shapes, finiteness and base weights, before any image
        delta = load_delta(config.sepen_checkpoint)
        check_fits(pipe.unet, delta)
        check_base_model(pipe.unet, delta)
        config = replace(config, sepen_checkpoint_sha256=file_sha256(Path(config.sepen_checkpoint)))
    _check_run_folder(out, config, scheduler)
    _check_prompts(pipe, prompts)
    for name in config.metrics:
        get_metric(name)  # an unknown metric is an error before any work
    context = GenerationContext(pipe=pipe, base_model=config.model, num_inference_steps=config.steps,
                                guidance_scale=config.guidance, sepen_config=FinetuneConfig(**config.sepen),
                                checkpoint_cache=Path(config.checkpoint_cache),
                                sepen_train_prompt=config.sepen_train_prompt,
                                sepen_checkpoint=Path(config.sepen_checkpoint) if config.sepen_checkpoint else None,
                                progress=config.progress and state.is_main_process)
    for method in methods:
        method.check(context)  # settings a method cannot run with fail here, not after other methods' images
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock_run_folder(out) if state.is_main_process else None  # noqa: F841 (held until the process ends)
    if state.is_main_process:
        quarantine_damaged(out)  # a file that cannot be read is made again below
    metric_context = MetricContext(device=str(pipe.device), model_paths=config.metric_models, domain=domain,
                                   vocabulary=suite_vocabulary(config.suite, domain))  # whole suite, not --limit
    metrics = _setup_metrics(config.metrics, metric_context)
    described = {m.name: m.describe() for m in metrics}

    def write_config() -> None:
        """Written with the first image (or at the end): a start that fails leaves no settings to refuse a
        corrected command with."""
        if state.is_main_process and not (out / "run_config.json").exists():
            write_text_atomic(out / "run_config.json", json.dumps(
                {**config.to_json(), "scheduler": scheduler, "domain": domain, "metrics_described": described},
                indent=1))

    # Blocks of `batch_size` consecutive seeds are the unit of generation: batched kernels on the CPU can differ
    # from one image at a time by one 8-bit level, so a resumed run regenerates a block whole (writing only its
    # missing images) to end bit-identical to an uninterrupted one.
    blocks = [config.seeds[i:i + config.batch_size] for i in range(0, len(config.seeds), config.batch_size)]
    units = []  # (method, prompt, [blocks with a missing image])
    for method in methods:
        for item in prompts:
            todo = [b for b in blocks if not all(image_path(out, method.name, item.id, s).exists() for s in b)]
            if todo:
                units.append((method, item, todo))
    mine = split_units(units, state.process_index, state.num_processes)
    total = sum(not image_path(out, m.name, item.id, s).exists() for m, item, todo in mine for b in todo for s in b)
    bar = tqdm(total=total, desc="generating", disable=not context.progress, unit="img")
    # set metrics (FID) are computed by the main process, which reads the other processes' images from disk
    block_metrics = [m for m in metrics if state.is_main_process or not isinstance(m, SetMetric)]
    for method in methods:
        work = [(item, todo) for m, item, todo in mine if m is method]
        if not work:
            continue
        sampling = config.sampling_of(method.name)
        context.num_inference_steps, context.guidance_scale = sampling["steps"], sampling["guidance"]
        method.prepare(context, [item for item, _ in work])
        _record_finetune_costs(out, method, context, [item for item, _ in work])
        for item, todo in work:
            for block in todo:
                bar.set_postfix_str(f"{method.name} {item.id}")
                write_config()
                bar.update(generate_block(out, method, context, item, block, block_metrics))
    bar.close()
    write_config()
    state.wait_for_everyone()
    if state.is_main_process:
        score_missing(out, metrics, progress=context.progress)
        write_report(out)
        if config.html:
            from .html_report import write_html_report

            write_html_report(out, config.attention_prompts, context=context)
    state.wait_for_everyone()  # the other processes return once the tables exist
    return out if state.is_main_process else None


def _lock_run_folder(out: Path):
    """An exclusive lock on the run folder for this process's life; a second `run` on it is refused, naming the
    first (its images would race with ours)."""
    import fcntl

    handle = open(out / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunError(f"{out} is being written by {holder}: wait for it to finish (then rerun to complete "
                       "anything missing), or pass another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def split_units(units: list, process_index: int, num_processes: int) -> list:
    """This process's share of the (method, prompt) units: every unit goes to exactly one process."""
    return units[process_index::num_processes]


def generate_block(out: Path, method, context: GenerationContext, item: SuitePrompt, block: list[int],
                   metrics: list = ()) -> int:
    """Generate one block of seeds, write its missing images with their records, score them; returns the count."""
    started = time.perf_counter()
    checkpoint = method.checkpoint_path(context, item)
    with torch.no_grad():
        images = method.generate(context, item, block)
    seconds = (time.perf_counter() - started) / len(block)
    records, written = [], []
    for seed, image in zip(block, images):
        path = image_path(out, method.name, item.id, seed)
        if path.exists():
            continue  # written before an interruption: never rewritten
        record = {"method": method.name, "prompt_id": item.id, "suite": item.suite, "category": item.category,
                  "prompt": item.prompt, "objects": [o.__dict__ for o in item.objects], "seed": seed,
                  "model": context.base_model, "steps": context.num_inference_steps,
                  "guidance": context.guidance_scale, "seconds": seconds, "batch": len(block)}
        if checkpoint is not None:
            record["checkpoint_sha256"] = context.checkpoint_sha256(checkpoint)
        write_image(path, image, record)
        records.append({**record, "path": str(path.relative_to(out))})
        written.append(image)
    for metric in metrics:
        if isinstance(metric, SetMetric):
            metric.update(written, records)  # its groups' values are computed once the run's images exist
        else:
            _append_scores(out, metric, records, metric.score(written, records))
    return len(written)


def _record_finetune_costs(out: Path, method, context: GenerationContext, prompts: list[SuitePrompt]) -> None:
    """The one-off SepEn training cost of each prompt's checkpoint (trained now or found in the cache)."""
    if context.sepen_checkpoint is not None:
        return
    rows = []
    for item in prompts:
        checkpoint = method.checkpoint_path(context, item)
        if checkpoint is None:
            return
        info = checkpoint.parent / "prompt.json"
        if info.exists():
            seconds = json.loads(info.read_text())["seconds"]
            rows.append({"method": method.name, "prompt_id": item.id, "seconds": seconds,
                         "cached": item.id not in context.finetune_seconds})
    if rows:
        append_jsonl(out / "finetune.jsonl", rows)
