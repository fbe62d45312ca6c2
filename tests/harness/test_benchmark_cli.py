import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.cli import main

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def existing_run(tiny_model_dir, small_suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--seeds", "0", "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def folder_state(run_dir):
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


BAD = {
    "unknown suite": (lambda tmp: ["--suite", "nope"], "unknown suite 'nope'"),
    "unknown method": (lambda tmp: ["--methods", "plain,magic"], "unknown method 'magic'"),
    "unknown metric": (lambda tmp: ["--metrics", "sharpness"], "unknown metric 'sharpness'"),
    # a suite file of the folder's name (small): another suite on the folder is refused before its lines are read
    "object not in prompt": (lambda tmp: ["--suite", write(tmp, "small.jsonl", [
        {"id": "x", "prompt": "a cat and a dog", "objects": [{"name": "cat"}, {"name": "bird"}]}])],
        "prompt x: object 'bird' is not a word of the prompt"),
    "prompt too long": (lambda tmp: ["--suite", write(tmp, "small.jsonl", [
        {"id": "x", "prompt": "a cat and " * 30 + "a dog", "objects": [{"name": "cat"}]}])],
        "over the text encoder's 77"),
    "empty suite": (lambda tmp: ["--suite", write(tmp, "s.jsonl", [])], "holds no prompts"),
    "unreadable checkpoint": (lambda tmp: ["--methods", "sepen", "--sepen-checkpoint",
                                           str(tmp / "missing.safetensors")],
                              "does not exist"),
    "bad seeds": (lambda tmp: ["--seeds", "5-2"], "bad seed range"),
    "map size the UNet lacks": (lambda tmp: ["--methods", "plain,sepen", "--sepen-map-downscale", "16",
                                              "--out", str(tmp / "new")],
                                "--sepen-map-downscale 16: the UNet has no cross-attention layer at 1/16 of the "
                                "latent side (it has some at 1/1, 1/2, 1/4, 1/8)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_loses_nothing(case, existing_run, tiny_model_dir, small_suite, tmp_path, capsys):
    extra, message = BAD[case]
    before = folder_state(existing_run)
    argv = ["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--seeds", "0", "--steps", "2",
            "--out", str(existing_run), "--no-progress"] + extra(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert folder_state(existing_run) == before


def test_garbage_checkpoint_file(existing_run, tiny_model_dir, small_suite, tmp_path, capsys):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x01" * 100)
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "sepen",
                 "--sepen-checkpoint", str(garbage), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("downscale", [2, 4])
def test_sepen_map_downscale_reaches_the_finetuning(downscale, tiny_model_dir, small_suite, tmp_path):
    """The keys SepEn changes are those upstream of the maps it reads: with the 1/2-size maps (up_blocks.2) the
    1/1-size layers after them never run; with the default 1/4, up_blocks.2 does not run either."""
    from sae.checkpoint import load_delta
    from sae.models import load_pipeline

    cache = tmp_path / "cache"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "sepen",
                 "--limit", "1", "--seeds", "0", "--steps", "2", "--sepen-steps", "3", "--sepen-lr", "1e-2",
                 "--sepen-map-downscale", str(downscale), "--checkpoint-cache", str(cache),
                 "--out", str(tmp_path / "run"), "--no-progress", "--no-html"]) == 0
    options = json.loads((tmp_path / "run" / "run_config.json").read_text())["options"]
    assert options["sepen"]["map_downscale"] == downscale
    delta = load_delta(next(cache.rglob("sepen.safetensors")))
    assert delta.config["map_downscale"] == downscale
    base = dict(load_pipeline(tiny_model_dir).unet.named_parameters())
    changed = {name.split(".attentions")[0] for name, tensor in delta.tensors.items()
               if not torch.equal(tensor, base[name].detach())}
    assert ("up_blocks.2" in changed) == (downscale == 2)
    assert "up_blocks.3" not in changed and "up_blocks.1" in changed


def test_sepen_latents_samples_reach_the_finetuning_with_the_runs_sampling(tiny_model_dir, small_suite, tmp_path):
    from sae.checkpoint import load_delta

    cache = tmp_path / "cache"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "sepen",
                 "--limit", "1", "--seeds", "0", "--steps", "2", "--guidance", "3", "--sepen-steps", "1",
                 "--sepen-latents", "samples", "--checkpoint-cache", str(cache), "--out", str(tmp_path / "run"),
                 "--no-progress", "--no-html"]) == 0
    config = load_delta(next(cache.rglob("sepen.safetensors"))).config
    assert (config["latents"], config["sample_steps"], config["sample_guidance"]) == ("samples", 2, 3.0)


