"""The run's precision and batch size: resolved once (float32 and 4 images a call on the CPU, float16 and what fits
on a GPU), recorded with every image and in the tables, and a folder resumed only in its own precision. SepEn
trains fp32 keys on a half-precision pipeline and the cache keeps checkpoints of each training precision apart.
The GPU's own numbers are `scripts/gpu_check.py`'s; what is tested here is what the CPU can run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.cli import main
from benchmark.generate import RunConfig
from benchmark.methods import AttendExcite, Plain, SepEn, checkpoint_key, weights_in_float32
from benchmark.run_folder import RunError
from benchmark.suites import SuiteObject, SuitePrompt


def run_args(model, suite, out, *extra):
    return ["run", "--suite", str(suite), "--model", str(model), "--methods", "plain", "--limit", "1", "--seeds",
            "0", "--steps", "2", "--out", str(out), "--no-progress", "--no-html", *extra]


def test_the_cpu_resolves_to_float32_and_four_images_a_call(tiny_model_dir, small_suite, tmp_path):
    config = RunConfig.resolve(str(small_suite), str(tiny_model_dir), device="cpu", out=tmp_path / "run")
    assert config.dtype == "float32"
    config = RunConfig.resolve(str(small_suite), str(tiny_model_dir), device="cpu", dtype="bfloat16",
                               out=tmp_path / "run")
    assert config.dtype == "bfloat16"
    with pytest.raises(RunError, match="--dtype float16 on cpu: half precision runs on CUDA GPUs"):
        RunConfig.resolve(str(small_suite), str(tiny_model_dir), device="cpu", dtype="float16").validate()
    with pytest.raises(RunError, match="--batch-size 0: give N >= 1 images per pipeline call, or auto"):
        RunConfig(suite=str(small_suite), model=str(tiny_model_dir), batch_size=0).validate()


def test_records_and_tables_carry_the_precision_and_a_resume_in_another_is_refused(tiny_model_dir, small_suite,
                                                                                   tmp_path, capsys):
    half, full = tmp_path / "bf16", tmp_path / "fp32"
    assert main(run_args(tiny_model_dir, small_suite, half, "--dtype", "bfloat16")) == 0
    assert main(run_args(tiny_model_dir, small_suite, full)) == 0  # auto on the CPU: float32, batch size auto: 4
    record = json.loads((half / "samples.jsonl").read_text().splitlines()[0])
    assert (record["dtype"], record["batch"]) == ("bfloat16", 1)
    assert json.loads((full / "samples.jsonl").read_text().splitlines()[0])["dtype"] == "float32"
    assert json.loads((full / "run_config.json").read_text())["batch_size"] == 4
    assert "Sampled in bfloat16, 4 images a pipeline call." in (half / "summary.md").read_text()
    pixels = [np.asarray(Image.open(out / "images" / "plain" / "t_0" / "0000.png"), dtype=int) for out in (half, full)]
    assert np.abs(pixels[0] - pixels[1]).max() > 0  # the pipeline did run in bfloat16
    capsys.readouterr()
    assert main(run_args(tiny_model_dir, small_suite, half, "--dtype", "float32")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds a run made with other dtype (dtype='bfloat16')" in err
    assert len(err.splitlines()) == 1


def test_a_folder_from_before_the_precision_was_recorded_is_float32(tiny_model_dir, small_suite, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, small_suite, out)) == 0
    settings = json.loads((out / "run_config.json").read_text())
    del settings["dtype"]
    (out / "run_config.json").write_text(json.dumps(settings))
    assert main(run_args(tiny_model_dir, small_suite, out)) == 0  # float32, as every older run
    assert main(run_args(tiny_model_dir, small_suite, out, "--dtype", "bfloat16")) == 2
    assert "other dtype (dtype='float32')" in capsys.readouterr().err


def test_the_training_precision_is_part_of_the_cache_key(monkeypatch):
    item = SuitePrompt("t/0", "a cat and a dog", (SuiteObject("cat"), SuiteObject("dog")), "two", "small")
    base = {"float16": "0" * 16}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))  # Hopper: bf16
    keys = {}
    for precision, device in (("auto", "cpu"), ("no", "cpu"), ("auto", "cuda"), ("bf16", "cpu")):
        method = SepEn(training_precision=precision)
        method.device = device
        config = method.finetune_config()
        keys[precision, device] = (config.mixed_precision, checkpoint_key(base, item, config, "release"))
    assert keys["auto", "cpu"] == keys["no", "cpu"] and keys["auto", "cpu"][0] == "no"  # the CPU's keys as before
    assert keys["auto", "cuda"] == keys["bf16", "cpu"] and keys["auto", "cuda"][0] == "bf16"
    assert keys["auto", "cuda"][1] != keys["auto", "cpu"][1]
    # a GPU before Ampere (bf16 only emulated) trains in fp32; the capability asked of the pipeline's GPU
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(str(device)) or (7, 0))
    method = SepEn()
    method.device = "cuda:1"
    assert method.finetune_config().mixed_precision == "no" and asked == ["cuda:1"]


def test_sepen_on_a_half_precision_pipeline_trains_fp32_keys_and_gives_the_base_back(tiny_model_dir, small_suite,
                                                                                    tmp_path):
    from sae.checkpoint import load_delta
    from sae.models import load_pipeline

    pipe = load_pipeline(tiny_model_dir, device="cpu", dtype="bfloat16")
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    with weights_in_float32(pipe):
        assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert pipe.unet.dtype == torch.bfloat16
    assert all(torch.equal(before[n], p) for n, p in pipe.unet.named_parameters())  # cast up and down: the same

    out, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "sepen",
                 "--limit", "1", "--seeds", "0", "--steps", "2", "--sepen-steps", "2", "--dtype", "bfloat16",
                 "--checkpoint-cache", str(cache), "--out", str(out), "--no-progress", "--no-html"]) == 0
    checkpoint, = cache.rglob("sepen.safetensors")
    delta = load_delta(checkpoint)
    assert {t.dtype for t in delta.tensors.values()} == {torch.float32}
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert record["dtype"] == "bfloat16" and record["checkpoint_sha256"] == delta.digest()


def test_an_auto_batch_fits_the_memory_left_on_the_pipelines_own_gpu(monkeypatch):
    """`--batch-size auto` on a GPU (mocked: CUDA's memory calls): measured on the pipeline's GPU, not the current
    one, and ranks that share a GPU share its free memory."""
    import accelerate.utils

    from benchmark.generate import fitting_batch_size

    gib = 2 ** 30
    asked = []

    def on(value):
        def call(device=None):
            asked.append(str(device))
            return value
        return call

    monkeypatch.setattr(torch.cuda, "synchronize", on(None))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", on(None))
    monkeypatch.setattr(torch.cuda, "memory_allocated", on(0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", on(2 * gib))  # a batch of two: 1 GiB an image
    monkeypatch.setattr(torch.cuda, "mem_get_info", on((20 * gib, 80 * gib)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda found: found)

    class Pipe:
        device = torch.device("cuda:1")

        def __call__(self, **kwargs):
            assert len(kwargs["prompt"]) == 2

    class State:
        is_main_process = True

        def __init__(self, processes):
            self.num_processes = processes

        def wait_for_everyone(self):
            pass

    # plain keeps 1.5x an image's memory: 20 GiB / 1.5 GiB -> 13 -> 8; A&E 3x: 6 -> 4; capped at 16
    assert fitting_batch_size(Pipe(), [Plain()], State(1)) == 8
    assert set(asked) == {"cuda:1"}
    assert fitting_batch_size(Pipe(), [AttendExcite()], State(1)) == 4
    assert fitting_batch_size(Pipe(), [Plain()], State(2)) == 4  # two ranks on one GPU: 10 GiB each
    monkeypatch.setattr(torch.cuda, "mem_get_info", on((200 * gib, 200 * gib)))
    assert fitting_batch_size(Pipe(), [Plain()], State(1)) == 16
