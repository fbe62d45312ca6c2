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
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .geneval.report import geneval_tables
from .trace import TRACE_DIR
from .records import note_made, read_jsonl, read_run_config, remove_made, slug, write_text_atomic
from .report import (method_settings, model_label, ordered_methods, paired_cells, paired_title, set_columns,
                     summary_cells, write_report)

REPORT_DIR = "report"
THUMB_SIZE = 128
IMAGES_PER_PAGE = 400

STYLE = """body{font-family:sans-serif;margin:1.2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.5em}h3{font-size:1em;margin:1.2em 0 .3em}
table.summary,table.losses{border-collapse:collapse;font-size:13px}
.summary td,.summary th,.losses td,.losses th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.summary td:first-child,.summary td:nth-child(2){text-align:left}
nav{margin:.5em 0}nav a,nav span{margin-right:.6em}
.scroll{overflow-x:auto}
table.grid{border-collapse:collapse}table.grid th{font-size:12px;font-weight:normal;padding:2px 4px}
table.grid td{vertical-align:top;padding:2px}
figure.cell{margin:0;border:3px solid #bbb;display:inline-block;background:#fff}
figure.cell.found{border-color:#1a9a1a}figure.cell.missed{border-color:#d62020}
figure.cell img{display:block;image-rendering:pixelated}
figcaption{font-size:11px;line-height:1.2;max-width:128px;padding:1px 2px}
.ok{color:#107010}.miss{color:#c01010}
body.only-missed figure.cell.found{visibility:hidden}
.note{color:#666;font-size:13px}"""

FILTER_SCRIPT = """<script>
document.getElementById("only-missed").addEventListener("change", function (event) {
  document.body.classList.toggle("only-missed", event.target.checked);
});
</script>"""


def page_html(title: str, body: str, script: str = "") -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head>\n<body>\n{body}\n{script}</body></html>\n')


def summary_table_html(summary: pd.DataFrame) -> str:
    """The summary's rows with the same cells as `summary.md` (`report.summary_cells`)."""
    return table_html(*summary_cells(summary))


def paired_table_html(paired: pd.DataFrame) -> str:
    """Each method against the baseline on the same prompts and seeds, as in `summary.md`."""
    if paired.empty:
        return ""
    return f"<h2>{html.escape(paired_title(paired)).replace('`', '')}</h2>" + table_html(*paired_cells(paired))


def table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
    return f'<table class="summary"><tr>{head}</tr>{body}</table>'


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


def cell_html(run_dir: Path, report_dir: Path, row: dict) -> str:
    src, width, height = thumbnail(run_dir, report_dir, row["path"])
    marks = presence_marks(row)
    judged = verdicts(row)
    if marks is not None:
        state = "missed" if marks[1] else "found"
    elif any(v is not None for _, v, _ in judged):  # no presence scores: the frame shows the GenEval verdict
        state = "missed" if any(v == 0 for _, v, _ in judged) else "found"
    else:
        state = "unscored"
    lines = []
    if marks is not None:
        found, missed = marks
        lines += [f'<span class="ok">&#10003; {html.escape(q)}</span>' for q in found]
        lines += [f'<span class="miss">&#10007; {html.escape(q)}</span>' for q in missed]
    for name, verdict, reason in judged:
        if verdict is None:
            lines.append(f'<span class="reason">{html.escape(name)}: {html.escape(reason or "no verdict")}</span>')
        elif verdict:
            lines.append(f'<span class="reason ok">&#10003; {html.escape(name)}</span>')
        else:
            lines.append(f'<span class="reason miss">&#10007; {html.escape(name)}: {html.escape(reason)}</span>')
    caption = "<figcaption>" + "<br>".join(lines) + "</figcaption>" if lines else ""
    alt = html.escape(f"{row['method']} {row['prompt_id']} seed {row['seed']}")
    return (f'<figure class="cell {state}"><a href="../{html.escape(row["path"])}">'
            f'<img class="grid-image" src="{html.escape(src)}" width="{width}" height="{height}" loading="lazy" '
            f'alt="{alt}"></a>{caption}</figure>')


