import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.cli import main
from benchmark.generate import RunConfig, RunError, run
from benchmark.records import read_record
from benchmark.report import REPO_ROOT, bootstrap_interval, compare, model_label, paired_differences, summarize

FAKE = "fake_metrics:MeanBrightness"


def config(model, suite, out, checkpoint_cache=None, sepen_checkpoint=None, **kw):
    sepen = {"steps": 3, "learning_rate": 1e-3, "train_prompt": "suite", "finetune": {"batch_size": 1},
             "cache": str(checkpoint_cache or out.parent / "ckpt"), "checkpoint": sepen_checkpoint}
    base = dict(suite=str(suite), model=str(model), methods=["plain"], seeds=[0, 1, 2], steps=4, batch_size=2,
                out=out, metrics=[FAKE], progress=False, options={"sepen": sepen})
    base.update(kw)
    return RunConfig(**base)


def file_state(run_dir):
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (run_dir / "images").rglob("*.png")}


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, small_suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "a"
    run(config(tiny_model_dir, small_suite, out, methods=["plain", "sepen"]))
    return out


def test_run_writes_images_records_and_tables(finished_run):
    for name in ("samples.jsonl", "summary.csv", "summary.md", "results.json"):
        assert (finished_run / name).is_file()
    rows = [json.loads(line) for line in (finished_run / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3  # methods x prompts x seeds
    assert {(r["method"], r["prompt_id"], r["seed"]) for r in rows} == {
        (m, p, s) for m in ("plain", "sepen") for p in ("t/0", "t/1") for s in (0, 1, 2)}
    first = rows[0]
    assert Image.open(finished_run / first["path"]).size == (64, 64)
    assert read_record(finished_run / first["path"])["prompt"] == first["prompt"]
    assert 0 <= first["brightness"] <= 1 and first["seconds"] > 0
    summary = pd.read_csv(finished_run / "summary.csv")  # tables load into pandas directly
    assert set(summary["category"]) == {"two", "three", "all"}
    assert {"brightness_mean", "brightness_ci_low", "brightness_ci_high", "images"} <= set(summary.columns)
    plain_all = summary[(summary.method == "plain") & (summary.category == "all")].iloc[0]
    plain_rows = [r["brightness"] for r in rows if r["method"] == "plain"]
    assert plain_all["images"] == 6 and plain_all["brightness_mean"] == pytest.approx(np.mean(plain_rows))
    results = json.loads((finished_run / "results.json").read_text())
    assert results["config"]["methods"] == ["plain", "sepen"]
    assert results["metrics"]["brightness"]["convention"].startswith("mean over pixels")
    assert {"plain", "sepen", "finetuning"} <= set(results["timings"])
    assert results["timings"]["finetuning"]["checkpoints"] == 2
    assert "torch" in results["versions"]
    # each sepen image minus the plain image of the same prompt and seed, from the records
    paired = pd.read_csv(finished_run / "paired.csv")
    sepen_all = paired[(paired.method == "sepen") & (paired.category == "all")].iloc[0]
    by_key = {(r["method"], r["prompt_id"], r["seed"]): r["brightness"] for r in rows}
    diffs = [by_key["sepen", p, s] - by_key["plain", p, s] for p in ("t/0", "t/1") for s in (0, 1, 2)]
    assert sepen_all["pairs"] == 6 and sepen_all["baseline"] == "plain"
    assert sepen_all["brightness_delta"] == pytest.approx(np.mean(diffs))
    assert "Paired against `plain`" in (finished_run / "summary.md").read_text()
    assert results["paired"][-1]["method"] == "sepen"


def test_reports_name_a_model_inside_the_repository_relative_to_it(tmp_path):
    """Committed results name the shipped model the same way on every machine, never by this checkout's path."""
    assert model_label(str(REPO_ROOT / "benchmark" / "shapes" / "pretrained")) == "benchmark/shapes/pretrained"
    assert model_label(str(tmp_path / "model")) == str(tmp_path / "model")  # outside: as recorded
    assert model_label("org/model-id") == "org/model-id"  # a hub id


def test_rerun_generates_nothing_and_report_rebuilds_the_same_tables(finished_run, tiny_model_dir, small_suite):
    before = file_state(finished_run)
    summary_before = (finished_run / "summary.csv").read_text()
    run(config(tiny_model_dir, small_suite, finished_run, methods=["plain", "sepen"]))
    assert file_state(finished_run) == before
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "summary.csv").read_text() == summary_before


def test_same_command_gives_bit_identical_images(finished_run, tiny_model_dir, small_suite, tmp_path):
    again = tmp_path / "b"
    run(config(tiny_model_dir, small_suite, again, metrics=[]))
    for path in (finished_run / "images" / "plain").rglob("*.png"):
        other = again / path.relative_to(finished_run)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other))), path


