"""`benchmark run`: suite -> jobs -> images -> records -> tables.

Jobs are (method, prompt, seed); each image has its own seeded generator, so its initial noise depends on
its seed alone, and the same command reproduces every image bit for bit on the CPU (another batch size can
move a pixel by one 8-bit level: batched kernels round differently); a prompt the suite repeats under another id
(`Method.images_key`) is generated once and written under each id. Finished images are skipped, so a run
stopped at any point and started again completes what is missing and ends as an uninterrupted run would. Under
`torchrun` (or `accelerate launch`) the (method, prompt) units are split across processes without overlap; the main
process merges the records. Scoring is `benchmark.scoring`'s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from sae.models import check_model_folder, load_pipeline, model_family, resolve_device
from sae.tokens import encode_prompt_ids

from .domains import get_domain, model_domain
from .methods import GenerationContext, get_method
from .metrics import MetricContext, SetMetric, get_metric, suite_vocabulary
from .records import (CONFIG_NAME, append_jsonl, id_folder, image_path, quarantine_damaged, read_record,
                      read_run_config, write_image, write_json)
from .report import write_report
from .scoring import append_scores, score_missing, setup_metrics
from .suites import SuitePrompt, load_suite

# settings that change an image: a run folder holds images of one value of each
IMAGE_SETTINGS = ("model", "steps", "guidance", "sampling", "scheduler", "method_keys")
# ... of which older run folders did not record these: compared only where the folder has them
LATER_SETTINGS = ("sampling", "scheduler", "method_keys")
# per method: compared for the methods both the folder and the command have (a folder can gain methods)
PER_METHOD_SETTINGS = ("sampling", "method_keys")
LOCK_NAME = ".lock"
# written first into every run folder: `run` writes only into a folder that has it, or into a new or empty one
RUN_MARKER = ".benchmark-run"
RUN_FORMAT = 1


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
    sampling: dict = field(default_factory=dict)  # method -> {"steps", "guidance"}; others: steps and guidance
    options: dict = field(default_factory=dict)  # method -> its options (`Method.Options` fields)
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
        if self.batch_size < 1:
            raise RunError(f"--batch-size {self.batch_size}: give N >= 1 images per pipeline call")
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
        methods = [get_method(name, self.options.get(name)) for name in self.methods]
        check_families(self.model, methods)
        for name in self.metrics:
            get_metric(name)
        check_suite_matches(Path(self.out), self.suite, prompts)
        return prompts, methods


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


def method_sampling(methods: list[str], steps: int, guidance: float, release: bool,
                    overrides: dict | None = None) -> dict:
    """Each method's {"steps", "guidance"}: a per-method override, else (with `release`) the method's own
    release settings, else the run's `steps` and `guidance`."""
    from .methods import method_class

    result = {}
    for name in methods:
        own = dict(method_class(name).release_sampling) if release else {}
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


def check_run_folder_is_ours(out: Path) -> None:
    """`--out` is a new or empty folder, or a run folder (its marker, or the `run_config.json` of a folder made
    before markers): never a folder of other files, whose `results.json` or `report/` a run would overwrite."""
    out = Path(out)
    if out.resolve() in (Path(out.resolve().anchor), Path.home().resolve()):
        raise RunError(f"--out {out} is the filesystem root or your home folder: pass a folder for this run "
                       "(e.g. runs/NAME)")
    if not out.exists():
        return
    if not out.is_dir():
        raise RunError(f"--out {out} is a file: pass a folder for this run")
    if (out / CONFIG_NAME).is_file():
        read_run_config(out)  # a damaged one is named now, before a model is loaded
        return
    if (out / RUN_MARKER).is_file():
        return
    ours = (LOCK_NAME, RUN_MARKER, f".{RUN_MARKER}.tmp")  # the lock, the marker (or its write cut short by a kill)
    others = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunError(f"--out {out} holds files that are not a benchmark run's ({shown}): pass a new or empty "
                       "folder; a run writes only into its own folders")