def prompt_grid(run_dir: Path, report_dir: Path, prompt_rows: list[dict], methods: list[str], seeds: list[int]) -> str:
    first = prompt_rows[0]
    by_key = {(r["method"], int(r["seed"])): r for r in prompt_rows}
    shown = [m for m in methods if any(key[0] == m for key in by_key)]
    head = "<tr><th></th>" + "".join(f"<th>seed {s}</th>" for s in seeds) + "</tr>"
    lines = []
    for method in shown:
        cells = "".join(f"<td>{cell_html(run_dir, report_dir, by_key[(method, s)])}</td>" if (method, s) in by_key
                        else "<td></td>" for s in seeds)
        lines.append(f"<tr><th>{html.escape(method)}</th>{cells}</tr>")
    title = f"{first['prompt_id']}: {first['prompt']}"
    return (f'<section class="prompt" id="{html.escape(slug(first["prompt_id"]))}"><h3>{html.escape(title)}</h3>'
            f'<div class="scroll"><table class="grid">{head}{"".join(lines)}</table></div></section>')


def conventions_html(described: dict) -> str:
    items = []
    for name, info in described.items():
        columns = ", ".join(f"{c} ({'higher' if up else 'lower'} is better)"
                            for c, up in info.get("columns", {}).items())
        items.append(f"<li><code>{html.escape(name)}</code>: {html.escape(columns)}. "
                     f"{html.escape(info.get('convention', ''))}</li>")
    return f"<h2>Conventions</h2><ul>{''.join(items)}</ul>" if items else ""


