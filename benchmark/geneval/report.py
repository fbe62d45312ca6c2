"""GenEval's task table from a run's records, for `summary.md`, `results.json` and the HTML report.

Per GenEval metric the run carries (`geneval_correct`, `geneval_owlv2_correct`, or any metric whose convention
reads "GenEval-compatible"), one row per method: each of the six tasks (the suite categories) with its score (the
share of correct images) and 95% bootstrap interval, the overall score (the unweighted mean of the task scores; its
interval from images resampled within each task, so that every task keeps its size) and the share of prompts with
at least one correct image (`rules.summarize`). Then each method against the baseline on the same prompts and
seeds: per task the mean of the per-image differences, overall the mean of the task differences, with intervals
the same way. Images of other categories and images without a verdict (NaN) count nowhere.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..report import BASELINE, BOOTSTRAP_SAMPLES, bootstrap_interval, ordered_methods
from .rules import TAGS, summarize

KNOWN_METRICS = ("geneval", "geneval_owlv2")  # found without a description too (a folder written by hand)
CONVENTION = re.compile(r"GenEval-compatible \(judge=[^)]*\)")


def _verdict(value) -> float | None:
    if value is None or isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _number(value: float) -> float | None:
    """A value for results.json (NaN is not JSON)."""
    return None if value is None or math.isnan(value) else float(value)


def geneval_metrics(rows: list[dict], described: dict) -> list[str]:
    """The GenEval metrics whose verdicts some image of the six tasks carries."""
    names = list(KNOWN_METRICS) + [n for n, info in described.items()
                                   if CONVENTION.match(str(info.get("convention", ""))) and n not in KNOWN_METRICS]
    return [n for n in names
            if any(r.get("category") in TAGS and _verdict(r.get(f"{n}_correct")) is not None for r in rows)]


def judge_label(name: str, described: dict) -> str:
    """"GenEval-compatible (judge=...)", as the metric's convention begins."""
    found = CONVENTION.match(str(described.get(name, {}).get("convention", "")))
    return found.group(0) if found else "GenEval-compatible (judge not recorded)"


def task_mean_interval(groups: list[np.ndarray], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean of the group means, each group resampled within itself (fixed seed)."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.mean([rng.choice(g, size=(BOOTSTRAP_SAMPLES, len(g)), replace=True).mean(axis=1) for g in groups],
                    axis=0)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _judged(rows: list[dict], column: str) -> list[tuple[str, int, str, float]]:
    """(prompt id, seed, task, verdict) of the images of the six tasks that have a verdict."""
    out = []
    for row in rows:
        verdict = _verdict(row.get(column))
        if row.get("category") in TAGS and verdict is not None:
            out.append((row["prompt_id"], int(row["seed"]), row["category"], verdict))
    return out


def method_scores(rows: list[dict], column: str) -> dict:
    """One method's task scores, overall score and share of prompts with a correct image, with intervals."""
    judged = _judged(rows, column)
    summary = summarize((p, tag, v) for p, _, tag, v in judged)
    values = {tag: np.array([v for _, _, t, v in judged if t == tag]) for tag in summary["tasks"]}
    tasks = {}
    for tag, score in summary["tasks"].items():
        low, high = bootstrap_interval(values[tag])
        tasks[tag] = {"score": score, "ci_low": low, "ci_high": high, "images": len(values[tag])}
    low, high = task_mean_interval(list(values.values()))
    prompts_correct = len({p for p, _, _, v in judged if v})
    return {"images": summary["images"], "correct_images": _number(summary["correct_images"]), "tasks": tasks,
            "overall": {"score": _number(summary["overall"]), "ci_low": _number(low), "ci_high": _number(high),
                        "tasks": len(tasks)},
            "prompts": summary["prompts"], "prompts_with_correct": prompts_correct,
            "prompts_any_correct": _number(summary["prompts_any_correct"])}