def check_families(model: str, methods: list) -> None:
    """Every method runs on the model's family (`Method.families`), or the run is refused before anything loads."""
    family = model_family(model)
    for method in methods:
        if method.families is not None and family not in method.families:
            raise RunError(f"{method.name} runs on {', '.join(method.families)} models, not on {family} ({model}); "
                           f"`python -m benchmark ls methods --model {model}` lists the methods that do")


def check_suite_matches(out: Path, suite: str, prompts: list[SuitePrompt]) -> None:
    """A run folder holds one suite: another suite, or other prompts under this suite's ids (an edited file), is
    refused before anything is written; the folder's images would be counted as these prompts'."""
    if not out.is_dir():
        return
    if (out / CONFIG_NAME).is_file():
        held = str(read_run_config(out).get("suite", suite))
        if Path(held).stem != Path(suite).stem:
            raise RunError(f"{out} holds a run of suite {Path(held).stem} and this command's suite is "
                           f"{Path(suite).stem}: pass another --out to keep both")
    for item in prompts:
        for path in sorted((out / "images").glob(f"*/{id_folder(item.id)}/*.png"))[:1]:
            try:
                record = read_record(path)
            except (OSError, SyntaxError, ValueError, KeyError):
                continue  # set aside and made again by the run
            if "line_sha256" in record:
                same = record["line_sha256"] == item.line_sha256
            else:  # a record made before line hashes: its text
                same = (record.get("prompt"), record.get("objects")) == (item.prompt, [vars(o) for o in item.objects])
            if not same:
                raise RunError(f"{out} holds images of prompt {item.id} made from another suite line "
                               f"({record.get('prompt')!r}; this suite's: {item.prompt!r}): pass another --out for "
                               "this suite, or run the folder's own suite file")


def mark_run_folder(out: Path) -> None:
    """The marker that makes `out` a run folder (written before anything else of the run)."""
    if not (out / RUN_MARKER).is_file():
        write_json(out / RUN_MARKER, {"format": RUN_FORMAT}, indent=None)


def _check_run_folder(out: Path, config: RunConfig, scheduler: str, method_keys: dict) -> None:
    if not (out / CONFIG_NAME).exists():
        return
    saved = read_run_config(out)
    # the sampler comes with the model folder, so the same --model can sample differently after an edit
    wanted = {**config.to_json(), "scheduler": scheduler, "method_keys": method_keys}
    keys = [key for key in IMAGE_SETTINGS if key in saved or key not in LATER_SETTINGS]
    # a folder can gain methods: the settings of the methods it already holds must be the same
    for key in PER_METHOD_SETTINGS:
        common = set(saved.get(key) or {}) & set(wanted.get(key) or {})
        saved[key] = {m: v for m, v in (saved.get(key) or {}).items() if m in common}
        wanted[key] = {m: v for m, v in (wanted.get(key) or {}).items() if m in common}
    differ = [key for key in keys if saved.get(key) != wanted.get(key)]
    if differ:
        raise RunError(f"{out} holds a run made with other {', '.join(differ)} "
                       f"({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); pass another --out to keep both")


