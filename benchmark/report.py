"""Tables from the per-image records: `summary.csv`, `summary.md` and `results.json`, and run comparisons.

Everything here is rebuilt from the files of a run folder (`python -m benchmark report RUN_DIR`), never
from a run's memory: rows are method x suite category (plus `all`), columns each metric's mean with a 95%
bootstrap interval and the image count, and each set metric's value (FID: `scores/<name>.sets.json`) as
one column without an interval. Every metric's convention goes into `results.json` and under the table.

`paired.csv` (and a second table in `summary.md`) compares each method with the baseline (`plain`) image by
image: the same prompt and seed start from the same noise, so the mean of the per-image differences, with a
bootstrap interval over those differences, separates two methods with far fewer images than two independent
means would.

A metric may add tables of its own (`Metric.report_section`): GenEval's task table goes into `summary.md` and under
"geneval" in `results.json` that way (`metric_sections`).
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from .records import build_samples, read_derived_json, read_jsonl, read_run_config, write_json, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]

RECORD_FIELDS = {"method", "prompt_id", "suite", "category", "prompt", "objects", "seed", "path", "steps",
                 "guidance", "seconds", "model", "height", "width", "domain", "batch", "checkpoint_sha256"}
BOOTSTRAP_SAMPLES = 1000
BASELINE = "plain"


def bootstrap_interval(values: np.ndarray, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean (fixed seed, so that tables reproduce)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(BOOTSTRAP_SAMPLES, len(values)), replace=True).mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def score_columns(rows: list[dict], declared: list[str] | None = None) -> list[str]:
    """The per-image metric columns of the table, in the order the records carry them: the columns the run's
    metrics declare (`Metric.columns`); without declarations (a folder written by hand), every numeric field
    that is not a record field."""
    columns = {}
    for row in rows:
        for key, value in row.items():
            if declared is not None:
                if key in declared:
                    columns[key] = True
            elif key not in RECORD_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns[key] = True
    return list(columns)


def declared_columns(described: dict) -> list[str] | None:
    """Every column the described metrics declare, or None when none is described."""
    columns = [c for info in described.values() for c in info.get("columns", {})]
    return columns or None


def read_set_scores(run_dir: Path) -> tuple[dict, dict]:
    """Set metrics' values, {(method, category): (images, {column: value})}, and their descriptions."""
    values, described = {}, {}
    for path in sorted((Path(run_dir) / "scores").glob("*.sets.json")):
        data = read_derived_json(path)
        if data is None:
            continue
        described[path.name.removesuffix(".sets.json")] = data["metric"]
        for group in data["groups"]:
            key = (group["method"], group["category"])
            values.setdefault(key, (group["images"], {}))[1].update(group["values"])
    return values, described


def set_columns(summary: pd.DataFrame) -> list[str]:
    """The set metrics' columns of a summary (those without a mean and interval)."""
    return [c for c in summary.columns if c not in ("method", "category", "images")
            and not c.endswith(("_mean", "_ci_low", "_ci_high", "_n"))]


def ordered_methods(found: list[str], order: list[str] | None) -> list[str]:
    """The methods found, those the run config lists first in its order, then any others as found."""
    order = order or []
    return [m for m in order if m in found] + [m for m in found if m not in order]


def summarize(rows: list[dict], method_order: list[str] | None = None, sets: dict | None = None,
              declared: list[str] | None = None) -> pd.DataFrame:
    """One row per (method, category) and per (method, "all"), methods in `method_order` (else as found).
    `sets` (from `read_set_scores`) adds the set metrics' columns; a value computed over another number of
    images than the group now holds (stale: the run grew since it was scored) shows as n/a. `declared`: the
    metrics' columns (`declared_columns`)."""
    columns = score_columns(rows, declared)
    frame = pd.DataFrame(rows)
    out = []
    if frame.empty:
        return pd.DataFrame(columns=["method", "category", "images"])
    found = list(dict.fromkeys(frame["method"]))
    methods = ordered_methods(found, method_order)
    categories = [c for c in dict.fromkeys(frame["category"]) if c != "all"]  # "all": lines without a category
    for method in methods:
        for category in categories + ["all"]:
            part = frame[(frame["method"] == method) & ((frame["category"] == category) | (category == "all"))]
            if part.empty:
                continue
            row = {"method": method, "category": category, "images": len(part)}
            for column in columns:
                values = pd.to_numeric(part[column], errors="coerce").dropna().to_numpy(dtype=float)
                low, high = bootstrap_interval(values)
                row[f"{column}_mean"] = float(values.mean()) if len(values) else float("nan")
                row[f"{column}_ci_low"], row[f"{column}_ci_high"] = low, high
                row[f"{column}_n"] = len(values)  # the images scored: fewer than `images` while scores are missing
            images, values = (sets or {}).get((method, category), (len(part), {}))
            row.update({k: (v if images == len(part) else float("nan")) for k, v in values.items()})
            out.append(row)
    return pd.DataFrame(out)


