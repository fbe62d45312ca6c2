"""`python -m benchmark run/score ... --metrics presence,clip,blip,fid` with every model a local path (tiny ones)."""

import json

import numpy as np
import pandas as pd
import pytest
from tiny_metric_models import random_images, save_blip, save_inception, save_open_clip, save_owlv2

from benchmark.cli import main

SUITE = [
    {"id": "m/0", "category": "two", "prompt": "a cat and a dog", "objects": [{"name": "cat"}, {"name": "dog"}]},
    {"id": "m/1", "category": "three", "prompt": "a red car and a bowl and a frog",
     "objects": [{"name": "car", "attribute": "red"}, {"name": "bowl"}, {"name": "frog"}]},
]
PER_IMAGE = ["presence_all", "presence_objects", "clip_full", "clip_min_object", "clip_full_tm", "blip_similarity",
             "blip_itm"]


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("metric_suites") / "small.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SUITE))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_models")
    caption, itm = save_blip(root / "blip")
    reference = root / "reference"
    reference.mkdir()
    for i, image in enumerate(random_images(5, (64, 64), seed=11)):
        image.save(reference / f"{i}.png")
    return {"presence": save_owlv2(root / "owlv2"), "clip": save_open_clip(root / "clip"), "blip": caption,
            "blip.itm": itm, "fid": save_inception(root / "inception.pth"), "fid.reference": reference,
            "fid.cache": root / "fid_cache"}


def model_args(paths):
    return [arg for name, path in paths.items() for arg in ("--metric-model", f"{name}={path}")]


def run_args(model, suite, out, *extra):
    return ["run", "--suite", str(suite), "--model", str(model), "--seeds", "0,1", "--steps", "2", "--out", str(out),
            "--no-progress", *extra]


def samples(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, small_suite, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("metric_runs") / "all"
    assert main(run_args(tiny_model_dir, small_suite, out, "--metrics", "presence,clip,blip,fid",
                         *model_args(weights))) == 0
    return out


def test_local_weights_fill_every_column(full_run):
    rows = samples(full_run)
    assert len(rows) == 4  # 2 prompts x 2 seeds
    for row in rows:
        assert all(np.isfinite(row[column]) for column in PER_IMAGE), row
        assert isinstance(row["blip_caption"], str)
    summary = pd.read_csv(full_run / "summary.csv")
    assert set(summary["category"]) == {"two", "three", "all"}
    assert all(summary[f"{c}_mean"].notna().all() for c in PER_IMAGE)
    assert summary["fid"].notna().all() and (summary["fid"] > 0).all()  # one FID per method x category
    assert "fid_mean" not in summary.columns  # a set value, not a mean over images
    groups = json.loads((full_run / "scores" / "fid.sets.json").read_text())["groups"]
    assert {(g["method"], g["category"], g["images"]) for g in groups} == {
        ("plain", "two", 2), ("plain", "three", 2), ("plain", "all", 4)}
    results = json.loads((full_run / "results.json").read_text())
    assert set(results["metrics"]) == {"presence", "clip", "blip", "fid"}
    fid = results["metrics"]["fid"]
    assert fid["columns"] == {"fid": False} and fid["reference"]["images"] == 5
    assert "torchmetrics" in fid["library"] and "299x299" in fid["resize"] and "5 images" in fid["convention"]
    table = (full_run / "summary.md").read_text()
    assert table.splitlines()[2].endswith("| presence_objects | fid |")  # the header row
    assert "`fid`: fid (lower is better). Fréchet distance" in table and "`blip`: blip_similarity" in table


def test_missing_weights_one_line_per_metric_and_the_rest_still_scores(tiny_model_dir, small_suite, weights,
                                                                        tmp_path, capsys):
    missing = {"presence": tmp_path / "no_owlv2", "blip": tmp_path / "no_blip", "blip.itm": tmp_path / "no_itm",
               "fid": tmp_path / "no_inception.pth", "clip": weights["clip"],
               "fid.reference": weights["fid.reference"]}
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(run_args(tiny_model_dir, small_suite, out, "--metrics", "presence,clip,blip,fid",
                         *model_args(missing))) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " unavailable: " in line]
    assert [line.split()[1] for line in lines] == ["presence", "blip", "fid"]
    assert "ERROR" not in err
    assert "--metric-model presence=DIR" in lines[0]
    assert "--metric-model blip=DIR" in lines[1] and "--metric-model blip.itm=DIR" in lines[1]
    assert "--metric-model fid=FILE" in lines[2]
    rows = samples(out)
    assert len(rows) == 4 and all("clip_full" in r and "blip_similarity" not in r for r in rows)
    summary = pd.read_csv(out / "summary.csv")
    assert "clip_full_mean" in summary.columns and "fid" not in summary.columns


def test_score_adds_fid_from_the_images_on_disk_and_reuses_it(tiny_model_dir, small_suite, weights, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, small_suite, out)) == 0
    images = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert main(["score", str(out), "--metrics", "fid", *model_args(weights)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == images  # nothing regenerated
    summary = pd.read_csv(out / "summary.csv")
    assert summary["fid"].notna().all()
    sets = out / "scores" / "fid.sets.json"
    stamp = sets.stat().st_mtime_ns
    assert main(["score", str(out), "--metrics", "fid", *model_args(weights)]) == 0
    assert sets.stat().st_mtime_ns == stamp  # same images, same convention: nothing recomputed
    assert main(["score", str(out), "--metrics", "fid", "--rescore", *model_args(weights)]) == 0
    assert sets.stat().st_mtime_ns != stamp
    assert pd.read_csv(out / "summary.csv")["fid"].tolist() == pytest.approx(summary["fid"].tolist(), rel=1e-6)
