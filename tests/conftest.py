"""Shared fixtures: a tiny random Stable-Diffusion-style pipeline built offline (never a hub download)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny pipeline written by the same code as `python -m sae tiny-model`."""
    from sae.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def tiny_pipe(tiny_model_dir):
    """A fresh pipeline per test (tests train it in place)."""
    from sae.models import load_pipeline

    return load_pipeline(tiny_model_dir, device="cpu")