def _distributed(device: str):
    """accelerate's process state when launched with it (or torchrun), else a single process."""
    from accelerate import PartialState

    # without cpu=True, accelerate does not take CPU processes as a distributed group
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def run(config: RunConfig) -> Path | None:
    """Generate what is missing, score it, and write the tables. Returns the run folder (None on the other
    processes of a distributed run)."""
    prompts, methods = config.preflight()
    domain = model_domain(config.model)
    out = Path(config.out)
    state = _distributed(config.device)
    device = str(state.device) if state.num_processes > 1 else config.device
    if not config.progress:  # --no-progress: the libraries' loading bars too
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    pipe = load_pipeline(config.model, device=device)
    scheduler = type(pipe.scheduler).__name__
    _check_prompts(pipe, prompts)
    context = GenerationContext(pipe=pipe, base_model=config.model, progress=config.progress and state.is_main_process)
    for method, name in zip(methods, config.methods, strict=True):
        method.sampling = config.sampling_of(name)
        method.check(context)  # settings a method cannot run with fail here, not after other methods' images
    method_keys = json.loads(json.dumps({name: method.resume_key()
                                         for name, method in zip(config.methods, methods, strict=True)},
                                        default=str))  # as the folder stores them
    _check_run_folder(out, config, scheduler, method_keys)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock_run_folder(out) if state.is_main_process else None  # noqa: F841 (held until the process ends)
    if state.is_main_process:
        check_run_folder_is_ours(out)  # again under the lock: another process may have written since
        mark_run_folder(out)
        quarantine_damaged(out, progress=context.progress)  # a file that is not what its path says is made again
    # the other processes list what is missing once the folder is this job's and its damaged images are
    # moved aside
    state.wait_for_everyone()
    metric_context = MetricContext(device=str(pipe.device), model_paths=config.metric_models, domain=domain,
                                   vocabulary=suite_vocabulary(config.suite, domain),  # whole suite, not --limit
                                   suite=str(config.suite))
    metrics = setup_metrics(config.metrics, metric_context)
    described = {m.name: m.describe() for m in metrics}
    # per-image scores made with another instrument (a retrained or swapped model) are made again, never mixed
    stored = stored_described(out)
    changed = [m for m in metrics if not isinstance(m, SetMetric) and m.name in stored
               and stored[m.name] != json.loads(json.dumps(described[m.name], default=str))]
    if changed and state.is_main_process:
        print(f"{out}: {', '.join(m.name for m in changed)} measured with another instrument than this folder's "
              "scores; its images are scored again with this one", file=sys.stderr)
        score_missing(out, changed, progress=context.progress, again=True)
        saved = read_run_config(out)
        saved["metrics_described"] = {**saved.get("metrics_described", {}),
                                      **{m.name: described[m.name] for m in changed}}
        write_json(out / CONFIG_NAME, saved, default=str)
    run_settings = {**config.to_json(), "scheduler": scheduler, "domain": domain, "method_keys": method_keys,
                    "options": {name: m.options_record() for name, m in zip(config.methods, methods, strict=True)},
                    "notes": {name: m.settings_note() for name, m in zip(config.methods, methods, strict=True)},
                    "metrics_described": described}

    def write_config() -> None:
        """Written with the first image (or at the end): a start that fails leaves no settings to refuse a
        corrected command with."""
        if state.is_main_process and not (out / "run_config.json").exists():
            write_json(out / CONFIG_NAME, run_settings, default=str)

    # Blocks of `batch_size` consecutive seeds are the unit of generation: batched kernels on the CPU can differ
    # from one image at a time by one 8-bit level, so a resumed run regenerates a block whole (writing only its
    # missing images) to end bit-identical to an uninterrupted one.
    blocks = [config.seeds[i:i + config.batch_size] for i in range(0, len(config.seeds), config.batch_size)]
    units = []  # (method, [prompts whose images are the same], [blocks with a missing image])
    for method in methods:
        for alike in same_images(method, prompts):
            todo = [b for b in blocks
                    if not all(image_path(out, method.name, item.id, s).exists() for item in alike for s in b)]
            if todo:
                units.append((method, alike, todo))
    mine = split_units(units, state.process_index, state.num_processes)
    if state.num_processes > 1:
        write_config()  # another process's first image can come before this one's
    # every process lists what is missing before any writes an image, so the lists, and the shares, agree
    state.wait_for_everyone()
    total = sum(not image_path(out, m.name, item.id, s).exists()
                for m, alike, todo in mine for item in alike for b in todo for s in b)
    bar = tqdm(total=total, desc="generating", disable=not context.progress, unit="img")
    # set metrics (FID) are computed by the main process, which reads the other processes' images from disk
    block_metrics = [m for m in metrics if state.is_main_process or not isinstance(m, SetMetric)]
    for method in methods:
        work = [(alike, todo) for m, alike, todo in mine if m is method]
        if not work:
            continue
        context.num_inference_steps, context.guidance_scale = method.sampling["steps"], method.sampling["guidance"]
        costs = method.prepare(context, [item for alike, _ in work for item in alike])
        if costs:  # one-off costs (e.g. finetuning), reported beside the per-image seconds
            append_jsonl(out / "finetune.jsonl", [{"method": method.name, **row} for row in costs])
        for alike, todo in work:
            for block in todo:
                bar.set_postfix_str(f"{method.name} {alike[0].id}")
                write_config()
                bar.update(generate_block(out, method, context, alike, block, block_metrics))
    bar.close()
    write_config()
    state.wait_for_everyone()
    if state.is_main_process:
        score_missing(out, metrics, progress=context.progress)
        write_report(out)
        if config.html:
            from .html_report import write_html_report
            from .trace import write_traces

            write_traces(out, config.attention_prompts, context=context, run_methods={m.name: m for m in methods})
            write_html_report(out)
    state.wait_for_everyone()  # the other processes return once the tables exist
    return out if state.is_main_process else None


