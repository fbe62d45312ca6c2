"""Refusals of `benchmark run` are one line and exit 2, the same under several processes as under one: everything
that needs no model is checked before the command starts itself again as torchrun ranks, and before anything is
written."""

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
]
if not torch.cuda.is_available():
    REFUSALS.append((["--device", "cuda"], "no CUDA GPU"))


@pytest.fixture
def no_relaunch(monkeypatch):
    """A refusal must come before torchrun is started: starting it fails the test."""
    def relaunch(argv, processes):
        raise AssertionError(f"started {processes} processes for a command that should be refused")

    monkeypatch.setattr(benchmark.processes, "relaunch", relaunch)


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
