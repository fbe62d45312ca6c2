"""The static HTML report: pages, grids marked from the presence scores, thumbnails, charts, attention maps."""

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.html_report import presence_marks, thumbnail, write_html_report
from benchmark.records import slug
from benchmark.report import summary_cells


class Page(HTMLParser):
    """The figures (class, img src, found and missed captions), every src/href, and the text of a page."""

    def __init__(self, path: Path):
        super().__init__()
        self.figures, self.links, self.text, self._span = [], [], [], None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == "figure":
            self.figures.append({"class": attrs["class"].split()[1], "img": None, "ok": [], "miss": []})
        elif tag == "img" and "grid-image" in attrs.get("class", ""):
            self.figures[-1]["img"] = attrs["src"]
        elif tag == "span":
            self._span = attrs.get("class")

    def handle_data(self, data):
        self.text.append(data)
        if self._span in ("ok", "miss"):
            self.figures[-1][self._span].append(data[2:])
            self._span = None


def check_links(page: Path, parser: Page):
    for link in parser.links:
        if link.startswith(("data:", "#")):
            continue
        assert (page.parent / link).exists(), f"{page.name} links to missing {link}"


def test_report_pages_grids_and_marks(report_run, tmp_path):
    run = report_run(tmp_path / "run")
    index = write_html_report(run, images_per_page=4)  # 2 methods x 2 seeds: 1 prompt a page
    report = run / "report"
    assert index == report / "index.html"
    pages = sorted(p.name for p in report.glob("*.html"))
    assert pages == ["category-three.html", "category-two-2.html", "category-two-3.html", "category-two.html",
                     "index.html"]
    # the summary cells are those of summary.md, from summary.csv
    summary = pd.read_csv(run / "summary.csv")
    text = "".join(Page(index).text)
    for cells in summary_cells(summary)[1]:
        for cell in cells:
            assert cell in text
    plain_all = summary[(summary.method == "plain") & (summary.category == "all")].iloc[0]
    assert plain_all["presence_all_mean"] == 0.5  # seed 1 misses an object in each of the 4 prompts
    # sepen against plain image by image: gains the 4 seed-1 images, ties the 3 scored seed-0 ones
    assert "Paired against plain" in text and "+0.571 [" in text and "(4 gained, 0 lost)" in text
    # every grid image once, over the pages; marks from the scores
    figures = []
    for name in pages:
        parser = Page(report / name)
        check_links(report / name, parser)
        figures += parser.figures
    assert len(figures) == 16
    assert len({f["img"] for f in figures}) == 16
    by_image = {f["img"]: f for f in figures}
    missed = by_image["thumbs/plain/r_1/0001.png"]
    assert (missed["class"], missed["ok"], missed["miss"]) == ("missed", ["red car"], ["frog"])
    found = by_image["thumbs/sepen/r_3/0001.png"]
    assert (found["class"], found["ok"], found["miss"]) == ("found", ["cat", "dog", "frog"], [])
    unscored = by_image["thumbs/sepen/r_0/0000.png"]
    assert (unscored["class"], unscored["ok"], unscored["miss"]) == ("unscored", [], [])
    assert sum(f["class"] == "missed" for f in figures) == 4
    # charts: one per category and one for all
    for name in ("all", "two", "three"):
        with Image.open(report / "charts" / f"{name}.png") as chart:
            assert chart.width > 100 and chart.height > 100


def test_thumbnails_enlarge_small_images_and_shrink_large_ones(tmp_path):
    run, report = tmp_path / "run", tmp_path / "run" / "report"
    small = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    large = np.random.default_rng(1).integers(0, 256, (512, 384, 3), dtype=np.uint8)
    for name, pixels in (("small", small), ("large", large)):
        (run / "images" / "plain" / "p").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(run / "images" / "plain" / "p" / f"{name}.png")
    src, width, height = thumbnail(run, report, "images/plain/p/small.png")
    assert (src, width, height) == ("thumbs/plain/p/small.png", 128, 128)
    assert np.array_equal(np.asarray(Image.open(report / src)), small.repeat(2, axis=0).repeat(2, axis=1))
    src, width, height = thumbnail(run, report, "images/plain/p/large.png")
    assert (src, width, height) == ("thumbs/plain/p/large.jpg", 96, 128)
    assert Image.open(report / src).format == "JPEG"
    stamp = (report / src).stat().st_mtime_ns
    assert thumbnail(run, report, "images/plain/p/large.png") == (src, 96, 128)
    assert (report / src).stat().st_mtime_ns == stamp  # reused, not made again


def test_presence_marks_follow_the_metric_names():
    objects = [{"name": "mouse", "query": "computer mouse"}, {"name": "cat", "count": 2}]
    assert presence_marks({"objects": objects, "presence_missing": "cat"}) == (["computer mouse"], ["cat"])
    assert presence_marks({"objects": objects, "presence_missing": ""}) == (["computer mouse", "cat"], [])
    assert presence_marks({"objects": objects}) is None