def paired_differences(rows: list[dict], method_order: list[str] | None = None,
                       baseline: str = BASELINE, declared: list[str] | None = None) -> pd.DataFrame:
    """Per (method, category) and (method, "all"): each per-image metric of the method minus the baseline's on the
    same prompt and seed, averaged, with a 95% bootstrap interval over the pairs; for a 0/1 metric also how many
    images the method gained and lost. Empty when the run has no baseline images."""
    frame = pd.DataFrame(rows)
    empty = pd.DataFrame(columns=["method", "baseline", "category", "pairs"])  # still a CSV header when written
    if frame.empty or baseline not in set(frame["method"]):
        return empty
    columns = score_columns(rows, declared)
    key = ["prompt_id", "seed"]
    base = frame[frame["method"] == baseline].set_index(key)[columns]
    found = [m for m in dict.fromkeys(frame["method"]) if m != baseline]
    methods = ordered_methods(found, method_order)
    out = []
    for method in methods:
        joined = frame[frame["method"] == method].set_index(key).join(base, rsuffix="@base", how="inner")
        for category in [c for c in dict.fromkeys(joined["category"]) if c != "all"] + ["all"]:
            part = joined if category == "all" else joined[joined["category"] == category]
            row = {"method": method, "baseline": baseline, "category": category, "pairs": len(part)}
            for column in columns:
                ours = pd.to_numeric(part[column], errors="coerce")
                theirs = pd.to_numeric(part[f"{column}@base"], errors="coerce")
                diff = (ours - theirs).dropna().to_numpy(dtype=float)
                row[f"{column}_delta"] = float(diff.mean()) if len(diff) else float("nan")
                row[f"{column}_ci_low"], row[f"{column}_ci_high"] = bootstrap_interval(diff)
                if len(diff) and set(np.unique(np.concatenate([ours.dropna(), theirs.dropna()]))) <= {0.0, 1.0}:
                    row[f"{column}_gained"], row[f"{column}_lost"] = int((diff > 0).sum()), int((diff < 0).sum())
            out.append(row)
    return pd.DataFrame(out) if out else empty


def method_labels(config: dict, names: dict | None = None) -> dict[str, str]:
    """How the tables name a method (its name, or its `names` entry) where it is an experiment on the run's model
    family (`experimental`): "sepen (experimental on sd3)"."""
    names = names or {}
    return {method: f"{names.get(method, method)} (experimental on {family})"
            for method, family in (config.get("experimental") or {}).items()}


def relabel_cells(rows: list[list[str]], labels: dict) -> list[list[str]]:
    """Text cells of a table with each cell that names a method replaced by its label (a metric's own tables)."""
    return [[labels.get(cell, cell) for cell in row] for row in rows]


def relabel_markdown(text: str, labels: dict) -> str:
    """`relabel_cells` on every Markdown table row of `text`."""
    if not labels:
        return text
    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if body.startswith("| ") and body.endswith(" |"):
            line = "| " + " | ".join(labels.get(c, c) for c in body[2:-2].split(" | ")) + " |" + line[len(body):]
        lines.append(line)
    return "".join(lines)


