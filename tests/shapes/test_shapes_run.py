"""`benchmark run` on a shapes-world model: the world's suites, defaults and instruments are picked by its domain."""

import json

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.domains import DOMAIN_FILE, get_domain

SHAPES = "shapes"


@pytest.fixture(scope="module")
def random_shapes_model(tmp_path_factory):
    """The shapes architecture, untrained, saved the way training saves the shipped model."""
    from benchmark.shapes.model import build_pipeline
    from benchmark.shapes.train import save_pipeline

    pipe = build_pipeline()
    return save_pipeline(tmp_path_factory.mktemp("shapes") / "model", pipe.vae, pipe.text_encoder, pipe.tokenizer,
                         pipe.unet)


def test_saved_model_declares_the_shapes_domain(random_shapes_model):
    assert json.loads((random_shapes_model / DOMAIN_FILE).read_text()) == {"domain": SHAPES}


def test_run_takes_the_worlds_suite_defaults_and_instruments(random_shapes_model, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--suite", "ci", "--model", str(random_shapes_model), "--methods", "plain", "--seeds", "0",
                 "--limit", "3", "--steps", "2", "--out", str(out), "--no-progress",
                 "--metric-model", f"fid.cache={tmp_path / 'cache'}"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["domain"] == SHAPES and config["steps"] == 2
    # the world's instruments by default
    assert config["metrics"] == get_domain(SHAPES).run_defaults["metrics"].split(",")
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle", "a red square", "a orange triangle and a orange square"]
    summary = pd.read_csv(out / "summary.csv")
    for column in ("presence_all_mean", "clip_full_mean", "clip_min_object_mean", "fid"):
        assert column in summary.columns
    assert "shapes suites" in (out / "summary.md").read_text()


def test_the_geneval_suite_runs_at_genevals_four_seeds_with_its_metric(random_shapes_model, tmp_path, capsys):
    out = tmp_path / "geneval"
    assert main(["run", "--suite", "geneval", "--model", str(random_shapes_model), "--methods", "plain",
                 "--limit", "1", "--steps", "2", "--out", str(out), "--no-progress", "--no-html"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["seeds"] == [0, 1, 2, 3] and config["metrics"] == ["geneval"]
    printed = capsys.readouterr().out
    assert "## GenEval tasks" in printed and "| overall |" in printed
    # a flag still wins over the suite's defaults
    again = tmp_path / "given"
    assert main(["run", "--suite", "geneval", "--model", str(random_shapes_model), "--methods", "plain",
                 "--limit", "1", "--steps", "2", "--num-seeds", "1", "--metrics", "presence", "--out", str(again),
                 "--no-progress", "--no-html"]) == 0
    config = json.loads((again / "run_config.json").read_text())
    assert config["seeds"] == [0] and config["metrics"] == ["presence"]
    assert "## GenEval tasks" not in capsys.readouterr().out