def test_report_command_writes_html_and_trace_skips_without_a_local_model(report_run, tmp_path, capsys):
    run = report_run(tmp_path / "run")
    assert main(["report", str(run), "--html"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {run / 'report' / 'index.html'}" in out
    assert main(["trace", str(run), "--prompts", "1"]) == 0
    out, err = capsys.readouterr()
    assert "attention maps skipped: model not/a-local-model is not on local disk" in err
    assert "traced 0 prompts" in out and f"wrote {run / 'report' / 'index.html'}" in out
    assert not (run / "report" / "attention.html").exists() and not list((run / "attention").glob("*"))
    parser = Page(run / "report" / "category-two.html")
    assert len(parser.figures) == 3 * 2 * 2  # one page: 3 prompts x 2 methods x 2 seeds


@pytest.mark.slow
def test_run_writes_the_report_with_attention_maps_of_plain_and_sepen(tiny_model_dir, small_suite, tmp_path):
    from benchmark.generate import RunConfig, run
    from sae.models import load_pipeline
    from sae.tokens import find_token_indices
    from sae.visual import evenly_spaced, map_losses, sample_with_maps

    out = tmp_path / "run"
    run(RunConfig(suite=str(small_suite), model=str(tiny_model_dir), methods=["plain", "sepen"], seeds=[0, 1],
                  steps=2, batch_size=2, out=out, metrics=[], progress=False, html=True, attention_prompts=1,
                  options={"sepen": {"steps": 2, "learning_rate": 1e-2, "train_prompt": "suite",
                                     "finetune": {"batch_size": 1}, "cache": str(tmp_path / "ckpt")}}))
    report = out / "report"
    assert len(Page(report / "category-two.html").figures) == 2 * 2
    assert len(Page(report / "category-three.html").figures) == 2 * 2
    attention = Page(report / "attention.html")
    check_links(report / "attention.html", attention)
    values = json.loads((out / "attention" / "t_0.json").read_text())  # the run folder's trace, rendered
    assert values["objects"] == ["cat", "dog"] and values["seed"] == 0
    plain, sepen = values["methods"]["plain"], values["methods"]["sepen"]
    # the regenerated seed is the run's image, for both methods: the run drew it in a batch of two, the report
    # alone, and batched CPU kernels may round differently on another machine, so one 8-bit level is allowed
    assert plain["max_level_difference_to_run_image"] <= 1 and sepen["max_level_difference_to_run_image"] <= 1
    assert plain["timesteps"] == sepen["timesteps"] and len(plain["losses"]) == plain["denoising_forwards"]
    # plain's maps are those of a direct pipeline call (same seed and settings); sepen's keys change them
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    _, maps, timesteps = sample_with_maps(pipe, "a cat and a dog", find_token_indices(pipe.tokenizer, "a cat and a dog",
                                          ["cat", "dog"]), 0, 2, 7.5)
    picks = evenly_spaced(len(maps))
    assert [timesteps[i] for i in picks] == plain["timesteps"]
    for got, want in zip(plain["losses"], [map_losses(m) for m in maps[picks]]):
        assert got["sep"] == pytest.approx(want["sep"], abs=1e-6) and got["en"] == pytest.approx(want["en"], abs=1e-6)
    assert any(abs(a["sep"] - b["sep"]) > 1e-6 for a, b in zip(plain["losses"], sepen["losses"]))
    with Image.open(report / "attention" / "t_0.png") as figure:
        assert figure.width > 300
    index_text = "".join(Page(report / "index.html").text)
    assert "1 prompts: plain, sepen" in index_text
    # the report only renders what the folder holds: without traces there is no attention page, nothing regenerated
    for path in (out / "attention").glob("*"):
        path.unlink()
    write_html_report(out)
    assert not (report / "attention.html").exists() and not list((report / "attention").glob("*.png"))


SCRIPT, BREAKOUT = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'
HOSTILE = SCRIPT + BREAKOUT
HOSTILE_PROMPTS = [  # conftest's REPORT_PROMPTS with hostile text wherever a page shows it (ids stay folder names)
    ("r/0", BREAKOUT, f"a cat and a dog {HOSTILE}",
     [{"name": "cat", "query": f"cat {HOSTILE}"}, {"name": f"dog {HOSTILE}"}]),
    ("r/1", "two_object", f"a red car and a frog {HOSTILE}", [{"name": "car", "attribute": "red"}, {"name": "frog"}]),
]


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self, text: str):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_a_run_folders_text_is_escaped_in_every_page(report_run, tmp_path, monkeypatch, capsys):
    """A run folder is user input (a suite, notes, a judge's reasons, traces) that lands in pages people open from
    shared folders: its text must never become markup there, and must still be shown as text."""
    monkeypatch.setitem(report_run.__globals__, "REPORT_PROMPTS", HOSTILE_PROMPTS)
    run = report_run(tmp_path / "run", model=f"model {HOSTILE}")
    config = json.loads((run / "run_config.json").read_text())
    config["suite"] = f"suite {HOSTILE}"
    config["notes"] = {"sepen": f"trains on {HOSTILE}"}  # a method's settings note
    config["metrics_described"]["geneval"] = {"columns": {"geneval_correct": True},
                                              "convention": f"GenEval-compatible (judge={BREAKOUT}) {SCRIPT}"}
    (run / "run_config.json").write_text(json.dumps(config))
    with open(run / "scores" / "geneval.jsonl", "w") as handle:  # plain judged wrong on r/1, with a reason
        for method in ("plain", "sepen"):
            for seed in (0, 1):
                values = {"geneval_correct": float(method == "sepen"),
                          "geneval_reason": "" if method == "sepen" else f"reason {HOSTILE}"}
                handle.write(json.dumps({"method": method, "prompt_id": "r/1", "seed": seed, "values": values}) + "\n")
    (run / "attention").mkdir()  # a trace as `benchmark trace` writes it: the report renders its text
    Image.new("RGB", (8, 8)).save(run / "attention" / "r_0.png")
    (run / "attention" / "r_0.json").write_text(json.dumps({
        "prompt_id": "r/0", "prompt": f"a cat and a dog {HOSTILE}", "seed": 0, "objects": ["cat", "dog"],
        "methods": {f"sepen {HOSTILE}": {"losses": [{"sep": 0.5, "en": None}]}}, "step_labels": [f"t=1 {HOSTILE}"],
        "notes": [f"plain: no checkpoint {HOSTILE}"]}))
    assert main(["report", str(run), "--html"]) == 0
    capsys.readouterr()

    report = run / "report"
    pages = {p.relative_to(report).as_posix(): p for p in sorted(report.rglob("*.html"))}
    breakout_page = f"category-{slug(BREAKOUT)}.html"
    assert sorted(pages) == sorted(["index.html", "attention.html", "category-two_object.html", breakout_page])
    shown = {  # the text each page shows, exactly as written in the folder
        "index.html": [f"suite {HOSTILE} on model {HOSTILE}", f"trains_on trains on {HOSTILE}", BREAKOUT,
                       f"1 prompts: sepen {HOSTILE}", f"GenEval-compatible (judge={BREAKOUT}) {SCRIPT}",
                       f"Convention: GenEval-compatible (judge={BREAKOUT[:-1]}: GenEval's rules"],  # the judge label
        breakout_page: [f"{BREAKOUT} - suite {HOSTILE}", f"r/0: a cat and a dog {HOSTILE}"],
        "category-two_object.html": [f"r/1: a red car and a frog {HOSTILE}", f"\u2717 geneval: reason {HOSTILE}"],
        "attention.html": [f"r/0: a cat and a dog {HOSTILE} (seed 0)", f"plain: no checkpoint {HOSTILE}",
                           f"t=1 {HOSTILE}", f"sepen {HOSTILE}"],
    }
    for name, path in pages.items():
        source = path.read_text()
        for raw in (SCRIPT, BREAKOUT, "<script>alert", "<img src=x", "onerror=alert(1)>"):
            assert raw not in source, (name, raw)
        tags = Tags(source).tags
        assert [t for t, _ in tags].count("script") == name.startswith("category-"), name  # the filter only
        assert not [a for _, attrs in tags for a in attrs if a.startswith("on")], name
        assert all(attrs.get("src") != "x" for t, attrs in tags if t == "img"), name
        parser = Page(path)
        check_links(path, parser)
        text = "".join(parser.text)
        for expected in shown[name]:
            assert expected in text, (name, expected)
    cat, dog = f"cat {HOSTILE}", f"dog {HOSTILE}"  # the objects' names in the captions: plain at seed 1 missed dog
    assert [(f["class"], f["ok"], f["miss"]) for f in Page(pages[breakout_page]).figures] == [
        ("found", [cat, dog], []), ("missed", [cat], [dog]), ("unscored", [], []), ("found", [cat, dog], [])]


def test_methods_are_relabelled_in_every_markdown_table_row_and_nowhere_else():
    from benchmark.report import relabel_cells, relabel_markdown

    labels = {"sepen": "sepen (experimental on sd3)"}
    text = ("Note: sepen reads joint attention.\n\n| method | images |\n|---|---|\n| plain | 2 |\n| sepen | 2 |\n"
            "| sepen_tt | 2 |\n")
    assert relabel_markdown(text, labels) == (
        "Note: sepen reads joint attention.\n\n| method | images |\n|---|---|\n| plain | 2 |\n"
        "| sepen (experimental on sd3) | 2 |\n| sepen_tt | 2 |\n")
    assert relabel_markdown(text, {}) == text
    assert relabel_cells([["sepen", "2"], ["x", "sepen"]], labels) == [["sepen (experimental on sd3)", "2"],
                                                                        ["x", "sepen (experimental on sd3)"]]
