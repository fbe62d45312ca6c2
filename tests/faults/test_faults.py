"""Faults injected into the finetuner and the harness: after each, the rerun ends as an uninterrupted run would,
with no image or score missing or duplicated, or the input is refused with one line and nothing written."""

import errno
import importlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from benchmark.cli import main
from benchmark.generate import RunConfig, RunError, run
from benchmark.records import read_record
from sae.checkpoint import CheckpointError, load_delta, save_delta
from sae.finetune import CHECKPOINT_NAME, PARTIAL_NAME, ConceptPair, FinetuneConfig, finetune
from sae.models import load_pipeline

finetune_module = importlib.import_module("sae.finetune")  # the module; `sae.finetune` is also the function
FAKE = "fake_metrics:MeanBrightness"
PAIR = ConceptPair("a cat and a dog", ["cat", "dog"])


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, no handler catches it."""


def config(model, suite, out, checkpoint_cache=None, sepen_checkpoint=None, **kw):
    sepen = {"steps": 2, "learning_rate": 1e-3, "train_prompt": "suite", "finetune": {"batch_size": 1},
             "cache": str(checkpoint_cache or out.parent / "cache"), "checkpoint": sepen_checkpoint}
    base = dict(suite=str(suite), model=str(model), methods=["plain", "sepen"], seeds=[0, 1, 2], steps=3,
                batch_size=2, out=out, metrics=[FAKE], progress=False, options={"sepen": sepen})
    base.update(kw)
    return RunConfig(**base)


def tables(run_dir):
    summary = pd.read_csv(run_dir / "summary.csv")
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    keys = [(r["method"], r["prompt_id"], r["seed"]) for r in samples]
    assert len(keys) == len(set(keys)), "an image is listed twice"
    return summary.drop(columns=[c for c in summary.columns if "seconds" in c]), sorted(keys)


@pytest.fixture(scope="module")
def straight(tiny_model_dir, small_suite, tmp_path_factory):
    """The uninterrupted run every faulty one is compared with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run(config(tiny_model_dir, small_suite, out))
    return out


def test_killed_finetune_is_never_taken_for_finished_and_resumes_to_the_same_weights(tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    settings = FinetuneConfig(steps=4, batch_size=1, learning_rate=1e-3, checkpoint_every=1)
    whole = finetune(load_pipeline(tiny_model_dir), PAIR, settings, out_dir=tmp_path / "whole", progress=False)
    saves = []
    original = finetune_module._write_losses

    def kill_after_two_saves(path, history):
        original(path, history)
        saves.append(len(history))
        if len(saves) == 2:
            raise Killed

    monkeypatch.setattr(finetune_module, "_write_losses", kill_after_two_saves)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        finetune(load_pipeline(tiny_model_dir), PAIR, settings, out_dir=out, progress=False)
    assert (out / PARTIAL_NAME).is_file() and not (out / CHECKPOINT_NAME).exists()  # never the final name
    monkeypatch.setattr(finetune_module, "_write_losses", original)
    resumed = finetune(load_pipeline(tiny_model_dir), PAIR, settings, out_dir=out, progress=False)
    assert (out / CHECKPOINT_NAME).is_file() and not (out / PARTIAL_NAME).exists()
    for name, tensor in whole.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], tensor, rtol=0, atol=0)
    assert [row["step"] for row in resumed.history] == [0, 1, 2, 3]


def test_a_partial_checkpoint_in_the_cache_is_trained_on_not_used(straight, tiny_model_dir, small_suite, tmp_path):
    """A per-prompt cache folder holding only an intermediate checkpoint (a kill during the finetune): the run
    finishes the training, and the tables equal the uninterrupted run's."""
    cache = tmp_path / "cache"
    shutil.copytree(straight.parent / "cache", cache)
    for final in cache.rglob(CHECKPOINT_NAME):  # as if every finetune had been killed after its first save
        state = torch.load(final.parent / "train_state.pt", weights_only=True)
        final.rename(final.parent / PARTIAL_NAME)
        state["checkpoint"], state["step"], state["history"] = PARTIAL_NAME, 1, state["history"][:1]
        torch.save(state, final.parent / "train_state.pt")
        (final.parent / "prompt.json").unlink(missing_ok=True)
    out = tmp_path / "run"
    run(config(tiny_model_dir, small_suite, out, checkpoint_cache=cache))
    assert all((p.parent / CHECKPOINT_NAME).is_file() for p in cache.rglob("train_state.pt"))
    expected, found = tables(straight), tables(out)
    pd.testing.assert_frame_equal(found[0], expected[0])
    assert found[1] == expected[1]