def test_ls_lists_with_sizes_and_descriptions(capsys):
    for what in ("suites", "methods", "metrics"):
        assert main(["ls", what]) == 0
    out = capsys.readouterr().out
    assert "ae276" in out and "276 prompts" in out and "attend_excite" in out and "sepen_tt" in out


@pytest.mark.slow
def test_the_issue_command_on_the_tiny_model(tiny_model_dir, tmp_path):
    """`run --suite multi_object --methods plain,attend_excite,sepen --num-seeds 2 --limit 3`, offline, as a real
    process (its exit code and printed table); few steps: the command's course is tested, not the images."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", "--suite", "multi_object", "--model",
                           str(tiny_model_dir), "--methods", "plain,attend_excite,sepen", "--num-seeds", "2",
                           "--limit", "3", "--steps", "4", "--sepen-steps", "5", "--out", str(out),
                           "--checkpoint-cache", str(tmp_path / "cache"), "--no-progress"],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("samples.jsonl", "summary.csv", "summary.md", "results.json"):
        assert (out / name).is_file()
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3 * 3 * 2
    timings = json.loads((out / "results.json").read_text())["timings"]
    assert {"plain", "attend_excite", "sepen", "finetuning"} <= set(timings)
    assert "| attend_excite | three_objects | 6 |" in done.stdout


def test_natural_models_sample_each_method_as_its_release_and_record_it(tiny_model_dir, small_suite, tmp_path):
    """plain at 7.5 and sepen at 6.0 unless told otherwise; per-method settings reach the images, the records,
    the tables and the resume check; SepEn trains on the release's template by default."""
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "plain,sepen",
            "--limit", "1", "--seeds", "0", "--sepen-steps", "1", "--checkpoint-cache", str(cache),
            "--out", str(out), "--no-progress", "--no-html"]
    assert main(args + ["--steps", "2,sepen=3"]) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    used = {r["method"]: (r["steps"], r["guidance"]) for r in records}
    assert used == {"plain": (2, 7.5), "sepen": (3, 6.0)}
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["sepen"] == {"steps": 3, "guidance": 6.0, "trains_on": "release"}
    assert "| sepen | 3 | 6.0 | release |" in (out / "summary.md").read_text()
    trained = json.loads(next(cache.rglob("prompt.json")).read_text())
    assert trained["prompt"] == "a photo of cat and dog" and trained["train_prompt"] == "release"
    before = sorted(p.stat().st_mtime_ns for p in (out / "images").rglob("*.png"))
    assert main(args + ["--steps", "2,sepen=3", "--guidance", "sepen=5"]) == 2  # other images: refused
    assert main(args + ["--steps", "2,sepen=3", "--sepen-train-prompt", "suite"]) == 2
    assert sorted(p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")) == before
    assert main(args + ["--steps", "2,sepen=3", "--guidance", "plain=x"]) == 2
    assert main(args + ["--steps", "2", "--guidance", "attend_excite=3"]) == 2  # not a method of this run


def test_the_release_training_prompt_names_the_objects_as_the_release_passes_them():
    from benchmark.methods import training_prompt
    from benchmark.suites import SuiteObject, SuitePrompt

    item = SuitePrompt("x", "a cat and a red car", (SuiteObject("cat"), SuiteObject("car", "red")), "two", "s")
    assert training_prompt(item, "release") == "a photo of cat and car"  # no articles, no colour (--c1/--c2)
    assert training_prompt(item, "suite") == "a cat and a red car"
    counted = SuitePrompt("y", "two cats and an owl", (SuiteObject("cats", count=2), SuiteObject("owl")), "c", "s")
    assert training_prompt(counted, "release") == "two cats and an owl"
    with pytest.raises(ValueError, match="training prompt"):
        training_prompt(item, "paper")
