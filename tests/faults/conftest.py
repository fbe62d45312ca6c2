import importlib.util
from pathlib import Path

import pytest

import benchmark.processes

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_sweep.py"


@pytest.fixture(scope="session")
def sweep():
    """scripts/fault_sweep.py as a module: its command, kill points and checks."""
    spec = importlib.util.spec_from_file_location("fault_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def uninterrupted(sweep, tiny_model_dir, small_suite, tmp_path_factory):
    """`python -m benchmark run` (the sweep's command) run once to the end: what every faulty run must end as. Its
    SepEn checkpoint cache is shared by the killed runs."""
    base = tmp_path_factory.mktemp("uninterrupted")
    runs = {"model": tiny_model_dir, "suite": small_suite, "cache": base / "cache", "out": base / "run"}
    sweep.finish(sweep.command(**runs))
    assert len(sweep.images(runs["out"])) == sweep.IMAGES
    return runs


@pytest.fixture
def no_relaunch(monkeypatch):
    """A refusal must come before torchrun is started: starting it fails the test."""
    def relaunch(argv, processes):
        raise AssertionError(f"started {processes} processes for a command that should be refused")

    monkeypatch.setattr(benchmark.processes, "relaunch", relaunch)
