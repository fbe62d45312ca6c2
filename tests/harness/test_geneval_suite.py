"""The GenEval suite: the committed prompts/geneval.jsonl, its builder, and the clauses checked when a suite loads."""

import json
import os
from collections import Counter

import pytest

from benchmark.geneval.suite import build_geneval_suite, prompt_word, write_geneval_suite
from benchmark.generate import RunConfig
from benchmark.metrics import metric_class
from benchmark.suites import PROMPTS_DIR, SuiteError, load_suite

# GenEval-format metadata written for the tests (one prompt of each kind of clause)
METADATA = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "wine glass", "count": 3}],
     "exclude": [{"class": "wine glass", "count": 4}], "prompt": "a photo of three wine glasses"},
    {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                    {"class": "dog", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a dog right of a teddy bear"},
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                      {"class": "computer mouse", "count": 1, "color": "white"}],
     "prompt": "a photo of a red car and a white computer mouse"},
]


def write_metadata(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_committed_suite_has_genevals_553_prompts_in_six_tasks():
    prompts = load_suite("geneval")
    assert Counter(p.category for p in prompts) == {"single_object": 80, "two_object": 99, "counting": 80,
                                                   "colors": 94, "position": 100, "color_attr": 100}
    assert [p.id for p in prompts] == [f"geneval/{i:05d}" for i in range(553)]  # GenEval's folder <index>/
    for item in prompts:
        spec = item.extra["geneval"]
        assert spec["tag"] == item.category and len(item.objects) == len(spec["include"])
        for obj, clause in zip(item.objects, spec["include"]):
            assert (obj.query or obj.name) == clause["class"] and obj.count == clause["count"]
            assert obj.attribute == clause.get("color")
        if item.category == "counting":  # exactly `count`: one more is refused
            assert spec["exclude"] == [{"class": spec["include"][0]["class"], "count": spec["include"][0]["count"] + 1}]
    two_clocks = next(p for p in prompts if p.prompt == "a photo of two clocks")
    assert two_clocks.objects[0].name == "clocks" and two_clocks.objects[0].phrase == "clock"


def test_builder_writes_suite_lines(tmp_path):
    rows = build_geneval_suite(write_metadata(tmp_path / "meta.jsonl", METADATA))
    assert [r["id"] for r in rows] == ["geneval/00000", "geneval/00001", "geneval/00002", "geneval/00003"]
    assert rows[1] == {"id": "geneval/00001", "suite": "geneval", "category": "counting",
                       "prompt": "a photo of three wine glasses",
                       "objects": [{"name": "wine glasses", "count": 3, "query": "wine glass"}],
                       "geneval": {"tag": "counting", "include": [{"class": "wine glass", "count": 3}],
                                   "exclude": [{"class": "wine glass", "count": 4}]}}
    assert rows[2]["objects"] == [{"name": "teddy bear", "count": 1}, {"name": "dog", "count": 1}]
    assert rows[2]["geneval"]["include"][1]["position"] == ["right of", 0]
    assert rows[3]["objects"][1] == {"name": "computer mouse", "count": 1, "attribute": "white"}
    out = tmp_path / "geneval.jsonl"
    write_geneval_suite(tmp_path / "meta.jsonl", out)
    assert [p.prompt for p in load_suite(str(out))] == [e["prompt"] for e in METADATA]


def test_prompt_word_prefers_the_class_then_its_plural():
    assert prompt_word("a photo of a tie and two ties", "tie") == "tie"
    assert prompt_word("a photo of four benchs", "bench") == "benchs"
    assert prompt_word("a photo of three buses", "bus") == "buses"
    with pytest.raises(ValueError, match="not a word"):
        prompt_word("a photo of a tiered cake", "tie")


def test_builder_refuses_bad_metadata_with_its_line_number(tmp_path):
    bad = METADATA[:1] + [{"tag": "two_object", "include": [{"class": "bench", "count": 1},
                                                           {"class": "unicorn", "count": 1}],
                           "prompt": "a photo of a bench and a unicorn"}]
    with pytest.raises(ValueError, match=r"meta.jsonl:2: geneval include clause 1 names class 'unicorn'"):
        build_geneval_suite(write_metadata(tmp_path / "meta.jsonl", bad))


def suite_line(index, spec, prompt="a photo of a cup and a dog", objects=("cup", "dog")):
    return {"id": f"g/{index}", "category": spec["tag"], "prompt": prompt,
            "objects": [{"name": name} for name in objects], "geneval": spec}


@pytest.mark.parametrize("spec, message", [
    ({"tag": "two_object", "include": [{"class": "cup", "count": 1}, {"class": "dragon", "count": 1}]},
     "bad.jsonl:2: geneval include clause 1 names class 'dragon', not one of the 80 classes"),
    ({"tag": "position", "include": [{"class": "cup", "count": 1},
                                     {"class": "dog", "count": 1, "position": ["left of", 5]}]},
     "bad.jsonl:2: geneval include clause 1: position index 5 points to no clause"),
    ({"tag": "position", "include": [{"class": "cup", "count": 1, "position": ["left of", 1]},
                                     {"class": "dog", "count": 1}]},
     "bad.jsonl:2: geneval include clause 0: position index 1 must point to an earlier include clause"),
    ({"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cups", "count": 3}]},
     "bad.jsonl:2: geneval exclude clause 0 names class 'cups'"),
])
def test_suite_refuses_bad_clauses_with_the_line_number(tmp_path, spec, message):
    good = {"tag": "two_object", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(suite_line(0, good)) + "\n" + json.dumps(suite_line(1, spec)) + "\n")
    prompts = load_suite(str(path))  # other fields of a line are the metrics' to check
    with pytest.raises(SuiteError) as err:
        metric_class("geneval").check_prompts(prompts)
    assert message in str(err.value)
    with pytest.raises(SuiteError) as err:  # before a run loads anything
        RunConfig(suite=str(path), model="unused", metrics=["geneval"], out=tmp_path / "run").preflight()
    assert message in str(err.value)