def test_torn_score_line_is_reported_and_scored_again(straight, tiny_model_dir, small_suite, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    scores = next((out / "scores").glob("*.jsonl"))
    text = scores.read_text()
    scores.write_text(text[:-20])  # the last line cut by a kill
    run(config(tiny_model_dir, small_suite, out, checkpoint_cache=straight.parent / "cache"))
    err = capsys.readouterr().err
    assert f"{scores}:" in err and "torn line" in err
    expected, found = tables(straight), tables(out)
    pd.testing.assert_frame_equal(found[0], expected[0])
    lines = scores.read_text().splitlines()
    assert sum(1 for line in lines if line.startswith("{") and line.endswith("}")) == len(text.splitlines())


def test_truncated_png_is_named_moved_aside_and_made_again(straight, tiny_model_dir, small_suite, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    victim = sorted((out / "images").rglob("*.png"))[3]
    original = (straight / victim.relative_to(out)).read_bytes()
    victim.write_bytes(original[: len(original) // 2])
    run(config(tiny_model_dir, small_suite, out, checkpoint_cache=straight.parent / "cache"))
    assert f"{victim} cannot be read" in capsys.readouterr().err
    made, first = Image.open(victim), Image.open(straight / victim.relative_to(out))
    assert np.array_equal(np.asarray(made), np.asarray(first))  # made again, pixel for pixel
    assert read_record(victim)["seed"] == read_record(straight / victim.relative_to(out))["seed"]
    assert victim.with_name(victim.name + ".damaged").is_file()
    pd.testing.assert_frame_equal(tables(out)[0], tables(straight)[0])


def test_disk_full_at_the_kth_image_is_one_line_and_the_rerun_completes(straight, tiny_model_dir, small_suite,
                                                                       tmp_path, monkeypatch, capsys):
    import benchmark.generate as generate_module

    writes = []
    original = generate_module.write_image

    def full_disk(path, image, record):
        writes.append(path)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, image, record)

    monkeypatch.setattr(generate_module, "write_image", full_disk)
    out = tmp_path / "run"
    argv = ["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "plain,sepen",
            "--seeds", "0-2", "--steps", "3", "--batch-size", "2", "--metrics", FAKE, "--sepen-steps", "2",
            "--sepen-lr", "1e-3", "--checkpoint-cache", str(straight.parent / "cache"), "--out", str(out),
            "--no-progress", "--no-html"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: No space left on device") and "run the same command again" in err[-1]
    monkeypatch.setattr(generate_module, "write_image", original)
    straight_cli = tmp_path / "straight_cli"
    assert main(argv) == 0 and main(argv[:-4] + ["--out", str(straight_cli), "--no-progress", "--no-html"]) == 0
    pd.testing.assert_frame_equal(tables(out)[0], tables(straight_cli)[0])


def test_a_second_process_on_the_folder_is_refused_naming_the_first(straight, tiny_model_dir, small_suite):
    import fcntl

    with open(straight / ".lock", "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.seek(0)
        holder.truncate()
        holder.write("process 4242")
        holder.flush()
        with pytest.raises(RunError, match="being written by process 4242"):
            run(config(tiny_model_dir, small_suite, straight, checkpoint_cache=straight.parent / "cache"))


def test_non_finite_checkpoints_are_neither_saved_nor_loaded(tmp_path):
    bad = {"w": torch.tensor([1.0, float("nan")])}
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        save_delta(tmp_path / "a.safetensors", bad, base_model="m", base_fingerprint={})
    assert not (tmp_path / "a.safetensors").exists()
    metadata = {"format": "sae-delta/1", "base_model": "m", "base_fingerprint": "{}", "concepts": "[]",
                "config": "{}", "versions": "{}"}
    save_file(bad, str(tmp_path / "b.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_delta(tmp_path / "b.safetensors")
    save_file({"w": torch.ones(2)}, str(tmp_path / "c.safetensors"), metadata={"format": "sae-delta/1"})
    with pytest.raises(CheckpointError, match="metadata is incomplete"):
        load_delta(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_delta(tmp_path)


def test_training_resume_refuses_another_base_or_prompt(tiny_model_dir, tmp_path):
    settings = FinetuneConfig(steps=1, batch_size=1, learning_rate=1e-3)
    finetune(load_pipeline(tiny_model_dir), PAIR, settings, out_dir=tmp_path, progress=False)
    more = FinetuneConfig(steps=2, batch_size=1, learning_rate=1e-3)
    with pytest.raises(ValueError, match="with other prompt"):
        finetune(load_pipeline(tiny_model_dir), ConceptPair("a dog and a cat", ["cat", "dog"]), more,
                 out_dir=tmp_path, progress=False)
    other = load_pipeline(tiny_model_dir)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="with other base weights"):
        finetune(other, PAIR, more, out_dir=tmp_path, progress=False)


def test_another_sepen_checkpoint_in_the_same_folder_is_refused(tiny_model_dir, small_suite, tmp_path):
    first = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=1, batch_size=1),
                     out_dir=tmp_path / "a", base_model=str(tiny_model_dir), progress=False).checkpoint
    second = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=2, batch_size=1),
                      out_dir=tmp_path / "b", base_model=str(tiny_model_dir), progress=False).checkpoint
    out = tmp_path / "run"
    run(config(tiny_model_dir, small_suite, out, methods=["sepen"], seeds=[0], limit=1, sepen_checkpoint=str(first)))
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert len(record["checkpoint_sha256"]) == 64
    with pytest.raises(RunError, match="other method_keys"):
        run(config(tiny_model_dir, small_suite, out, methods=["sepen"], seeds=[0], limit=1,
                   sepen_checkpoint=str(second)))


def _suite(tmp_path, rows):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


CAT = {"prompt": "a cat", "objects": [{"name": "cat"}]}
BAD_INPUT = {
    "--limit 0": (["--limit", "0"], "--limit 0"),
    "--limit -1": (["--limit", "-1"], "--limit -1"),
    "--num-seeds 0": (["--num-seeds", "0"], "--num-seeds 0"),
    "--seeds ''": (["--seeds", ""], "no seeds given"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size 0"),
    "--steps 0": (["--steps", "0"], "--steps 0"),
    "count as a word": ([lambda tmp: _suite(tmp, [{"id": "x", "prompt": "two cats",
                                                  "objects": [{"name": "cats", "count": "two"}]}])],
                        "count must be a whole number"),
    "colliding ids": ([lambda tmp: _suite(tmp, [{"id": "a/b", **CAT}, {"id": "a_b", **CAT}])],
                      "shares the folder 'a_b'"),
    "id '..'": ([lambda tmp: _suite(tmp, [{"id": "..", **CAT}])], "cannot name a folder"),
    "missing model folder": (["--model", "/nonexistent/path"], "no such folder"),
    "checkpoint folder": (["--methods", "sepen", "--sepen-checkpoint", "."], "is a folder"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_exit_2_one_line_and_no_file(case, tiny_model_dir, small_suite, tmp_path, capsys):
    extra, message = BAD_INPUT[case]
    suite = str(small_suite)
    if extra and callable(extra[0]):
        suite, extra = extra[0](tmp_path), []
    out = tmp_path / "run"
    argv = ["run", "--suite", suite, "--model", str(tiny_model_dir), "--methods", "plain", "--seeds", "0",
            "--steps", "2", "--out", str(out), "--no-progress", "--no-html"]
    for i in range(0, len(extra), 2):  # a later flag replaces the default one
        if extra[i] in argv:
            at = argv.index(extra[i])
            argv[at:at + 2] = extra[i:i + 2]
        else:
            argv += extra[i:i + 2]
    if "--num-seeds" in argv:
        at = argv.index("--seeds")
        del argv[at:at + 2]
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines
    assert not out.exists()


def test_tables_say_how_many_values_a_mean_is_over_when_scores_are_missing():
    from benchmark.report import markdown_table, summarize

    rows = [{"method": "plain", "category": "two", "prompt_id": str(i), "seed": 0, "brightness": 0.5}
            for i in range(3)] + [{"method": "plain", "category": "two", "prompt_id": "3", "seed": 0}]
    summary = summarize(rows)
    assert summary.loc[0, "images"] == 4 and summary.loc[0, "brightness_n"] == 3
    assert "0.500 [0.500, 0.500] (n=3)" in markdown_table(summary)
    complete = summarize(rows[:3])
    assert "(n=" not in markdown_table(complete)