def test_other_batch_sizes_agree_within_one_level(finished_run, tiny_model_dir, small_suite, tmp_path):
    other = tmp_path / "b"
    run(config(tiny_model_dir, small_suite, other, seeds=[2, 1], batch_size=1, metrics=[]))
    for seed in (1, 2):
        a = np.asarray(Image.open(finished_run / "images" / "plain" / "t_0" / f"{seed:04d}.png"), dtype=int)
        b = np.asarray(Image.open(other / "images" / "plain" / "t_0" / f"{seed:04d}.png"), dtype=int)
        assert np.abs(a - b).max() <= 1


def test_sepen_checkpoints_are_cached_and_reused(finished_run, tiny_model_dir, small_suite, tmp_path):
    cache = finished_run.parent / "ckpt"
    checkpoints = sorted(cache.glob("*/sepen.safetensors"))
    assert len(checkpoints) == 2
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    other = tmp_path / "c"
    run(config(tiny_model_dir, small_suite, other, methods=["sepen"], checkpoint_cache=cache))
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    finetune = [json.loads(line) for line in (other / "finetune.jsonl").read_text().splitlines()]
    assert all(row["cached"] for row in finetune)
    same = Image.open(finished_run / "images" / "sepen" / "t_1" / "0000.png")
    again = Image.open(other / "images" / "sepen" / "t_1" / "0000.png")
    assert np.array_equal(np.asarray(same), np.asarray(again))


def test_a_repeated_prompt_is_generated_once_and_written_under_each_id(finished_run, tiny_model_dir, small_suite,
                                                                       tmp_path, monkeypatch):
    from benchmark.methods import METHODS
    from benchmark.records import read_record, read_scores

    rows = [json.loads(line) for line in small_suite.read_text().splitlines()]
    suite = tmp_path / "repeats.jsonl"  # t/0 again under another id and category (GenEval's colour task does so)
    suite.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {**rows[0], "id": "r/0", "category": "again"}]))
    plain, calls = METHODS["plain"], []
    original = plain.generate
    monkeypatch.setattr(plain, "generate", lambda self, context, item, seeds: calls.append(item.id)
                        or original(self, context, item, seeds))
    out = tmp_path / "run"
    run(config(tiny_model_dir, suite, out, methods=["plain", "sepen"]))
    assert calls == ["t/0", "t/0", "t/1", "t/1"]  # two blocks of seeds per distinct prompt
    finetuning = json.loads((out / "results.json").read_text())["timings"]["finetuning"]
    assert finetuning["checkpoints"] == 2  # the repeat shares t/0's checkpoint: trained and counted once
    for seed in (0, 1, 2):
        repeat = out / "images" / "plain" / "r_0" / f"{seed:04d}.png"
        for twin in (out / "images" / "plain" / "t_0" / f"{seed:04d}.png",
                     finished_run / "images" / "plain" / "t_0" / f"{seed:04d}.png"):  # as if generated again
            assert np.array_equal(np.asarray(Image.open(repeat)), np.asarray(Image.open(twin)))
        record = read_record(repeat)
        assert (record["prompt_id"], record["category"], record["seed"]) == ("r/0", "again", seed)
        sepen = [out / "images" / "sepen" / name / f"{seed:04d}.png" for name in ("r_0", "t_0")]
        assert np.array_equal(*(np.asarray(Image.open(path)) for path in sepen))
    scores = read_scores(out)
    for seed in (0, 1, 2):  # each id's image scored under its own record
        assert scores["plain", "r/0", seed] == scores["plain", "t/0", seed]

    # resumed: a missing image of the repeat is copied from its twin, nothing is generated
    lost = out / "images" / "plain" / "r_0" / "0001.png"
    lost.unlink()
    calls.clear()
    run(config(tiny_model_dir, suite, out, methods=["plain", "sepen"]))
    assert calls == []
    twin = out / "images" / "plain" / "t_0" / "0001.png"
    assert np.array_equal(np.asarray(Image.open(lost)), np.asarray(Image.open(twin)))
    assert read_record(lost)["seconds"] == read_record(twin)["seconds"]
    assert read_record(lost)["prompt_id"] == "r/0"


def test_compare_prints_deltas(finished_run, tmp_path):
    table = compare(finished_run, finished_run)
    assert (table["brightness_delta"] == 0).all() and len(table) == 6