def experimental_note(config: dict) -> str:
    """One sentence for a run whose methods include experiments on its model family, or ""."""
    experimental = config.get("experimental") or {}
    if not experimental:
        return ""
    families = sorted(set(experimental.values()))
    return (f"Experimental on {', '.join(families)}: {', '.join(experimental)} read the maps of a transformer's text "
            "attention, a designed experiment not yet validated on real weights (docs/backbones.md).")


def paired_cells(paired: pd.DataFrame, labels: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """The paired differences as text cells, "+0.097 [+0.014, +0.181] (9 gained, 2 lost)" per metric (the counts
    for 0/1 metrics); the Markdown and HTML tables are both made from these. `labels`: names for methods
    (`method_labels`)."""
    metrics = [c.removesuffix("_delta") for c in paired.columns if c.endswith("_delta")]
    labels = labels or {}
    rows = []
    for _, row in paired.iterrows():
        cells = [labels.get(row["method"], str(row["method"])), str(row["category"]), str(int(row["pairs"]))]
        for metric in metrics:
            delta = row[f"{metric}_delta"]
            cell = "n/a" if pd.isna(delta) else \
                f"{delta:+.3f} [{row[f'{metric}_ci_low']:+.3f}, {row[f'{metric}_ci_high']:+.3f}]"
            if not pd.isna(row.get(f"{metric}_gained", float("nan"))):
                cell += f" ({int(row[f'{metric}_gained'])} gained, {int(row[f'{metric}_lost'])} lost)"
            cells.append(cell)
        rows.append(cells)
    return ["method", "category", "pairs"] + metrics, rows


def paired_title(paired: pd.DataFrame) -> str:
    return (f"Paired against `{paired['baseline'].iloc[0]}` (the same prompts and seeds; mean difference per image, "
            "95% bootstrap interval over the pairs)")


def paired_markdown(paired: pd.DataFrame, labels: dict | None = None) -> str:
    if paired.empty:
        return ""
    header, rows = paired_cells(paired, labels)
    lines = ["", paired_title(paired) + ":", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def summary_cells(summary: pd.DataFrame, labels: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """The summary as text cells: a header, then per row each metric's "mean [ci_low, ci_high]" (a set metric's
    value alone, "n/a" where there is none). The Markdown and HTML tables are both made from these. `labels`:
    names for methods (`method_labels`)."""
    labels = labels or {}
    means = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    sets = set_columns(summary)
    header = ["method", "category", "images"] + means + sets
    rows = []
    for _, row in summary.iterrows():
        cells = [labels.get(row["method"], str(row["method"])), str(row["category"]), str(int(row["images"]))]
        for column in means:
            mean = row[f"{column}_mean"]
            scored = row.get(f"{column}_n", row["images"])
            count = "" if pd.isna(scored) or int(scored) == int(row["images"]) else f" (n={int(scored)})"
            cells.append("n/a" if pd.isna(mean) else
                         f"{mean:.3f} [{row[f'{column}_ci_low']:.3f}, {row[f'{column}_ci_high']:.3f}]{count}")
        cells += ["n/a" if pd.isna(row[c]) else f"{row[c]:.3f}" for c in sets]
        rows.append(cells)
    return header, rows


def markdown_table(summary: pd.DataFrame, labels: dict | None = None) -> str:
    header, rows = summary_cells(summary, labels)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def conventions_text(described: dict) -> str:
    """One line per metric: its columns (higher or lower is better) and its convention."""
    lines = []
    for name, info in described.items():
        columns = ", ".join(f"{c} ({'higher' if up else 'lower'} is better)"
                            for c, up in info.get("columns", {}).items())
        lines.append(f"- `{name}`: {columns}. {info.get('convention', '')}".rstrip())
    return "\n".join(["", "Conventions:", ""] + lines) + "\n" if lines else ""


def method_settings(config: dict) -> dict:
    """Each method's sampling settings (and its own note, e.g. what a finetuning method trains on) as the run
    used them."""
    settings = {}
    for method in config.get("methods", []):
        row = {"steps": config.get("steps"), "guidance": config.get("guidance"),
               **(config.get("sampling") or {}).get(method, {})}
        note = (config.get("notes") or {}).get(method)
        if note:
            row["trains_on"] = note
        family = (config.get("experimental") or {}).get(method)
        if family:
            row["experimental_on"] = family
        settings[method] = row
    return settings


def settings_markdown(config: dict) -> str:
    """The per-method settings as a table: what a reader needs to compare with a paper's numbers."""
    settings = method_settings(config)
    if not settings:
        return ""
    lines = ["", "Settings per method:", "", "| method | steps | guidance | trains on |", "|---|---|---|---|"]
    labels = method_labels(config)
    lines += [f"| {labels.get(m, m)} | {row['steps']} | {row['guidance']} | {row.get('trains_on', '-')} |"
              for m, row in settings.items()]
    if config.get("dtype"):
        lines += ["", f"Sampled in {config['dtype']}, {config.get('batch_size')} images a pipeline call."]
    return "\n".join(lines) + "\n"


def model_label(model) -> str:
    """The run's model as a reader should see it: a folder inside this repository relative to its root (the
    shipped shapes model is `benchmark/shapes/pretrained` on every machine), anything else as recorded."""
    path = Path(str(model)).expanduser()
    if path.is_absolute() and path.resolve().is_relative_to(REPO_ROOT):
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    return str(model)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def library_versions() -> dict:
    from sae.checkpoint import library_versions as sae_versions

    import sae

    return {**sae_versions(), "sae": sae.__version__, "python": platform.python_version()}


def timings(rows: list[dict], run_dir: Path) -> dict:
    """Seconds per image per method, and the one-off finetuning cost (`finetune.jsonl`, from `Method.prepare`)."""
    frame = pd.DataFrame(rows)
    result = {}
    if not frame.empty:
        for method, part in frame.groupby("method", sort=False):
            seconds = part["seconds"].mean() if "seconds" in part else float("nan")  # none: imported images
            result[method] = {"seconds_per_image": None if pd.isna(seconds) else float(seconds), "images": len(part)}
    # one row per checkpoint: prompts that share one (a repeated prompt) paid for it once
    finetunes = {row.get("checkpoint", row["prompt_id"]): row for row in read_jsonl(run_dir / "finetune.jsonl")}
    if finetunes:
        seconds = [row["seconds"] for row in finetunes.values()]
        result["finetuning"] = {"checkpoints": len(seconds), "seconds_total": float(sum(seconds)),
                                    "seconds_per_checkpoint": float(np.mean(seconds))}
    return result


def metric_sections(rows: list[dict], described: dict, method_order: list[str] | None) -> dict:
    """Tables the run's metrics add beyond the per-image means (`Metric.report_section`): {results.json key:
    (values, summary.md text)}, for the sections whose metrics the run carries (described, or found in the rows'
    columns of a folder written by hand)."""
    from .metrics import METRICS, report_sections

    columns = {column for row in rows for column in row}
    names = list(described) + [name for name in METRICS if name not in described
                               and any(column.startswith(f"{name}_") for column in columns)]
    found = {}
    for section in report_sections(names):
        values = section.values(rows, described, method_order)
        if values:
            found[section.key] = (values, section.markdown(values))
    return found


def write_report(run_dir: Path) -> pd.DataFrame:
    """Rebuild samples.jsonl, summary.csv, summary.md and results.json from the run folder."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    rows = build_samples(run_dir)
    sets, sets_described = read_set_scores(run_dir)
    described = {**config.get("metrics_described", {}), **sets_described}
    declared = declared_columns(described)
    summary = summarize(rows, config.get("methods"), sets, declared)
    paired = paired_differences(rows, config.get("methods"), declared=declared)
    sections = metric_sections(rows, described, config.get("methods"))
    write_text_atomic(run_dir / "summary.csv", summary.to_csv(index=False))
    write_text_atomic(run_dir / "paired.csv", paired.to_csv(index=False))
    title = (f"# {config.get('suite')} on {model_label(config.get('model'))} "
             f"({config.get('domain', 'natural')} suites)\n\n")
    note = experimental_note(config)
    if note:
        title += note + "\n\n"
    labels = method_labels(config)
    write_text_atomic(run_dir / "summary.md",
                      title + markdown_table(summary, labels) + paired_markdown(paired, labels)
                      + "".join(relabel_markdown(markdown, labels) for _, markdown in sections.values())
                      + settings_markdown(config)
                      + conventions_text(described))
    results = {"config": config, "settings": method_settings(config), "versions": library_versions(),
               "git_commit": git_commit(),
               "metrics": described, "timings": timings(rows, run_dir),
               "images": len(rows), "summary": json.loads(summary.to_json(orient="records")),
               "paired": json.loads(paired.to_json(orient="records")),
               **{key: values for key, (values, _) in sections.items()}}
    write_json(run_dir / "results.json", results)
    return summary


def printed_tables(run_dir: Path) -> str:
    """What the commands print of a run folder (`run`, `report`, `score`): the note on methods that are experiments
    on the model, the summary table and the metrics' own tables, the methods labelled (`method_labels`)."""
    from .metrics import report_sections

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    config = results.get("config", {})
    labels = method_labels(config)
    note = experimental_note(config)
    text = (note + "\n" if note else "") + markdown_table(pd.read_csv(run_dir / "summary.csv"), labels)
    for section in report_sections(results.get("metrics", {})):  # e.g. GenEval's six tasks and overall
        if results.get(section.key):
            text += relabel_markdown(section.markdown(results[section.key]), labels)
    return text


def compare(run_a: Path, run_b: Path) -> pd.DataFrame:
    """Per (method, category): run B's means minus run A's. Where both runs hold images of one method for the same
    prompts and seeds (two models, or two settings, on one suite), each per-image difference is paired and gets its
    95% bootstrap interval and, for 0/1 metrics, how many images B gained and lost (`paired_differences`)."""
    from .records import build_samples

    a = pd.read_csv(Path(run_a) / "summary.csv")
    b = pd.read_csv(Path(run_b) / "summary.csv")
    joined = a.merge(b, on=["method", "category"], suffixes=("_a", "_b"))
    out = joined[["method", "category"]].copy()
    columns = [c for c in a.columns if c.endswith("_mean") and c in b.columns]
    columns += [c for c in set_columns(a) if c in b.columns]
    for column in columns:
        name = column.removesuffix("_mean")
        out[f"{name}_a"] = joined[f"{column}_a"]
        out[f"{name}_b"] = joined[f"{column}_b"]
        out[f"{name}_delta"] = joined[f"{column}_b"] - joined[f"{column}_a"]
    rows_a, rows_b = build_samples(Path(run_a)), build_samples(Path(run_b))
    paired = []
    for method in out["method"].unique():
        rows = ([{**r, "method": "a"} for r in rows_a if r["method"] == method]
                + [{**r, "method": "b"} for r in rows_b if r["method"] == method])
        part = paired_differences(rows, baseline="a")
        if not part.empty:
            paired.append(part.assign(method=method).drop(columns=["baseline"]))
    if not paired:
        return out
    intervals = pd.concat(paired)
    intervals = intervals.drop(columns=[c for c in intervals.columns if c.endswith("_delta")])
    return out.merge(intervals, on=["method", "category"], how="left")


def compare_markdown(table: pd.DataFrame, labels: dict | None = None) -> str:
    """`compare`'s table as markdown: per metric "A -> B: delta [low, high] (gained, lost)". `labels`: names for
    methods (`method_labels`)."""
    labels = labels or {}
    metrics = [c.removesuffix("_delta") for c in table.columns if c.endswith("_delta")]
    header = ["method", "category", "pairs"] + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        pairs = row.get("pairs", float("nan"))
        cells = [labels.get(row["method"], str(row["method"])), str(row["category"]),
                 "-" if pd.isna(pairs) else str(int(pairs))]
        for metric in metrics:
            cell = f"{row[f'{metric}_a']:.3f} -> {row[f'{metric}_b']:.3f}: {row[f'{metric}_delta']:+.3f}"
            if not pd.isna(row.get(f"{metric}_ci_low", float("nan"))):
                cell += f" [{row[f'{metric}_ci_low']:+.3f}, {row[f'{metric}_ci_high']:+.3f}]"
            if not pd.isna(row.get(f"{metric}_gained", float("nan"))):
                cell += f" ({int(row[f'{metric}_gained'])} gained, {int(row[f'{metric}_lost'])} lost)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
