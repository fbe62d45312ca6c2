"""Refusals of `benchmark run` are one line and exit 2, the same under several processes as under one: everything
that needs no model is checked before the command starts itself again as torchrun ranks, and before anything is
written."""

import json

import pytest
import torch

import benchmark.processes
from benchmark.cli import main

REFUSALS = [  # (extra arguments, what the one line names)
    (["--suite", "no_such_suite"], "no_such_suite"),
    (["--limit", "0"], "--limit 0"),
    (["--guidance", "nan"], "--guidance nan"),
    (["--guidance", "inf"], "--guidance inf"),
    (["--guidance", "1e300"], "--guidance 1e+300"),
    (["--guidance", "-1"], "--guidance -1"),
    (["--device", "nonsense"], "--device 'nonsense'"),
    (["--methods", "plain,no_such_method"], "no_such_method"),
    (["--metrics", "no_such_metric"], "no_such_metric"),
    (["--steps", "2000"], "--steps 2000"),
    (["--methods", "sepen", "--sepen-steps", "0"], "steps must be a whole number >= 1"),
    (["--methods", "sepen", "--sepen-lr", "inf"], "learning_rate must be a finite number"),
    (["--methods", "sepen", "--sepen-lr", "nan"], "learning_rate must be a finite number"),
    (["--methods", "sepen", "--option", "sepen.finetune={\"batch_size\": 0}"], "batch_size must be"),
    (["--methods", "sepen", "--sepen-checkpoint", ""], "SepEn checkpoint is empty"),
    (["--methods", ","], "--methods names no method"),
    (["--attention-prompts", "-1"], "--attention-prompts -1"),
]
if not torch.cuda.is_available():
    REFUSALS.append((["--device", "cuda"], "no CUDA GPU"))


