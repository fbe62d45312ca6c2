"""GenEval's task table (summary.md, results.json, the HTML report) against a hand computation, and each image's
GenEval reason in the HTML report; the run folders are written by hand (no model)."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from benchmark.geneval.report import geneval_results, task_mean_interval
from benchmark.geneval.rules import TAGS
from benchmark.html_report import write_html_report
from benchmark.report import bootstrap_interval, write_report

NAN = float("nan")
# per task, the verdicts of prompts a and b at seeds 0 and 1: [a0, a1, b0, b1]
PLAIN = {"single_object": [1, 1, 1, 1], "two_object": [1, 0, 0, 0], "counting": [0, 0, 0, 0],
         "colors": [1, 1, 0, 1], "position": [0, 0, 0, 1], "color_attr": [0, 1, 0, 0]}
SEPEN = {"single_object": [1, 1, 1, NAN], "two_object": [1, 1, 0, 1], "counting": [1, 0, 0, 0],
         "colors": [1, 1, 1, 1], "position": [0, 0, 0, 0], "color_attr": [1, 1, 0, 0]}
ODD_REASON = "expected <b>cat</b> & dog, found 0"


def make_geneval_run(out, verdicts=None, convention="GenEval-compatible (judge=stub): hand-written verdicts"):
    """A run folder with 8-px images and hand-written `geneval` scores; plus one image of another category
    (verdict 1, left out of the task table)."""
    verdicts = verdicts or {"plain": PLAIN, "sepen": SEPEN}
    from benchmark.records import append_jsonl, image_path, write_image

    out.mkdir(parents=True)
    (out / "run_config.json").write_text(json.dumps({
        "suite": "geneval", "model": "not/a-local-model", "methods": list(verdicts), "seeds": [0, 1], "steps": 2,
        "guidance": 7.5, "domain": "natural", "metrics": ["geneval"], "metrics_described": {"geneval": {
            "columns": {"geneval_correct": True}, "convention": convention}}}))
    scores = []
    for m, (method, tasks) in enumerate(verdicts.items()):
        items = [(f"{tag}/{p}", tag, seed, tasks[tag][2 * i + seed])
                 for tag in TAGS for i, p in enumerate("ab") for seed in (0, 1)]
        items += [("other/a", "other", seed, 1.0) for seed in (0, 1)]
        for n, (pid, category, seed, verdict) in enumerate(items):
            record = {"method": method, "prompt_id": pid, "suite": "geneval", "category": category,
                      "prompt": f"a photo of {pid}", "objects": [{"name": "cat"}], "seed": seed,
                      "model": "not/a-local-model", "steps": 2, "guidance": 7.5, "seconds": 0.1, "batch": 2}
            write_image(image_path(out, method, pid, seed), Image.new("RGB", (8, 8), (n * 5, 60 * m, 0)), record)
            reason = "" if verdict == 1 else ("not judged: no clauses" if verdict != verdict else ODD_REASON)
            scores.append({"method": method, "prompt_id": pid, "seed": seed,
                           "values": {"geneval_correct": float(verdict), "geneval_reason": reason}})
    append_jsonl(out / "scores" / "geneval.jsonl", scores)
    write_report(out)
    return out


def table(markdown: str, title: str) -> dict[str, list[str]]:
    """The rows (method -> cells) of the table under `## title` in summary.md."""
    lines = markdown.split(f"## {title}\n", 1)[1].splitlines()
    rows = [line for line in lines[lines.index(next(x for x in lines if x.startswith("|"))):]]
    rows = rows[:next((i for i, x in enumerate(rows) if not x.startswith("|")), len(rows))]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[2:])}


def test_task_table_matches_a_hand_computation(tmp_path):
    run = make_geneval_run(tmp_path / "run")
    results = json.loads((run / "results.json").read_text())["geneval"]["geneval"]
    plain, sepen = results["methods"]["plain"], results["methods"]["sepen"]
    assert [t for t in plain["tasks"]] == list(TAGS)
    assert {t: v["score"] for t, v in plain["tasks"].items()} == pytest.approx(
        {"single_object": 1, "two_object": 0.25, "counting": 0, "colors": 0.75, "position": 0.25, "color_attr": 0.25})
    assert plain["overall"]["score"] == pytest.approx(2.5 / 6)
    assert sepen["overall"]["score"] == pytest.approx(3.5 / 6)  # the image without a verdict counts nowhere
    assert sepen["tasks"]["single_object"]["images"] == 3 and sepen["images"] == 23 and plain["images"] == 24
    assert (plain["prompts_with_correct"], plain["prompts"]) == (7, 12)  # the `other` prompt is left out
    assert (sepen["prompts_with_correct"], sepen["prompts"]) == (8, 12)
    # each task's interval is the report's bootstrap of its images; a task all correct has a point interval
    colors = np.array(PLAIN["colors"], dtype=float)
    assert (plain["tasks"]["colors"]["ci_low"], plain["tasks"]["colors"]["ci_high"]) == bootstrap_interval(colors)
    assert (plain["tasks"]["single_object"]["ci_low"], plain["tasks"]["single_object"]["ci_high"]) == (1, 1)
    low, high = plain["overall"]["ci_low"], plain["overall"]["ci_high"]
    assert 0 <= low < 2.5 / 6 < high <= 1
    # paired on the same (prompt, seed): sepen's NaN image drops its pair
    paired = results["paired"]["sepen"]
    assert {t: v["delta"] for t, v in paired["tasks"].items()} == pytest.approx(
        {"single_object": 0, "two_object": 0.5, "counting": 0.25, "colors": 0.25, "position": -0.25,
         "color_attr": 0.25})
    assert paired["overall"]["delta"] == pytest.approx(1 / 6)
    assert (paired["pairs"], paired["gained"], paired["lost"]) == (23, 5, 1)
    assert paired["overall"]["ci_low"] < 1 / 6 < paired["overall"]["ci_high"]
    assert "plain" not in results["paired"]


def test_task_table_in_summary_md_with_the_judge_and_reproducible(tmp_path):
    run = make_geneval_run(tmp_path / "run")
    markdown = (run / "summary.md").read_text()
    rows = table(markdown, "GenEval tasks")
    plain = json.loads((run / "results.json").read_text())["geneval"]["geneval"]["methods"]["plain"]
    overall = plain["overall"]
    assert rows["plain"] == ["24", "1.000 [1.000, 1.000]", *rows["plain"][2:7],
                             f"{2.5 / 6:.3f} [{overall['ci_low']:.3f}, {overall['ci_high']:.3f}]", "0.583 (7/12)"]
    assert rows["plain"][3] == "0.000 [0.000, 0.000]"
    assert "GenEval-compatible (judge=stub)" in markdown.split("## GenEval tasks\n", 1)[1].split("|")[0]
    paired = table(markdown, "GenEval tasks paired against plain")
    assert list(paired) == ["sepen"] and paired["sepen"][0] == "23"
    assert paired["sepen"][-1].startswith("+0.167 [") and paired["sepen"][-1].endswith("(5 gained, 1 lost)")
    before = (run / "results.json").read_text()
    write_report(run)  # seeded: the same tables again
    after = json.loads((run / "results.json").read_text())
    assert after["geneval"] == json.loads(before)["geneval"]


def test_overall_interval_resamples_within_each_task():
    one = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert task_mean_interval([one]) == bootstrap_interval(one)  # one task: the plain bootstrap
    assert task_mean_interval([np.ones(3), np.zeros(7)]) == (0.5, 0.5)  # constant tasks: no spread
    low, high = bootstrap_interval(one)  # a constant second task halves the first one's spread
    assert task_mean_interval([one, np.ones(40)]) == pytest.approx(((low + 1) / 2, (high + 1) / 2))


def test_each_geneval_metric_gets_its_table_and_runs_without_one_get_none():
    rows = [{"method": "plain", "prompt_id": f"p{i}", "seed": 0, "category": "counting", "geneval_correct": i % 2,
             "geneval_owlv2_correct": 1.0} for i in range(4)]
    results = geneval_results(rows, {})
    assert list(results) == ["geneval", "geneval_owlv2"]
    assert results["geneval_owlv2"]["methods"]["plain"]["overall"] == {
        "score": 1.0, "ci_low": 1.0, "ci_high": 1.0, "tasks": 1}
    assert results["geneval"]["convention"] == "GenEval-compatible (judge not recorded)"
    assert results["geneval"]["paired"] == {}  # no baseline
    assert geneval_results([{"method": "plain", "prompt_id": "p", "seed": 0, "category": "two",
                             "geneval_correct": 1.0}], {}) == {}  # not one of the six tasks
    assert geneval_results([{"method": "plain", "prompt_id": "p", "seed": 0, "category": "colors",
                             "presence_all": 1.0}], {}) == {}


def test_a_run_without_geneval_has_no_task_table(report_run, tmp_path):
    run = report_run(tmp_path / "run")
    assert "GenEval" not in (run / "summary.md").read_text()
    assert "geneval" not in json.loads((run / "results.json").read_text())


class Captions(HTMLParser):
    """Per figure: its frame class and the text of its caption's GenEval spans."""

    def __init__(self, text):
        super().__init__()
        self.figures, self._reason = [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append({"frame": attrs["class"].split()[1], "reasons": []})
        self._reason = tag == "span" and "reason" in (attrs.get("class") or "").split()

    def handle_data(self, data):
        if self._reason:
            self.figures[-1]["reasons"].append(data)
            self._reason = False


def test_html_tiles_show_the_geneval_reason_escaped_and_framed_by_the_verdict(tmp_path):
    run = make_geneval_run(tmp_path / "run")
    write_html_report(run)
    page = (run / "report" / "category-two_object.html").read_text()
    assert "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt; &amp; dog" in page
    figures = Captions(page).figures
    assert len(figures) == 8  # 2 prompts x 2 methods x 2 seeds
    assert sorted(f["frame"] for f in figures) == ["found"] * 4 + ["missed"] * 4
    for figure in figures:
        assert figure["reasons"] == (["\u2713 geneval"] if figure["frame"] == "found"
                                     else [f"\u2717 geneval: {ODD_REASON}"])
    single = Captions((run / "report" / "category-single_object.html").read_text()).figures
    assert [f for f in single if f["frame"] == "unscored"] == [
        {"frame": "unscored", "reasons": ["geneval: not judged: no clauses"]}]  # NaN: no verdict, its reason
    index = (run / "report" / "index.html").read_text()
    assert "<h2>GenEval tasks</h2>" in index and "GenEval-compatible (judge=stub)" in index
    assert "<h2>GenEval tasks paired against plain</h2>" in index
