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
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from sae.models import load_pipeline, model_family, quiet_loading, resolve_device
from sae.speed import for_inference
from sae.tokens import encode_prompt_ids

from .domains import model_domain
from .methods import GenerationContext
from .metrics import MetricContext, SetMetric, suite_vocabulary
from .records import (CONFIG_NAME, append_jsonl, image_path, quarantine_damaged, read_record, read_run_config,
                      write_image, write_json)
from .report import write_report
from .run_config import AUTO, RunConfig
from .run_folder import (LOCK_NAME, RUN_MARKER, RunError, check_run_folder_is_ours, check_same_settings,
                         PER_METHOD_RECORDS, lock_run_folder, mark_run_folder, stored_described)
from .scoring import append_scores, score_missing, setup_metrics
from .suites import SuitePrompt

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RUN_MARKER", "RunConfig", "RunError", "check_run_folder_is_ours", "generate_block", "run",
           "same_images", "split_units"]


def _check_prompts(pipe, prompts: list[SuitePrompt], methods: list) -> None:
    """Every prompt fits the text encoder and names its objects: fail before generating anything. On the families
    whose only text encoders are CLIP's (77 tokens, a start token first), and on SD3 where a method reads token
    positions (its CLIP positions); elsewhere the pipeline's own encoders take the prompt (T5's 256-512 tokens
    past CLIP's 77, no start token)."""
    from sae.backbones import UNET_FAMILIES
    from sae.tokens import find_token_indices

    family = model_family(pipe)
    if family not in UNET_FAMILIES and not any(m.families is not None and family in m.families for m in methods):
        return
    for item in prompts:
        try:
            encode_prompt_ids(pipe.tokenizer, item.prompt)
            find_token_indices(pipe.tokenizer, item.prompt, item.object_words)
        except ValueError as err:
            raise RunError(f"prompt {item.id}: {err}") from err