@pytest.mark.parametrize("processes", ["1", "2", "auto"])
@pytest.mark.parametrize("extra, named", REFUSALS, ids=[" ".join(e) for e, _ in REFUSALS])
def test_a_refusal_is_one_line_and_exit_2_before_any_process_starts(tiny_model_dir, small_suite, tmp_path, capsys,
                                                                      no_relaunch, monkeypatch, extra, named,
                                                                      processes):
    monkeypatch.setattr(benchmark.processes, "cpu_cores", lambda: 2)  # "auto" means two processes here too
    out = tmp_path / "run"
    argv = ["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--seeds", "0", "--steps", "1",
            "--out", str(out), "--no-progress", "--processes", processes, "--device", "cpu", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not out.exists()  # nothing written


def run_argv(model, suite, out, *extra):
    return ["run", "--suite", str(suite), "--model", str(model), "--seeds", "0", "--steps", "1", "--limit", "1",
            "--metrics", "", "--out", str(out), "--no-progress", "--no-html", "--processes", "1", *extra]


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tiny_model_dir, small_suite, tmp_path, capsys,
                                                                no_relaunch):
    """A user's folder holding files a run also writes (results.json, summary.csv, report/) is not a run folder."""
    folder = tmp_path / "mine"
    (folder / "report").mkdir(parents=True)
    mine = {"results.json": '{"mine": 1}', "summary.csv": "a,b\n1,2\n", "report/index.html": "<p>mine</p>"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    for processes in ("1", "2"):
        assert main(run_argv(tiny_model_dir, small_suite, folder)[:-1] + [processes]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds files that are not a benchmark run's (report, results.json" in err[0], err
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["report", *sorted(mine)]
    assert {name: (folder / name).read_text() for name in mine} == mine


@pytest.mark.parametrize("where", ["root", "home", "file"])
def test_the_root_the_home_folder_and_a_file_are_refused(tiny_model_dir, small_suite, tmp_path, capsys, no_relaunch,
                                                         where):
    from pathlib import Path

    out = {"root": Path("/"), "home": Path.home(), "file": tmp_path / "a_file"}[where]
    if where == "file":
        out.write_text("mine")
    assert main(run_argv(tiny_model_dir, small_suite, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {out} is "), err
    if where == "file":
        assert out.read_text() == "mine"


def test_a_run_folder_is_marked_first_and_an_unmarked_old_one_is_taken_back(tiny_model_dir, small_suite, tmp_path):
    from benchmark.generate import RUN_MARKER

    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is taken
    assert main(run_argv(tiny_model_dir, small_suite, out)) == 0
    assert (out / RUN_MARKER).read_text() == '{"format": 1}\n'
    (out / RUN_MARKER).unlink()  # a run folder made before markers: its run_config.json says what it is
    assert main(run_argv(tiny_model_dir, small_suite, out)) == 0
    assert (out / RUN_MARKER).is_file()


def test_a_damaged_settings_file_is_named_and_the_way_back_works(tiny_model_dir, small_suite, tmp_path, capsys):
    """A `run_config.json` cut in half (a full disk under an older `score`): every command names the file and the
    remedy in one line; moved aside, the same `run` writes it anew and keeps the images."""
    out = tmp_path / "run"
    argv = run_argv(tiny_model_dir, small_suite, out)
    assert main(argv) == 0
    settings = out / "run_config.json"
    whole = settings.read_text()
    settings.write_text(whole[: len(whole) // 2])
    images = sorted(p.stat().st_mtime_ns for p in out.rglob("*.png"))
    capsys.readouterr()
    for command in (argv, ["report", str(out)], ["score", str(out), "--metrics", "presence"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{settings} is damaged" in err[0] and "move it aside" in err[0], err
    settings.rename(out / "run_config.json.damaged")
    assert main(argv) == 0
    assert json.loads(settings.read_text()) == json.loads(whole)
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.png")) == images  # nothing made again


def test_training_into_a_longer_finished_run_is_refused_and_keeps_it(tiny_model_dir, tmp_path, capsys):
    from sae.cli import main as sae_main

    out = tmp_path / "train"
    argv = ["train", "--model", str(tiny_model_dir), "--prompt", "a cat and a dog", "--objects", "cat,dog",
            "--out", str(out), "--batch-size", "1", "--no-progress"]
    assert sae_main(argv + ["--steps", "2"]) == 0
    checkpoint = (out / "sepen.safetensors").read_bytes()
    capsys.readouterr()
    assert sae_main(argv + ["--steps", "1"]) == 2
    err = capsys.readouterr().err  # the model is loaded first (its loading bars), then the folder is read
    assert "Traceback" not in err and "already 2 steps long, past the 1 asked" in err.strip().splitlines()[-1], err
    assert (out / "sepen.safetensors").read_bytes() == checkpoint
    for bad, named in ((["--steps", "0"], "steps must be a whole number >= 1"),
                       (["--steps", "2", "--batch-size", "0"], "batch_size must be"),
                       (["--steps", "2", "--checkpoint-every", "0"], "checkpoint_every must be")):
        assert sae_main(argv + bad) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err  # refused before the model is loaded


def test_a_damaged_cached_checkpoint_is_moved_aside_and_trained_again(tiny_model_dir, small_suite, tmp_path, capsys):
    from sae.checkpoint import load_delta

    cache = tmp_path / "cache"
    argv = lambda out: run_argv(tiny_model_dir, small_suite, out, "--methods", "sepen", "--sepen-steps", "1",  # noqa: E731
                                "--checkpoint-cache", str(cache))
    assert main(argv(tmp_path / "first")) == 0
    [checkpoint] = cache.rglob("sepen.safetensors")
    good = checkpoint.read_bytes()
    trained = {name: t.clone() for name, t in load_delta(checkpoint).tensors.items()}
    checkpoint.write_bytes(good[: len(good) // 2])  # a copy cut short
    capsys.readouterr()
    assert main(argv(tmp_path / "second")) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: cached SepEn")]
    assert len(warned) == 1 and str(checkpoint) in warned[0] and "trained again" in warned[0]
    again = load_delta(checkpoint).tensors  # trained again: the same (seeded) training, readable
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)
    assert (checkpoint.parent.with_name(checkpoint.parent.name + ".damaged") / "sepen.safetensors").is_file()
    first, second = (sorted(p.relative_to(tmp_path / run) for p in (tmp_path / run / "images").rglob("*.png"))
                     for run in ("first", "second"))
    assert first == second and len(first) == 1


def test_trace_with_a_negative_count_is_refused_and_deletes_nothing(tmp_path, capsys):
    from harness.conftest import make_report_run

    from benchmark.trace import TRACE_DIR

    out = make_report_run(tmp_path / "run")
    (out / TRACE_DIR).mkdir(exist_ok=True)
    (out / TRACE_DIR / "kept.png").write_bytes(b"a trace")
    capsys.readouterr()
    assert main(["trace", str(out), "--prompts", "-3"]) == 2
    assert "--prompts -3: give N >= 0" in capsys.readouterr().err
    assert (out / TRACE_DIR / "kept.png").read_bytes() == b"a trace"


def test_a_suite_without_categories_has_one_all_row_per_method():
    from benchmark.report import paired_differences, summarize

    rows = [{"method": method, "prompt_id": f"p/{i}", "seed": 0, "category": "all", "presence_all": float(i % 2)}
            for method in ("plain", "sepen") for i in range(4)]
    summary = summarize(rows, ["plain", "sepen"], declared=["presence_all"])
    assert summary[["method", "category"]].values.tolist() == [["plain", "all"], ["sepen", "all"]]
    assert summary["images"].tolist() == [4, 4]
    paired = paired_differences(rows, ["plain", "sepen"], declared=["presence_all"])
    assert paired[["method", "category"]].values.tolist() == [["sepen", "all"]]


def test_a_training_that_diverges_inside_a_run_is_one_line_and_keeps_the_images(tiny_model_dir, small_suite, tmp_path,
                                                                                 capsys, monkeypatch):
    import benchmark.methods
    from sae.finetune import TrainingDivergedError

    out = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, small_suite, out)) == 0
    images = sorted(p.name for p in out.rglob("*.png"))

    def diverges(*args, **kwargs):
        raise TrainingDivergedError("loss became nan at step 3; lower the learning rate")

    monkeypatch.setattr(benchmark.methods, "finetune", diverges)
    capsys.readouterr()
    assert main(run_argv(tiny_model_dir, small_suite, out, "--methods", "plain,sepen")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: loss became nan at step 3; lower the learning rate"], err
    assert sorted(p.name for p in out.rglob("*.png")) == images