def paired_scores(ours: list[dict], base: list[dict], column: str) -> dict:
    """The method minus the baseline on the same (prompt, seed): per task the mean difference, overall the mean of
    the task differences, with intervals; images gained (0 -> 1) and lost (1 -> 0)."""
    theirs = {(p, s): v for p, s, _, v in _judged(base, column)}
    diffs: dict[str, list[float]] = {}
    for prompt_id, seed, tag, verdict in _judged(ours, column):
        if (prompt_id, seed) in theirs:
            diffs.setdefault(tag, []).append(verdict - theirs[(prompt_id, seed)])
    groups = {tag: np.array(diffs[tag]) for tag in TAGS if tag in diffs}
    tasks = {}
    for tag, diff in groups.items():
        low, high = bootstrap_interval(diff)
        tasks[tag] = {"delta": float(diff.mean()), "ci_low": low, "ci_high": high, "pairs": len(diff)}
    low, high = task_mean_interval(list(groups.values()))
    every = np.concatenate(list(groups.values())) if groups else np.array([])
    overall = float(np.mean([t["delta"] for t in tasks.values()])) if tasks else None
    return {"pairs": len(every), "gained": int((every > 0).sum()), "lost": int((every < 0).sum()), "tasks": tasks,
            "overall": {"delta": overall, "ci_low": _number(low), "ci_high": _number(high), "tasks": len(tasks)}}


def geneval_results(rows: list[dict], described: dict, method_order: list[str] | None = None,
                    baseline: str = BASELINE) -> dict:
    """{metric: {column, convention, methods: {method: scores}, baseline, paired: {method: differences}}} for every
    GenEval metric of the run; {} when it has none."""
    results = {}
    for name in geneval_metrics(rows, described):
        column = f"{name}_correct"
        by_method: dict[str, list[dict]] = {}
        for row in rows:
            by_method.setdefault(row["method"], []).append(row)
        methods = ordered_methods(list(by_method), method_order)
        scores = {m: method_scores(by_method[m], column) for m in methods}
        paired = {m: paired_scores(by_method[m], by_method[baseline], column)
                  for m in methods if m != baseline and baseline in by_method}
        results[name] = {"column": column, "convention": judge_label(name, described),
                         "methods": {m: s for m, s in scores.items() if s["images"]}, "baseline": baseline,
                         "paired": {m: p for m, p in paired.items() if p["pairs"]}}
    return results


def _interval(value, low, high, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    form = "+.3f" if signed else ".3f"
    return f"{value:{form}} [{low:{form}}, {high:{form}}]"


def geneval_tables(results: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows of text cells) of each table; the Markdown and HTML are both made from these."""
    tables = []
    for name, result in results.items():
        suffix = "" if name == "geneval" else f" ({name})"
        header = ["method", "images", *TAGS, "overall", "prompts with a correct image"]
        rows = []
        for method, s in result["methods"].items():
            overall = s["overall"]
            partial = "" if overall["tasks"] == len(TAGS) else f" ({overall['tasks']} of {len(TAGS)} tasks)"
            cells = [method, str(s["images"])]
            cells += [_interval(t["score"], t["ci_low"], t["ci_high"]) if t else "n/a"
                      for t in (s["tasks"].get(tag) for tag in TAGS)]
            cells.append(_interval(overall["score"], overall["ci_low"], overall["ci_high"]) + partial)
            cells.append(f"{s['prompts_any_correct']:.3f} ({s['prompts_with_correct']}/{s['prompts']})")
            rows.append(cells)
        note = (f"Per task the share of correct images (`{result['column']}`) with its 95% bootstrap interval; "
                "overall: the unweighted mean of the task scores (interval: images resampled within each task). "
                f"Convention: {result['convention']}: GenEval's rules with this judge, not GenEval's own numbers.")
        tables.append((f"GenEval tasks{suffix}", note, header, rows))
        if result["paired"]:
            header = ["method", "pairs", *TAGS, "overall"]
            rows = []
            for method, p in result["paired"].items():
                cells = [method, str(p["pairs"])]
                cells += [_interval(t["delta"], t["ci_low"], t["ci_high"], signed=True) if t else "n/a"
                          for t in (p["tasks"].get(tag) for tag in TAGS)]
                o = p["overall"]
                cells.append(_interval(o["delta"], o["ci_low"], o["ci_high"], signed=True)
                             + f" ({p['gained']} gained, {p['lost']} lost)")
                rows.append(cells)
            note = (f"Each method minus `{result['baseline']}` on the same prompts and seeds: per task the mean "
                    "difference per image, overall the mean of the task differences; 95% bootstrap intervals over "
                    "the pairs.")
            tables.append((f"GenEval tasks{suffix} paired against {result['baseline']}", note, header, rows))
    return tables


def geneval_markdown(results: dict, level: int = 2) -> str:
    """The task tables as markdown, each under a heading of `level` (3 inside another document's section)."""
    lines = []
    for title, note, header, rows in geneval_tables(results):
        lines += ["", f"{'#' * level} {title}", "", note, "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n" if lines else ""