def test_compare_pairs_two_runs_image_by_image(finished_run, tmp_path, capsys):
    """Run B: the same images, plain's brightness raised by 0.1 on t/0 and lowered by 0.1 on one seed of t/1."""
    import shutil

    from benchmark.cli import main
    from benchmark.report import write_report

    other = tmp_path / "b"
    shutil.copytree(finished_run, other)
    scores = other / "scores" / "brightness.jsonl"
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    for row in rows:
        if row["method"] == "plain" and (row["prompt_id"] == "t/0" or row["seed"] == 0):
            row["values"]["brightness"] += 0.1 if row["prompt_id"] == "t/0" else -0.1
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(other)
    table = compare(finished_run, other).set_index(["method", "category"])
    plain = table.loc[("plain", "all")]
    assert plain["pairs"] == 6 and plain["brightness_delta"] == pytest.approx((3 * 0.1 - 0.1) / 6)
    assert plain["brightness_ci_low"] < plain["brightness_delta"] < plain["brightness_ci_high"]
    sepen = table.loc[("sepen", "all")]
    assert sepen["brightness_delta"] == 0 and sepen["brightness_ci_low"] == sepen["brightness_ci_high"] == 0
    assert main(["compare", str(finished_run), str(other)]) == 0
    assert "| plain | all | 6 |" in capsys.readouterr().out


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = np.array([0.0, 1.0] * 20)
    low, high = bootstrap_interval(values)
    assert low < 0.5 < high and (low, high) == bootstrap_interval(values)
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)


def test_paired_differences_match_images_by_prompt_and_seed():
    rows = [  # listed out of order; ("p2", 1) has no plain image and so no pair
        {"method": "sepen", "category": "two", "prompt_id": "p1", "seed": 1, "ok": 1, "score": 0.5},
        {"method": "plain", "category": "two", "prompt_id": "p1", "seed": 0, "ok": 1, "score": 0.2},
        {"method": "sepen", "category": "two", "prompt_id": "p1", "seed": 0, "ok": 0, "score": 0.4},
        {"method": "plain", "category": "two", "prompt_id": "p1", "seed": 1, "ok": 0, "score": 0.1},
        {"method": "sepen", "category": "three", "prompt_id": "p3", "seed": 0, "ok": 1, "score": 0.9},
        {"method": "plain", "category": "three", "prompt_id": "p3", "seed": 0, "ok": 0, "score": 0.6},
        {"method": "sepen", "category": "two", "prompt_id": "p2", "seed": 1, "ok": 1, "score": 1.0},
    ]
    paired = paired_differences(rows).set_index("category")
    assert list(paired.index) == ["two", "three", "all"] and set(paired["method"]) == {"sepen"}
    # ok: p1/0 1->0 (lost), p1/1 0->1 (gained), p3/0 0->1 (gained); score: +0.2, +0.4, +0.3
    assert paired.loc["all", "pairs"] == 3 and paired.loc["two", "pairs"] == 2
    assert paired.loc["all", "ok_delta"] == pytest.approx(1 / 3)
    assert (paired.loc["all", "ok_gained"], paired.loc["all", "ok_lost"]) == (2, 1)
    assert paired.loc["two", "ok_delta"] == 0 and paired.loc["three", "score_delta"] == pytest.approx(0.3)
    assert paired.loc["all", "score_delta"] == pytest.approx(0.3)
    assert (paired.loc["all", "score_ci_low"], paired.loc["all", "score_ci_high"]) == pytest.approx(
        bootstrap_interval(np.array([0.2, 0.4, 0.3])))
    assert "score_gained" not in paired.columns  # not a 0/1 metric
    assert paired_differences([r for r in rows if r["method"] == "sepen"]).empty  # no baseline, no table
    plain_only = paired_differences([r for r in rows if r["method"] == "plain"])  # a baseline, nothing to pair
    assert plain_only.empty and "method" in plain_only.columns  # paired.csv keeps a header that reads back


def test_summary_of_binary_column_counts_rates():
    rows = [{"method": "m", "category": "c", "ok": v} for v in (1, 0, 1, 1)]
    summary = summarize(rows)
    assert summary.iloc[0]["ok_mean"] == 0.75 and summary.iloc[0]["images"] == 4


def test_unavailable_metric_is_named_and_the_rest_still_score(tiny_model_dir, small_suite, tmp_path, capsys):
    out = tmp_path / "m"
    run(config(tiny_model_dir, small_suite, out, seeds=[0], limit=1,
               metrics=["fake_metrics:NeedsWeights", FAKE]))
    assert "metric needs_weights unavailable: no weights for needs_weights" in capsys.readouterr().err
    row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert "brightness" in row and "never" not in row


def test_other_settings_in_the_same_folder_are_refused(finished_run, tiny_model_dir, small_suite):
    before = file_state(finished_run)
    with pytest.raises(RunError, match="other steps"):
        run(config(tiny_model_dir, small_suite, finished_run, steps=5))
    assert file_state(finished_run) == before


