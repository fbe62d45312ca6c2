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



def test_a_resumed_run_scores_again_what_another_instrument_measured(random_shapes_model, tmp_path, capsys):
    """A folder whose clip scores came from another CLIP (here: a changed convention and stale values) gets every
    image scored again with this one, never a mix of the two."""
    out = tmp_path / "run"
    args = ["run", "--suite", "ci", "--model", str(random_shapes_model), "--methods", "plain", "--seeds", "0",
            "--limit", "2", "--steps", "2", "--metrics", "clip", "--out", str(out), "--no-progress", "--no-html"]
    assert main(args) == 0
    first = {r["prompt_id"]: r["clip_full"] for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    config = json.loads((out / "run_config.json").read_text())
    convention = config["metrics_described"]["clip"]["convention"]
    assert "weights sha256 " in convention  # the shipped CLIP is named by its weights
    config["metrics_described"]["clip"]["convention"] = "an older world CLIP"
    (out / "run_config.json").write_text(json.dumps(config))
    with open(out / "scores" / "clip.jsonl", "a") as handle:
        for prompt_id in first:
            handle.write(json.dumps({"method": "plain", "prompt_id": prompt_id, "seed": 0,
                                     "values": {"clip_full": 123.0, "clip_min_object": 123.0,
                                                "clip_full_tm": 123.0}}) + "\n")
    capsys.readouterr()
    assert main(args) == 0
    assert "clip measured with another instrument" in capsys.readouterr().err
    again = {r["prompt_id"]: r["clip_full"] for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    assert again == pytest.approx(first, abs=1e-6)
    assert json.loads((out / "run_config.json").read_text())["metrics_described"]["clip"]["convention"] == convention
    capsys.readouterr()
    assert main(args) == 0  # now the folder and the instrument agree: nothing is said or scored again
    assert "another instrument" not in capsys.readouterr().err
