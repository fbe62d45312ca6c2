"""Scoring a run folder's images: metrics loaded once, images scored in batches as they are made or read back
from disk (`benchmark score`), set metrics (FID) per method and category; nothing here makes an image."""

from __future__ import annotations

import logging
import hashlib
import json
from pathlib import Path

from tqdm.auto import tqdm

from .metrics import MetricContext, MetricUnavailable, SetMetric, check_available, get_metric, suite_vocabulary
from .records import (CONFIG_NAME, append_jsonl, read_derived_json, read_run_config, read_scores, record_key,
                      scan_records, write_json)
from .report import write_report

logger = logging.getLogger(__name__)


def setup_metrics(names: list[str], context: MetricContext) -> list:
    metrics = []
    for name in names:
        metric = get_metric(name)
        try:
            check_available(metric.name, context)
            metric.setup(context)
        except MetricUnavailable as err:
            logger.info(f"metric {metric.name or name} unavailable: {err}")
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
            append_scores(run_dir, metric, batch, metric.score(images, batch))
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
    if not again and (read_derived_json(path) or {}).get("fingerprint") == fingerprint:
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
    write_json(path, {"fingerprint": fingerprint, "metric": described, "groups": rows})
    return len(todo)


def rescore(run_dir: Path, metric_names: list[str] | None = None, metric_models: dict | None = None,
            device: str = "auto", again: bool = False, progress: bool = True):
    """`benchmark score`: load the metrics once, score the run's images from disk, rebuild the tables."""
    from sae.models import resolve_device

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    names = metric_names if metric_names is not None else config.get("metrics", [])
    for name in names:
        get_metric(name)  # unknown names fail before any work
    models = {**config.get("metric_models", {}), **(metric_models or {})}
    domain = config.get("domain", "natural")
    vocabulary = suite_vocabulary(config.get("suite", ""), domain, lambda: scan_records(run_dir))
    metrics = setup_metrics(names, MetricContext(device=str(resolve_device(device)), model_paths=models,
                                                  domain=domain, vocabulary=vocabulary,
                                                  suite=str(config.get("suite", ""))))
    score_missing(run_dir, metrics, progress=progress, again=again)
    described = {**config.get("metrics_described", {}), **{m.name: m.describe() for m in metrics}}
    config.update(metrics=sorted(set(config.get("metrics", [])) | set(names)), metrics_described=described)
    write_json(run_dir / CONFIG_NAME, config, default=str)
    return write_report(run_dir)


def append_scores(run_dir: Path, metric, records: list[dict], values: list[dict]) -> None:
    rows = [{"method": r["method"], "prompt_id": r["prompt_id"], "seed": r["seed"], "values": v}
            for r, v in zip(records, values, strict=True)]
    append_jsonl(run_dir / "scores" / f"{metric.name}.jsonl", rows)