def test_a_suite_without_clauses_is_not_checked(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "a dragon", "objects": [{"name": "dragon"}]}) + "\n")
    assert load_suite(str(path))[0].extra == {}


def test_licence_notice_ships_beside_the_suite():
    notice = (PROMPTS_DIR / "GENEVAL_LICENSE").read_text()
    assert "geneval.jsonl" in notice and "MIT License" in notice and "Copyright (c) 2023 Dhruba Ghosh" in notice


def test_committed_suite_regenerates_from_the_published_metadata(tmp_path):
    metadata = os.environ.get("SAE_GENEVAL_METADATA")
    if not metadata:
        pytest.skip("set SAE_GENEVAL_METADATA to GenEval's evaluation_metadata.jsonl")
    write_geneval_suite(metadata, tmp_path / "geneval.jsonl")
    assert (tmp_path / "geneval.jsonl").read_text() == (PROMPTS_DIR / "geneval.jsonl").read_text()


@pytest.mark.slow
def test_a_geneval_run_without_judge_weights_says_what_to_fetch_and_keeps_the_rest(tiny_model_dir, tmp_path, capsys):
    """The issue's check on a natural model: `--suite geneval` scores with `geneval` by default; without its
    weights one line names what to fetch, and the run's images and its other metrics are still written."""
    from benchmark.cli import main

    out = tmp_path / "run"
    assert main(["run", "--suite", "geneval", "--model", str(tiny_model_dir), "--limit", "6", "--num-seeds", "1",
                 "--steps", "2", "--out", str(out), "--no-progress", "--no-html",
                 "--metrics", "geneval,fake_metrics:MeanBrightness",
                 "--metric-model", f"geneval.detector={tmp_path / 'no_detector'}",
                 "--metric-model", f"geneval.clip={tmp_path / 'no_clip'}"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "metric geneval unavailable" in line]
    assert len(warnings) == 1 and "geneval.detector=DIR" in warnings[0] and "hf download" in warnings[0]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= row["brightness"] <= 1 for row in rows)
    assert all("geneval_correct" not in row for row in rows)


def test_the_geneval_suite_defaults_to_its_metric_on_natural_models():
    from benchmark.domains import get_domain

    natural = get_domain("natural")
    assert natural.defaults_for("geneval")["metrics"] == "geneval"
    assert natural.defaults_for("geneval")["num_seeds"] == 4  # GenEval's four images a prompt
    assert natural.defaults_for("two_object")["metrics"] == ""
