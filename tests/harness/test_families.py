"""Model families beyond SD 1.x/2.x: a tiny SDXL built offline (`python -m sae tiny-model DIR --arch sdxl`) runs
through the harness as its own diffusers pipeline does, and the methods that need the SD UNet are refused on it
in one line before anything is written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.cli import main
from sae.models import load_pipeline, model_family


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from sae.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "sdxl", arch="sdxl")


def test_a_folder_says_its_family(tiny_sdxl, tiny_model_dir):
    assert model_family(tiny_sdxl) == "sdxl" and model_family(tiny_model_dir) == "sd"
    assert model_family("CompVis/stable-diffusion-v1-4") == "sd"  # a hub id: as before other families
    pipe = load_pipeline(tiny_sdxl, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and model_family(pipe) == "sdxl"


def test_plain_on_sdxl_makes_the_pipelines_own_images(tiny_sdxl, small_suite, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_sdxl), "--methods", "plain", "--limit", "1",
                 "--seeds", "0,1", "--steps", "2", "--out", str(out), "--no-progress", "--no-html",
                 "--processes", "1"]) == 0
    pipe = load_pipeline(tiny_sdxl, device="cpu")
    prompt = json.loads(small_suite.read_text().splitlines()[0])["prompt"]
    for seed in (0, 1):
        own = pipe(prompt, num_inference_steps=2, guidance_scale=7.5,
                   generator=torch.Generator().manual_seed(seed)).images[0]
        ours = Image.open(out / "images" / "plain" / "t_0" / f"{seed:04d}.png")
        difference = np.abs(np.asarray(ours, dtype=int) - np.asarray(own, dtype=int)).max()
        assert difference <= 1, difference  # one 8-bit level: a batch of two rounds otherwise than one image


@pytest.mark.parametrize("method", ["attend_excite", "sepen", "sepen_tt", "sepen+ae"])
def test_methods_of_the_sd_unet_are_refused_on_sdxl_in_one_line(tiny_sdxl, small_suite, tmp_path, capsys, method):
    out = tmp_path / "run"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_sdxl), "--methods", f"plain,{method}",
                 "--out", str(out), "--no-progress", "--processes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {method} runs on sd models, not on sdxl ({tiny_sdxl}); `python -m benchmark ls methods "
                   f"--model {tiny_sdxl}` lists the methods that do"], err
    assert not out.exists()
    assert main(["ls", "methods", "--model", str(tiny_sdxl)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["plain"]


def test_sepen_training_on_sdxl_is_one_line(tiny_sdxl, tmp_path, capsys):
    from sae.cli import main as sae_main

    out = tmp_path / "train"
    assert sae_main(["train", "--model", str(tiny_sdxl), "--prompt", "a cat and a dog", "--objects", "cat,dog",
                     "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --model {tiny_sdxl}: SepEn training runs on Stable Diffusion 1.x/2.x pipelines for now, "
                   "not on sdxl (docs/backbones.md)"] and not out.exists()
