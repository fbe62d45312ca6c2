"""Shared fixtures: a tiny random Stable-Diffusion-style pipeline built offline (never a hub download)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

from sae.cli import log_to_stderr  # noqa: E402

# the libraries' notes and warnings reach stderr as under the commands, whichever test runs first
log_to_stderr("benchmark", "sae")

# printed at the top of every test run (CI's log included), so that a drift in what the install line brought shows
KEY_PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "huggingface_hub", "accelerate",
                "open_clip_torch", "safetensors", "torchmetrics", "numpy", "pandas", "pillow", "pytest",
                "pytest-benchmark", "playwright", "ruff")


def pytest_report_header(config):
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return "installed: " + ", ".join(f"{name}=={installed(name)}" for name in KEY_PACKAGES)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny pipeline written by the same code as `python -m sae tiny-model`."""
    from sae.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny models of the other families by `--arch` (sd2, sdxl, sd3, pixart, flux), each written once."""
    from sae.models import write_tiny_model

    made = {}

    def model(arch):
        if arch not in made:
            made[arch] = write_tiny_model(tmp_path_factory.mktemp("models") / arch, arch=arch)
        return made[arch]

    return model


@pytest.fixture
def tiny_pipe(tiny_model_dir):
    """A fresh pipeline per test (tests train it in place)."""
    from sae.models import load_pipeline

    return load_pipeline(tiny_model_dir, device="cpu")


SMALL_SUITE = [
    {"id": "t/0", "category": "two", "prompt": "a cat and a dog", "objects": [{"name": "cat"}, {"name": "dog"}]},
    {"id": "t/1", "category": "three", "prompt": "a red car and a bowl and a frog",
     "objects": [{"name": "car", "attribute": "red"}, {"name": "bowl"}, {"name": "frog"}]},
]


@pytest.fixture(scope="session")
def small_suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("suites") / "small.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SMALL_SUITE))
    return path


@pytest.fixture(autouse=True)
def runs_stay_in_the_test_process(monkeypatch):
    """The shapes world runs as one process per core by default (`--processes auto`, torchrun ranks); tests run
    in their own process unless they pass --processes (tests/harness/test_processes.py)."""
    from benchmark.domains import get_domain

    monkeypatch.setitem(get_domain("shapes").run_defaults, "processes", 1)
