"""`run --processes N`: the same command as N torchrun ranks, one thread each (benchmark/processes.py)."""

import json

import pytest

from benchmark.cli import main
from benchmark.domains import get_domain
from benchmark.processes import AUTO_LIMIT, cpu_cores, resolve_processes


def test_auto_is_one_process_per_core_on_the_cpu_and_one_elsewhere():
    assert resolve_processes("auto", on_cpu=True) == min(cpu_cores(), AUTO_LIMIT) >= 1
    assert resolve_processes("auto", on_cpu=False) == 1
    assert resolve_processes("3", on_cpu=True) == 3 and resolve_processes(1, on_cpu=True) == 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError, match="--processes"):
            resolve_processes(bad, on_cpu=True)


def test_the_shapes_world_splits_across_the_cores_by_default_natural_models_do_not(monkeypatch):
    monkeypatch.undo()  # the domain's own default, not the tests' one process
    assert get_domain("shapes").run_defaults["processes"] == "auto"
    assert get_domain("natural").run_defaults["processes"] == 1


@pytest.mark.slow  # two torchrun ranks: two torch imports
def test_two_processes_make_every_image_once_and_print_the_tables(tiny_model_dir, small_suite, tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "plain",
                 "--seeds", "0-1", "--steps", "2", "--device", "cpu", "--out", str(out), "--no-progress", "--no-html",
                 "--processes", "2"]) == 0
    captured = capfd.readouterr()
    printed = captured.out
    assert "| plain |" in printed and printed.count("wrote ") == 1  # the main rank alone prints the tables
    assert "running as 2 processes" in captured.err
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["prompt_id"], r["seed"]) for r in rows) == [("t/0", 0), ("t/0", 1), ("t/1", 0), ("t/1", 1)]
    assert not (tmp_path / "runs").exists()


def test_a_bad_processes_value_is_one_line_before_any_work(tiny_model_dir, small_suite, tmp_path, capsys):
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"),
                 "--processes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --processes 0: give N >= 1 (or auto)"
    assert not (tmp_path / "r").exists()
