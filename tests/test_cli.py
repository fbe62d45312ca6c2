import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from sae.checkpoint import load_delta
from sae.cli import main


def test_tiny_model_loads_offline_with_plain_from_pretrained(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "m")]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m", local_files_only=True)
    assert pipe.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert "wrote a random tiny pipeline" in capsys.readouterr().out


def test_train_then_sample(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--prompt", "a cat and a dog", "--objects", "cat,dog",
                 "--out", str(run), "--steps", "3", "--batch-size", "1", "--no-progress"]) == 0
    assert {"sepen.safetensors", "train_state.pt", "losses.csv"} <= set(os.listdir(run))
    assert load_delta(run / "sepen.safetensors").base_model == str(tiny_model_dir)
    assert main(["sample", "--model", str(tiny_model_dir), "--delta", str(run / "sepen.safetensors"),
                 "--prompt", "a cat and a dog", "--seeds", "0-1,5", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    files = sorted(os.listdir(tmp_path / "s"))
    assert files == ["seed0000.png", "seed0001.png", "seed0005.png"]
    assert Image.open(tmp_path / "s" / files[0]).size == (64, 64)


@pytest.mark.parametrize("argv, message", [
    (["train", "--prompt", "a cat and a dog", "--objects", "cat,bird"], "'bird' is not a word of the prompt"),
    (["train", "--prompt", "a cat and a dog"], "--objects is required"),
    (["sample", "--prompt", "x", "--seeds", "3-1"], "bad seed range"),
])
def test_bad_input_is_one_clear_line(tiny_model_dir, tmp_path, capsys, argv, message):
    argv = argv[:1] + ["--model", str(tiny_model_dir), "--out", str(tmp_path / "o")] + argv[1:]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_unreadable_checkpoint(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a checkpoint")
    assert main(["sample", "--model", str(tiny_model_dir), "--delta", str(bad), "--prompt", "a cat",
                 "--out", str(tmp_path / "s")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_missing_weights_offline_say_how_to_get_them(tmp_path, capsys):
    """In-process: the tests run offline (conftest sets HF_HUB_OFFLINE before anything imports the hub client)."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert main(["sample", "--model", "CompVis/stable-diffusion-v1-4", "--prompt", "a cat",
                 "--out", str(tmp_path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: cannot load model 'CompVis/stable-diffusion-v1-4'")
    assert "hf download" in last and "tiny-model" in last


def test_help_lists_the_commands():
    """The one real `python -m sae` process: the module's entry point itself."""
    done = subprocess.run([sys.executable, "-m", "sae", "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    for command in ("train", "sample", "tiny-model"):
        assert command in done.stdout


@pytest.mark.parametrize("argv", [["sae", "train"], ["sae", "sample"], ["benchmark", "run"], ["benchmark", "paper"]])
def test_help_states_real_defaults_once(argv, capsys):
    command_line = importlib.import_module(f"{argv[0]}.cli")
    with pytest.raises(SystemExit) as done:
        command_line.main([argv[1], "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for noise in ("(default: None)", "(default: False)", "(default: [])"):
        assert noise not in text, f"{' '.join(argv)} --help says {noise!r}"
    if argv == ["benchmark", "run"]:
        assert "images per pipeline call; auto: 4 on the CPU, on a GPU the most its memory holds (up to 16) " \
               "(default: auto)" in text
        assert "default: 3e-05 (shapes models) (default" not in text  # a mode-dependent default, said once
    if argv == ["sae", "train"]:
        assert "weight of the Enhance loss (default: 0.5)" in text


def test_concepts_file_forms_are_read_and_bad_ones_refused(tmp_path):
    from sae.cli import read_concepts

    shipped = read_concepts(Path(__file__).resolve().parents[1] / "prompts" / "sepen_large_concepts.json")
    assert len(shipped) == 200 and shipped[:2] == ["cat", "dog"]
    (tmp_path / "list.json").write_text('["cat", "dog", "bowl"]')
    (tmp_path / "keyed.json").write_text('{"concepts": ["cat", "dog"]}')
    (tmp_path / "lines.txt").write_text("# animals\ncat\n\ndog \n")
    assert read_concepts(tmp_path / "list.json") == ["cat", "dog", "bowl"]
    assert read_concepts(tmp_path / "keyed.json") == ["cat", "dog"]
    assert read_concepts(tmp_path / "lines.txt") == ["cat", "dog"]
    (tmp_path / "other.json").write_text('{"animals": ["cat"]}')
    (tmp_path / "broken.json").write_text('["cat",')
    for name, message in (("other.json", "'train' or 'concepts'"), ("broken.json", "not valid JSON"),
                          ("missing.txt", "no such file")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            read_concepts(tmp_path / name)


def test_train_with_the_shipped_concepts_file_and_release_quirks(tiny_model_dir, tmp_path, capsys):
    concepts = Path(__file__).resolve().parents[1] / "prompts" / "sepen_large_concepts.json"
    code = main(["train", "--model", str(tiny_model_dir), "--concepts", str(concepts), "--steps", "1",
                 "--batch-size", "2", "--release-quirks", "--out", str(tmp_path / "large"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    config = load_delta(tmp_path / "large" / "sepen.safetensors").config
    assert config["token_positions"] == [6, 9] and config["heads"] == "release"
    assert config["norm_step"] == "separate" and config["latent_scale"] == "vae" and config["smoothing"] == "release"


def test_sample_takes_the_releases_cuda_generators_only_where_there_is_cuda(tiny_model_dir, tmp_path, capsys):
    import torch

    from sae.sampling import seed_generators

    assert [g.device.type for g in seed_generators([0, 1])] == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="generator device must be one of"):
        seed_generators([0], "tpu")
    # CUDA generators draw on the pipeline's own GPU: a pipeline on the CPU is refused, not given CPU noise
    from sae.models import load_pipeline
    from sae.sampling import generate

    with pytest.raises(ValueError, match="draws the noise on the pipeline's GPU"):
        generate(load_pipeline(tiny_model_dir, device="cpu"), "a cat", [0], 2, generator_device="cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    code = main(["sample", "--model", str(tiny_model_dir), "--prompt", "a cat", "--seeds", "0", "--out",
                 str(tmp_path / "s"), "--generator-device", "cuda"])
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
