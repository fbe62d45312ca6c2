"""The static HTML report of a run folder: `python -m benchmark report RUN_DIR --html`, and the end of `run`.

`RUN_DIR/report/`, built from the tables that `report.py` writes (`summary.csv`, `samples.jsonl`), never from a
run's memory, and opened from disk without a server:

- `index.html`: the run's settings, the summary table (method x category, each metric's mean with its 95%
  bootstrap interval, as in `summary.md`), a bar chart of each metric per method (`charts/*.png`), the metrics'
  conventions, GenEval's task tables when the run has GenEval verdicts, and links to the pages below.
- `category-<name>[-<page>].html`, one per suite category, paged at about `IMAGES_PER_PAGE` images a file: the
  category's table and chart, then per prompt a grid (rows: methods, columns: seeds) of thumbnails, each
  framed green when the presence metric found every object and red when it missed one, captioned with the
  objects found (check) and missed (cross) and with GenEval's verdict and reason where the image has one (without
  presence scores the frame follows GenEval's verdict); a click opens the full image.
- `attention.html`: the attention traces the run folder holds (`attention/`, written by the run or by
  `benchmark trace`, see `benchmark/trace.py`): per traced prompt the per-object cross-attention maps of `plain`
  and `sepen` at a few denoising steps, with their Separate / Enhance values. The report only renders files.

Thumbnails (`thumbs/`) are at most 128 px: small images (the shapes world's 64 px) are enlarged by a whole factor
with nearest neighbour, larger ones shrunk to JPEG; a thumbnail newer than its image is reused.

The pages are jinja2 templates (`benchmark/templates/`) rendered with autoescape on: this module hands them plain
values (text, numbers, lists, dicts), so a run folder's text (prompts, object names, methods, settings, reasons,
notes) reaches a page only as escaped text.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from .records import note_made, read_jsonl, read_run_config, remove_made, slug, write_text_atomic
from .report import (experimental_note, method_labels, method_settings, model_label, ordered_methods, paired_cells,
                     paired_title, relabel_cells, set_columns, summary_cells, write_report)
from .trace import TRACE_DIR

REPORT_DIR = "report"
THUMB_SIZE = 128
IMAGES_PER_PAGE = 400


@cache
def templates() -> jinja2.Environment:
    # autoescape on every template, whatever its name; a misspelt value fails instead of rendering empty
    return jinja2.Environment(loader=jinja2.PackageLoader("benchmark", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render(template: str, **values) -> str:
    return templates().get_template(template).render(**values)


def summary_table(summary: pd.DataFrame, labels: dict | None = None) -> dict:
    """The summary's rows with the same cells as `summary.md` (`report.summary_cells`)."""
    header, rows = summary_cells(summary, labels)
    return {"header": header, "rows": rows}


def paired_table(paired: pd.DataFrame, labels: dict | None = None) -> dict | None:
    """Each method against the baseline on the same prompts and seeds, as in `summary.md`."""
    if paired.empty:
        return None
    header, rows = paired_cells(paired, labels)
    return {"title": paired_title(paired).replace("`", ""), "header": header, "rows": rows}


def metric_sections(results: dict) -> list[dict]:
    """The overview's sections a run's metrics add beyond the per-image means (`Metric.report_section`), from
    results.json: each a title, a note and one table of text cells (`macros.metric_section` renders them)."""
    from .metrics import report_sections

    labels = method_labels(results.get("config", {}))
    return [{"title": title, "note": note.replace("`", ""), "header": header, "rows": relabel_cells(rows, labels)}
            for section in report_sections(results.get("metrics", {})) if results.get(section.key)
            for title, note, header, rows in section.tables(results[section.key])]