def test_a_model_folder_with_another_sampler_is_refused(tiny_model_dir, small_suite, tmp_path):
    import shutil

    from diffusers import EulerDiscreteScheduler

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "run"
    run(config(model, small_suite, out, seeds=[0], limit=1))
    saved = json.loads((out / "run_config.json").read_text())["scheduler"]
    euler = EulerDiscreteScheduler.from_pretrained(model / "scheduler")
    euler.save_pretrained(model / "scheduler")  # the same folder now samples with another scheduler
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(index))
    before = file_state(out)
    with pytest.raises(RunError, match=f"other scheduler \\(scheduler='{saved}'\\)"):
        run(config(model, small_suite, out, seeds=[0], limit=1))
    assert file_state(out) == before and saved != "EulerDiscreteScheduler"


def test_split_gives_every_unit_to_exactly_one_process():
    from benchmark.generate import split_units

    units = list(range(11))
    shares = [split_units(units, i, 3) for i in range(3)]
    assert sorted(sum(shares, [])) == units
    assert all(abs(len(a) - len(b)) <= 1 for a in shares for b in shares)


@pytest.mark.slow
def test_two_processes_split_the_work_and_merge_the_records(tiny_model_dir, small_suite, tmp_path, finished_run):
    import subprocess
    import sys

    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "benchmark",
                           "run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--seeds", "0-2",
                           "--steps", "4", "--batch-size", "2", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| plain | all | 6 |") == 1  # one table, from the main process
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 6
    # The same images as one process makes. The workers run with one thread and this process may not, and another
    # thread count can change float reduction order: at most one 8-bit level, as docs/run_folder.md states.
    images = sorted((out / "images").rglob("*.png"))
    assert len(images) == 6
    for path in images:
        ours = np.asarray(Image.open(path)).astype(int)
        single = np.asarray(Image.open(finished_run / path.relative_to(out))).astype(int)
        assert np.abs(ours - single).max() <= 1


def test_one_large_scale_checkpoint_for_every_prompt(finished_run, tiny_model_dir, small_suite, tmp_path):
    from sae.checkpoint import BaseModelMismatchError, base_fingerprints, save_delta
    from sae.finetune import trainable_parameters
    from sae.models import build_tiny_pipeline, load_pipeline

    base = load_pipeline(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    trained = {n: p.detach() + torch.randn(p.shape, generator=generator)
               for n, p in trainable_parameters(base.unet).items()}
    good = save_delta(tmp_path / "good.safetensors", trained, base_model="tiny",
                      base_fingerprint=base_fingerprints(base.unet))
    out = tmp_path / "large"
    run(config(tiny_model_dir, small_suite, out, methods=["sepen"], sepen_checkpoint=str(good), metrics=[]))
    for path in (out / "images" / "sepen").rglob("*.png"):
        plain = finished_run / "images" / "plain" / path.relative_to(out / "images" / "sepen")
        assert not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(plain)))
    assert not (out / "finetune.jsonl").exists()  # nothing trained

    other = build_tiny_pipeline(seed=1)
    bad = save_delta(tmp_path / "bad.safetensors", trained, base_model="other",
                     base_fingerprint=base_fingerprints(other.unet))
    with pytest.raises(BaseModelMismatchError, match="trained on base model 'other'"):
        run(config(tiny_model_dir, small_suite, tmp_path / "refused", methods=["sepen"], sepen_checkpoint=str(bad)))
    assert not (tmp_path / "refused").exists()


def test_score_command_adds_a_metric_without_regenerating(tiny_model_dir, small_suite, tmp_path, capsys):
    out = tmp_path / "s"
    run(config(tiny_model_dir, small_suite, out, seeds=[0], metrics=[]))
    before = file_state(out)
    assert "brightness" not in (out / "samples.jsonl").read_text()
    assert main(["score", str(out), "--metrics", FAKE]) == 0
    assert file_state(out) == before
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        pixels = np.asarray(Image.open(out / row["path"]).convert("RGB"), dtype=np.float64) / 255
        assert row["brightness"] == pytest.approx(pixels.mean())
    assert "brightness_mean" in pd.read_csv(out / "summary.csv").columns
    assert json.loads((out / "results.json").read_text())["metrics"]["brightness"]["columns"]
    lines = len((out / "scores" / "brightness.jsonl").read_text().splitlines())
    assert main(["score", str(out), "--metrics", FAKE]) == 0  # nothing left to score
    assert len((out / "scores" / "brightness.jsonl").read_text().splitlines()) == lines
    assert main(["score", str(out), "--metrics", FAKE, "--rescore"]) == 0
    assert len((out / "scores" / "brightness.jsonl").read_text().splitlines()) == 2 * lines