def stored_described(out: Path) -> dict:
    """The metric conventions a run folder's scores were made with (empty for a new folder)."""
    return read_run_config(out).get("metrics_described", {}) if (out / CONFIG_NAME).exists() else {}


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


def same_images(method, prompts: list[SuitePrompt]) -> list[list[SuitePrompt]]:
    """The prompts grouped by the images `method` makes of them (`Method.images_key`), in suite order: a repeated
    prompt is generated once per seed block and its images written under each of its ids."""
    groups: dict[str, list[SuitePrompt]] = {}
    for item in prompts:
        groups.setdefault(method.images_key(item), []).append(item)
    return list(groups.values())


def split_units(units: list, process_index: int, num_processes: int) -> list:
    """This process's share of the (method, prompt) units: every unit goes to exactly one process."""
    return units[process_index::num_processes]


def generate_block(out: Path, method, context: GenerationContext, alike: list[SuitePrompt], block: list[int],
                   metrics: list = ()) -> int:
    """One block of seeds of prompts whose images are the same (usually one prompt): generated once, or read back
    from a prompt of the group that has them all (a resumed run), then written where missing, each image with its
    own prompt's record, and scored; returns the count written."""
    missing = {item.id: [s for s in block if not image_path(out, method.name, item.id, s).exists()] for item in alike}
    donor = next((item for item in alike if not missing[item.id]), None)
    checkpoint = method.checkpoint_path(context, alike[0])
    if donor is None:
        started = time.perf_counter()
        with torch.no_grad():
            images = method.generate(context, alike[0], block)
        seconds = [(time.perf_counter() - started) / len(block)] * len(block)
    else:  # PNG is lossless: the same pixels as generating them again
        paths = [image_path(out, method.name, donor.id, s) for s in block]
        images = [Image.open(path).convert("RGB") for path in paths]
        seconds = [read_record(path).get("seconds") for path in paths]
    written = 0
    for item in alike:
        records, images_written = [], []
        for seed, image, cost in zip(block, images, seconds, strict=True):
            if seed not in missing[item.id]:
                continue  # written before an interruption: never rewritten
            path = image_path(out, method.name, item.id, seed)
            record = {"method": method.name, "prompt_id": item.id, "suite": item.suite, "category": item.category,
                      "prompt": item.prompt, "objects": [o.__dict__ for o in item.objects], "seed": seed,
                      "line_sha256": item.line_sha256, **({"geneval": item.extra["geneval"]} if "geneval" in item.extra
                                                          else {}),
                      "model": context.base_model, "steps": context.num_inference_steps,
                      "guidance": context.guidance_scale, "seconds": cost, "batch": len(block)}
            if checkpoint is not None:
                record["checkpoint_sha256"] = context.checkpoint_sha256(checkpoint)
            write_image(path, image, record)
            records.append({**record, "path": str(path.relative_to(out))})
            images_written.append(image)
        for metric in metrics if records else ():
            if isinstance(metric, SetMetric):
                metric.update(images_written, records)  # its groups' values are computed once the run's images exist
            else:
                append_scores(out, metric, records, metric.score(images_written, records))
        written += len(records)
    return written