def bar_chart(summary: pd.DataFrame, methods: list[str], path: Path, title: str) -> Path | None:
    """Each metric's mean per method with its 95% interval as error bars (a set metric: its value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    metrics = means + set_columns(summary)
    if not metrics or summary.empty:
        return None
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(0.6 + 2.2 * len(metrics), 2.6), squeeze=False)
    rows = [summary[summary["method"] == m].iloc[0] for m in methods if (summary["method"] == m).any()]
    names = [r["method"] for r in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        if metric in means:
            values = np.array([r[f"{metric}_mean"] for r in rows], dtype=float)
            low = np.array([r[f"{metric}_ci_low"] for r in rows], dtype=float)
            high = np.array([r[f"{metric}_ci_high"] for r in rows], dtype=float)
            errors = np.nan_to_num(np.vstack([values - low, high - values]).clip(min=0))
        else:
            values, errors = np.array([r[metric] for r in rows], dtype=float), None
        ax.bar(range(len(rows)), np.nan_to_num(values), yerr=errors, capsize=3,
               color=[colours[n] for n in names])
        top = np.nanmax(np.concatenate([values, values + (errors[1] if errors is not None else 0)]), initial=0)
        if np.nanmin(values, initial=0) >= 0:
            ax.set_ylim(0, top * 1.1 if top > 0 else 1)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(metric, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def thumbnail(run_dir: Path, report_dir: Path, image_rel: str) -> tuple[str, int, int]:
    """The thumbnail of `run_dir/image_rel` (made when missing or older than the image): its path relative to
    the report folder, width and height."""
    source = run_dir / image_rel
    rel = Path("thumbs", *Path(image_rel).parts[1:])  # drop "images/"
    target = report_dir / rel
    for existing in (target.with_suffix(".png"), target.with_suffix(".jpg")):
        if existing.exists() and existing.stat().st_mtime >= source.stat().st_mtime:
            with Image.open(existing) as thumb:
                return existing.relative_to(report_dir).as_posix(), thumb.width, thumb.height
    with Image.open(source) as image:
        image = image.convert("RGB")
        side = max(image.size)
        if side <= THUMB_SIZE:
            factor = max(1, THUMB_SIZE // side)
            thumb, target = image.resize((image.width * factor, image.height * factor), Image.NEAREST), \
                target.with_suffix(".png")
        else:
            scale = THUMB_SIZE / side
            thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.LANCZOS)
            target = target.with_suffix(".jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    thumb.save(target, quality=85) if target.suffix == ".jpg" else thumb.save(target)
    return target.relative_to(report_dir).as_posix(), thumb.width, thumb.height


def object_queries(objects: list[dict]) -> list[str]:
    """The names the presence metric reports an object by (its `query`, else its name), once each."""
    return list(dict.fromkeys(o.get("query") or o["name"] for o in objects))


def presence_marks(row: dict) -> tuple[list[str], list[str]] | None:
    """(found, missed) objects of an image from its `presence_missing` score; None when it was not scored."""
    if "presence_missing" not in row:
        return None
    missing = [m for m in str(row["presence_missing"] or "").split(",") if m]
    return [q for q in object_queries(row["objects"]) if q not in missing], missing


def verdicts(row: dict) -> list[tuple[str, float | None, str]]:
    """(metric, verdict, reason) of each metric that wrote a `<metric>_reason` beside its `<metric>_correct`
    (GenEval's); verdict None when the image got none (NaN)."""
    out = []
    for key, reason in row.items():
        name = key.removesuffix("_reason")
        if key.endswith("_reason") and f"{name}_correct" in row:
            verdict = row[f"{name}_correct"]
            judged = isinstance(verdict, (int, float)) and not pd.isna(verdict)
            out.append((name, float(verdict) if judged else None, str(reason or "")))
    return out


def grid_cell(run_dir: Path, report_dir: Path, row: dict) -> dict:
    """One image of a grid: its thumbnail, frame state (found / missed / unscored) and caption lines."""
    src, width, height = thumbnail(run_dir, report_dir, row["path"])
    marks = presence_marks(row)
    judged = verdicts(row)
    if marks is not None:
        state = "missed" if marks[1] else "found"
    elif any(v is not None for _, v, _ in judged):  # no presence scores: the frame shows the verdict
        state = "missed" if any(v == 0 for _, v, _ in judged) else "found"
    else:
        state = "unscored"
    caption = []
    if marks is not None:
        found, missed = marks
        caption += [{"css": "ok", "mark": "ok", "text": q} for q in found]
        caption += [{"css": "miss", "mark": "miss", "text": q} for q in missed]
    for name, verdict, reason in judged:
        if verdict is None:
            caption.append({"css": "reason", "mark": "", "text": f"{name}: {reason or 'no verdict'}"})
        elif verdict:
            caption.append({"css": "reason ok", "mark": "ok", "text": name})
        else:
            caption.append({"css": "reason miss", "mark": "miss", "text": f"{name}: {reason}"})
    return {"state": state, "path": row["path"], "src": src, "width": width, "height": height,
            "alt": f"{row['method']} {row['prompt_id']} seed {row['seed']}", "caption": caption}


def prompt_grid(run_dir: Path, report_dir: Path, prompt_rows: list[dict], methods: list[str], seeds: list[int]) -> dict:
    """One prompt's grid: a row per method that has images of it, a cell per seed (None where there is none)."""
    first = prompt_rows[0]
    by_key = {(r["method"], int(r["seed"])): r for r in prompt_rows}
    shown = [m for m in methods if any(key[0] == m for key in by_key)]
    rows = [{"method": method, "cells": [grid_cell(run_dir, report_dir, by_key[(method, s)])
                                         if (method, s) in by_key else None for s in seeds]}
            for method in shown]
    return {"anchor": slug(first["prompt_id"]), "title": f"{first['prompt_id']}: {first['prompt']}", "rows": rows}


def conventions(described: dict) -> list[dict]:
    return [{"name": name, "convention": info.get("convention", ""),
             "columns": ", ".join(f"{c} ({'higher' if up else 'lower'} is better)"
                                  for c, up in info.get("columns", {}).items())}
            for name, info in described.items()]


def category_pages(category: str, prompts: int, per_page: int) -> list[str]:
    count = max(1, -(-prompts // per_page))
    base = f"category-{slug(category)}"
    return [f"{base}.html" if i == 0 else f"{base}-{i + 1}.html" for i in range(count)]


def _load(run_dir: Path):
    config = read_run_config(run_dir)
    if not all((run_dir / name).exists() for name in ("summary.csv", "paired.csv", "samples.jsonl")):
        write_report(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    paired = pd.read_csv(run_dir / "paired.csv")
    rows = read_jsonl(run_dir / "samples.jsonl")
    path = run_dir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    described = results.get("metrics", {}) or config.get("metrics_described", {})
    return config, summary, paired, rows, described, results


def write_html_report(run_dir: Path, images_per_page: int = IMAGES_PER_PAGE) -> Path:
    """Write `run_dir/report/` from the run folder's files and return its `index.html`."""
    run_dir = Path(run_dir)
    if not (run_dir / "run_config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a benchmark run folder (no run_config.json)")
    config, summary, paired, rows, described, results = _load(run_dir)
    labels = method_labels(config)  # methods marked where they are experiments on the model's family
    report_dir = run_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_made(run_dir, list(report_dir.glob("*.html")))  # pages of an earlier report (paging can change)
    written = []
    found = list(dict.fromkeys(r["method"] for r in rows))
    methods = ordered_methods(found, config.get("methods"))
    seeds = sorted({int(r["seed"]) for r in rows})
    categories = list(dict.fromkeys(r["category"] for r in rows))
    per_page = max(1, images_per_page // max(1, len(methods) * len(seeds)))

    links = []
    for category in categories:
        in_category = [r for r in rows if r["category"] == category]
        by_prompt: dict[str, list[dict]] = {}
        for row in sorted(in_category, key=lambda r: r["prompt_id"]):
            by_prompt.setdefault(row["prompt_id"], []).append(row)
        prompt_ids = list(by_prompt)
        pages = category_pages(category, len(prompt_ids), per_page)
        part = summary[summary["category"] == category]
        chart = bar_chart(part, methods, report_dir / "charts" / f"{slug(category)}.png", category)
        for number, name in enumerate(pages):
            chunk = prompt_ids[number * per_page:(number + 1) * per_page]
            nav = [{"href": p, "current": i == number} for i, p in enumerate(pages)] if len(pages) > 1 else []
            page = render("category.html.j2", title=f"{category} - {config.get('suite')}", category=category,
                          pages=nav, summary=summary_table(part, labels),
                          chart=f"charts/{slug(category)}.png" if chart else "",
                          first=number * per_page + 1, last=number * per_page + len(chunk), prompts=len(prompt_ids),
                          seeds=seeds,
                          grids=[prompt_grid(run_dir, report_dir, by_prompt[p], methods, seeds) for p in chunk])
            write_text_atomic(report_dir / name, page)
            written.append(report_dir / name)
        links.append({"href": pages[0], "name": category, "prompts": len(prompt_ids), "images": len(in_category),
                      "pages": len(pages)})

    # figures of traces the folder no longer holds
    remove_made(run_dir, list((report_dir / TRACE_DIR).glob("*.png")))
    attention, figures = write_attention_page(run_dir, report_dir)
    all_part = summary[summary["category"] == "all"]
    chart = bar_chart(all_part, methods, report_dir / "charts" / "all.png", "all categories")
    settings = f"suite {config.get('suite')}, model {model_label(config.get('model'))}"
    settings += "; " + "; ".join(f"{m}: {', '.join(f'{k} {v}' for k, v in row.items())}"
                                 for m, row in method_settings(config).items())
    index = report_dir / "index.html"
    write_text_atomic(index, render(
        "index.html.j2", title=f"{config.get('suite')} report", suite=str(config.get("suite")),
        model=model_label(config.get("model")), settings=settings, seeds=len(seeds), images=len(rows),
        methods=methods, summary=summary_table(summary, labels), chart="charts/all.png" if chart else "",
        experimental=experimental_note(config), paired=paired_table(paired, labels), sections=metric_sections(results),
        categories=links, attention=attention,
        conventions=conventions(described)))
    note_made(run_dir, [*written, *figures, index] + ([report_dir / "attention.html"] if attention else []))
    return index


def losses_rows(methods: dict) -> list[dict]:
    """A trace's Separate and Enhance per method and shown step, as text cells ("-" where a step has none)."""
    from sae.visual import loss_lines

    return [{"label": label, "loss": loss, "cells": cells}
            for label, loss, cells in loss_lines([{"label": name, "losses": values["losses"]}
                                                  for name, values in methods.items()])]


def write_attention_page(run_dir: Path, report_dir: Path) -> tuple[str, list[Path]]:
    """`attention.html` from the traces the run folder holds (`attention/`, written by `benchmark trace` or the
    run); returns the link text ("" when there are none) and the figures copied. Nothing is generated here."""
    traces = sorted((run_dir / TRACE_DIR).glob("*.json"))
    out = report_dir / TRACE_DIR
    shown, methods, copied = [], {}, []
    for path in traces:
        trace = json.loads(path.read_text())
        figure = path.with_suffix(".png")
        if not figure.is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, out / figure.name)  # the report folder stands alone
        copied.append(out / figure.name)
        methods.update(dict.fromkeys(trace["methods"]))
        shown.append({"anchor": figure.stem, "prompt_id": trace["prompt_id"], "prompt": trace["prompt"],
                      "seed": trace["seed"], "notes": trace.get("notes", []), "src": f"{TRACE_DIR}/{figure.name}",
                      "steps": trace["step_labels"], "losses": losses_rows(trace["methods"])})
    if not shown:
        return "", copied
    write_text_atomic(report_dir / "attention.html", render("attention.html.j2", title="attention maps", traces=shown))
    return f"{len(shown)} prompts: {', '.join(methods)}", copied