def fitting_batch_size(pipe, methods: list, state, most: int = 16) -> int:
    """`--batch-size auto`: 4 on the CPU (the blocks every committed result was made with); on a GPU the largest
    power of two up to `most` whose images fit in the memory left, from one batch of two measured, with room for
    the gradients of the methods that optimise latents. The main process measures; every process takes its
    number, so that the seed blocks, and the shares, agree."""
    if pipe.device.type != "cuda":
        return 4
    from accelerate.utils import broadcast_object_list

    found = [4]
    if state.num_processes > 1:
        state.wait_for_everyone()  # every rank's pipeline loaded before the memory left is read
    if state.is_main_process:
        device = pipe.device  # the pipeline's GPU, not the current one
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            pipe(prompt=["a photo of a cat and a dog"] * 2, num_inference_steps=1, output_type="pil")
        per_image = max(1, torch.cuda.max_memory_allocated(device) - before) / 2
        factor = 3.0 if any(m.families is not None for m in methods) else 1.5  # latent updates keep activations
        # ranks sharing a GPU (more ranks than GPUs) share its free memory too
        sharing = max(1, -(-state.num_processes // max(1, torch.cuda.device_count())))
        free = torch.cuda.mem_get_info(device)[0] / sharing
        fits = max(1, min(most, int(free / (per_image * factor))))
        found = [1 << (fits.bit_length() - 1)]
    if state.num_processes > 1:
        broadcast_object_list(found)
    return int(found[0])


def _rank_device(state, device: str) -> str:
    """This process's device: its local rank's GPU, or with more ranks than GPUs the GPUs in turn (two ranks can
    share one GPU; they then talk through gloo, as NCCL refuses two ranks on one GPU)."""
    if resolve_device(device).type == "cuda" and state.device.type == "cpu":
        return f"cuda:{state.local_process_index % torch.cuda.device_count()}"
    return str(state.device)


def _distributed(device: str):
    """accelerate's process state when launched with it (or torchrun), else a single process."""
    from accelerate import PartialState

    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # without cpu=True, accelerate does not take CPU processes as a distributed group
    return PartialState(cpu=resolve_device(device).type == "cpu" or not gpus or ranks_here > gpus)


@dataclass
class RunPlan:
    """What this process of a run does: its share of the missing images, with everything it needs to make and
    score them."""

    config: RunConfig
    out: Path
    state: object  # accelerate's PartialState
    context: GenerationContext
    methods: list
    metrics: list
    units: list  # this process's (method, prompts whose images are the same, seed blocks with a missing image)
    settings: dict  # what run_config.json records
    lock: object = None  # the main process's lock on the folder, held while the plan lives

    def write_config(self) -> None:
        """Written with the first image (or at the end): a start that fails leaves no settings to refuse a
        corrected command with. A folder that gains methods records theirs beside the ones it holds (their
        sampling, options, notes, resume keys and whether they are experiments on the model), so that its reports
        show them and a resume checks them."""
        if not self.state.is_main_process:
            return
        path = self.out / CONFIG_NAME
        if not path.exists():
            write_json(path, self.settings, default=str)
            return
        saved = read_run_config(self.out)
        gained = [m for m in self.settings["methods"] if m not in saved.get("methods", [])]
        if not gained:
            return
        saved["methods"] = list(saved.get("methods", [])) + gained
        for key in PER_METHOD_RECORDS:
            values = {m: v for m, v in (self.settings.get(key) or {}).items() if m in gained}
            if values:
                saved[key] = {**(saved.get(key) or {}), **values}
        write_json(path, saved, default=str)


def run(config: RunConfig) -> Path | None:
    """Generate what is missing, score it, and write the tables. Returns the run folder (None on the other
    processes of a distributed run)."""
    plan = plan_run(config)
    generate_missing(plan)
    return finish_run(plan)


def plan_run(config: RunConfig) -> RunPlan:
    """Every check, the model, the folder made ours (marked, locked, damaged files moved aside), the metrics set
    up, and this process's share of what is missing; ends when every process has listed it."""
    prompts, methods = config.preflight()
    domain = model_domain(config.model)
    out = Path(config.out)
    state = _distributed(config.device)
    device = _rank_device(state, config.device) if state.num_processes > 1 else config.device
    if not config.progress:  # --no-progress: the libraries' loading bars too
        quiet_loading()
    pipe = load_pipeline(config.model, device=device, dtype=config.dtype)
    if pipe.device.type == "cuda" and hasattr(pipe, "unet"):
        for_inference(pipe)  # channels-last UNet and VAE: what cuDNN's half-precision convolutions want
    if config.batch_size == AUTO:
        config = replace(config, batch_size=fitting_batch_size(pipe, methods, state))
    scheduler = type(pipe.scheduler).__name__
    _check_prompts(pipe, prompts, methods)
    context = GenerationContext(pipe=pipe, base_model=config.model, progress=config.progress and state.is_main_process)
    for method in methods:
        method.check(context)  # settings a method cannot run with fail here, not after other methods' images
    method_keys = json.loads(json.dumps({name: method.resume_key()
                                         for name, method in zip(config.methods, methods, strict=True)},
                                        default=str))  # as the folder stores them
    check_same_settings(out, {**config.to_json(), "scheduler": scheduler, "method_keys": method_keys})
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run_folder(out) if state.is_main_process else None
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
    if state.is_main_process:
        _rescore_changed_instruments(out, metrics, described, context.progress)
    settings = {**config.to_json(), "scheduler": scheduler, "domain": domain, "method_keys": method_keys,
                "options": {name: m.options_record() for name, m in zip(config.methods, methods, strict=True)},
                "notes": {name: m.settings_note() for name, m in zip(config.methods, methods, strict=True)},
                "metrics_described": described}
    family = model_family(pipe)
    experimental = {name: family for name, m in zip(config.methods, methods, strict=True)
                    if family in m.experimental_families}
    if experimental:  # {method: family}: every report of the run marks these methods
        settings["experimental"] = experimental
    # Blocks of `batch_size` consecutive seeds are the unit of generation: batched kernels on the CPU can differ
    # from one image at a time by one 8-bit level, so a resumed run regenerates a block whole (writing only its
    # missing images) to end bit-identical to an uninterrupted one.
    blocks = [config.seeds[i:i + config.batch_size] for i in range(0, len(config.seeds), config.batch_size)]
    units = []
    for method in methods:
        for alike in same_images(method, prompts):
            todo = [b for b in blocks
                    if not all(image_path(out, method.name, item.id, s).exists() for item in alike for s in b)]
            if todo:
                units.append((method, alike, todo))
    plan = RunPlan(config, out, state, context, methods, metrics,
                   split_units(units, state.process_index, state.num_processes), settings, lock)
    if state.num_processes > 1:
        plan.write_config()  # another process's first image can come before this one's
    # every process lists what is missing before any writes an image, so the lists, and the shares, agree
    state.wait_for_everyone()
    return plan


def _rescore_changed_instruments(out: Path, metrics: list, described: dict, progress: bool) -> None:
    """Per-image scores made with another instrument (a retrained or swapped model) are made again, never mixed."""
    stored = stored_described(out)
    changed = [m for m in metrics if not isinstance(m, SetMetric) and m.name in stored
               and stored[m.name] != json.loads(json.dumps(described[m.name], default=str))]
    if not changed:
        return
    logger.info(f"{out}: {', '.join(m.name for m in changed)} measured with another instrument than this folder's "
                "scores; its images are scored again with this one")
    score_missing(out, changed, progress=progress, again=True)
    saved = read_run_config(out)
    saved["metrics_described"] = {**saved.get("metrics_described", {}),
                                  **{m.name: described[m.name] for m in changed}}
    write_json(out / CONFIG_NAME, saved, default=str)


def generate_missing(plan: RunPlan) -> None:
    """This process's share of the missing images, method by method: its one-off work (finetuning), then each
    block of seeds, written and scored as it comes."""
    out, context = plan.out, plan.context
    total = sum(not image_path(out, m.name, item.id, s).exists()
                for m, alike, todo in plan.units for item in alike for b in todo for s in b)
    bar = tqdm(total=total, desc="generating", disable=not context.progress, unit="img")
    # set metrics (FID) are computed by the main process, which reads the other processes' images from disk
    block_metrics = [m for m in plan.metrics if plan.state.is_main_process or not isinstance(m, SetMetric)]
    for method in plan.methods:
        work = [(alike, todo) for m, alike, todo in plan.units if m is method]
        if not work:
            continue
        costs = method.prepare(context, [item for alike, _ in work for item in alike])
        if costs:  # one-off costs (e.g. finetuning), reported beside the per-image seconds
            append_jsonl(out / "finetune.jsonl", [{"method": method.name, **row} for row in costs])
        for alike, todo in work:
            for block in todo:
                bar.set_postfix_str(f"{method.name} {alike[0].id}")
                plan.write_config()
                bar.update(generate_block(out, method, context, alike, block, block_metrics))
    bar.close()


def finish_run(plan: RunPlan) -> Path | None:
    """Once every process is done: set metrics and anything unscored, the tables and the HTML report (the main
    process); returns the run folder there, None on the others."""
    plan.write_config()
    plan.state.wait_for_everyone()
    out = plan.out
    if plan.state.is_main_process:
        score_missing(out, plan.metrics, progress=plan.context.progress)
        write_report(out)
        if plan.config.html:
            from .html_report import write_html_report
            from .trace import write_traces

            write_traces(out, plan.config.attention_prompts, context=plan.context,
                         run_methods={m.name: m for m in plan.methods})
            write_html_report(out)
    plan.state.wait_for_everyone()  # the other processes return once the tables exist
    return out if plan.state.is_main_process else None


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
    dtype = str(context.pipe.dtype).removeprefix("torch.")  # once a block: a pipeline walks its modules
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
                      "model": context.base_model, "steps": method.sampling["steps"],
                      "guidance": method.sampling["guidance"], "dtype": dtype,
                      "seconds": cost, "batch": len(block)}
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