def category_pages(category: str, prompts: int, per_page: int) -> list[str]:
    count = max(1, -(-prompts // per_page))
    base = f"category-{slug(category)}"
    return [f"{base}.html" if i == 0 else f"{base}-{i + 1}.html" for i in range(count)]


def geneval_tables_html(results: dict) -> str:
    """GenEval's task tables (results.json's "geneval"), as in `summary.md`."""
    return "".join(f'<h2>{html.escape(title)}</h2><p class="note">{html.escape(note.replace("`", ""))}</p>'
                   + table_html(header, rows) for title, note, header, rows in geneval_tables(results))


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
    return config, summary, paired, rows, described, results.get("geneval", {})


def write_html_report(run_dir: Path, images_per_page: int = IMAGES_PER_PAGE) -> Path:
    """Write `run_dir/report/` from the run folder's files and return its `index.html`."""
    run_dir = Path(run_dir)
    if not (run_dir / "run_config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a benchmark run folder (no run_config.json)")
    config, summary, paired, rows, described, geneval = _load(run_dir)
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
        chart_html = f'<img class="chart" src="charts/{slug(category)}.png" alt="{html.escape(category)} chart">' \
            if chart else ""
        for number, name in enumerate(pages):
            chunk = prompt_ids[number * per_page:(number + 1) * per_page]
            nav = ['<a href="index.html">overview</a>'] + [
                f"<span>page {i + 1}</span>" if i == number else f'<a href="{p}">page {i + 1}</a>'
                for i, p in enumerate(pages)] if len(pages) > 1 else ['<a href="index.html">overview</a>']
            body = (f"<h1>{html.escape(category)}</h1><nav>{''.join(nav)}</nav>"
                    f"{summary_table_html(part)}{chart_html}"
                    f'<h2>Images (prompts {number * per_page + 1}-{number * per_page + len(chunk)} of '
                    f'{len(prompt_ids)})</h2>'
                    '<p class="note">Rows: methods; columns: seeds. Frame: green when the presence metric found every '
                    'object (without presence scores: when GenEval judged the image correct), red when it missed '
                    'one (GenEval: judged it wrong), grey when unscored; &#10003; found, &#10007; missed, '
                    'GenEval\'s reason after its name.</p>'
                    '<label><input type="checkbox" id="only-missed"> only images with a missed object</label>'
                    + "".join(prompt_grid(run_dir, report_dir, by_prompt[p], methods, seeds) for p in chunk)
                    + f"<nav>{''.join(nav)}</nav>")
            write_text_atomic(report_dir / name, page_html(f"{category} - {config.get('suite')}", body, FILTER_SCRIPT))
            written.append(report_dir / name)
        links.append(f'<li><a href="{pages[0]}">{html.escape(category)}</a>: {len(prompt_ids)} prompts, '
                     f"{len(in_category)} images{f', {len(pages)} pages' if len(pages) > 1 else ''}</li>")

    # figures of traces the folder no longer holds
    remove_made(run_dir, list((report_dir / TRACE_DIR).glob("*.png")))
    attention, figures = write_attention_page(run_dir, report_dir)
    all_part = summary[summary["category"] == "all"]
    chart = bar_chart(all_part, methods, report_dir / "charts" / "all.png", "all categories")
    settings = f"suite {config.get('suite')}, model {model_label(config.get('model'))}"
    settings += "; " + "; ".join(f"{m}: {', '.join(f'{k} {v}' for k, v in row.items())}"
                                 for m, row in method_settings(config).items())
    body = (f"<h1>{html.escape(str(config.get('suite')))} on {html.escape(model_label(config.get('model')))}</h1>"
            f"<p>{html.escape(settings)}; {len(seeds)} seeds; {len(rows)} images; methods "
            f"{html.escape(', '.join(methods))}.</p>"
            "<h2>Summary (mean [95% bootstrap interval])</h2>" + summary_table_html(summary)
            + ('<img class="chart" src="charts/all.png" alt="chart of all categories">' if chart else "")
            + paired_table_html(paired) + geneval_tables_html(geneval)
            + f"<h2>Images by category</h2><ul>{''.join(links)}</ul>"
            + (f'<h2>Attention maps</h2><p><a href="attention.html">{attention}</a></p>' if attention else "")
            + conventions_html(described))
    index = report_dir / "index.html"
    write_text_atomic(index, page_html(f"{config.get('suite')} report", body))
    note_made(run_dir, [*written, *figures, index] + ([report_dir / "attention.html"] if attention else []))
    return index


def write_attention_page(run_dir: Path, report_dir: Path) -> tuple[str, list[Path]]:
    """`attention.html` from the traces the run folder holds (`attention/`, written by `benchmark trace` or the
    run); returns the link text ("" when there are none) and the figures copied. Nothing is generated here."""
    from sae.visual import losses_table_html

    traces = sorted((run_dir / TRACE_DIR).glob("*.json"))
    out = report_dir / TRACE_DIR
    sections, methods, copied = [], {}, []
    for path in traces:
        trace = json.loads(path.read_text())
        figure = path.with_suffix(".png")
        if not figure.is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, out / figure.name)  # the report folder stands alone
        copied.append(out / figure.name)
        methods.update(dict.fromkeys(trace["methods"]))
        rows = [{"label": name, "losses": values["losses"]} for name, values in trace["methods"].items()]
        note = "".join(f'<p class="note">{html.escape(n)}</p>' for n in trace.get("notes", []))
        name = html.escape(figure.stem)
        sections.append(f'<section class="attention" id="{name}"><h3>{html.escape(trace["prompt_id"])}: '
                        f'{html.escape(trace["prompt"])} (seed {trace["seed"]})</h3>{note}'
                        f'<img class="attention-figure" src="{TRACE_DIR}/{name}.png" '
                        f'alt="attention maps of {html.escape(trace["prompt_id"])}">'
                        f'{losses_table_html(rows, trace["step_labels"])}</section>')
    if not sections:
        return "", copied
    body = ('<h1>Cross-attention maps</h1><nav><a href="index.html">overview</a></nav>'
            '<p class="note">Per object, the 1/4-resolution cross-attention maps that the SepEn losses use '
            "(mean over the captured layers and heads, conditional half), at evenly spaced denoising steps of one "
            "seed regenerated with the run's settings, each scaled to its own peak and drawn over the final image. "
            "S: Separate, E: Enhance of those maps (sae.losses; lower is better).</p>" + "".join(sections))
    write_text_atomic(report_dir / "attention.html", page_html("attention maps", body))
    return f"{len(sections)} prompts: {', '.join(methods)}", copied
