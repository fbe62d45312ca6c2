"""The GPU speed switches checked on the CPU, where they can be: the frozen weights cast once give autocast's
numbers exactly and come back untouched; the finetune's deferred loss checks (the GPU's way) give the same
run as checking every step, skip a non-finite step and stop at the next fetch; compiled blocks give the same
losses and gradients; object maps without list indexing (CUDA-graph safe) give the same numbers."""

import csv
import sys

import pytest
import torch

from sae.attention import object_maps
from sae.finetune import (ConceptPair, FinetuneConfig, TrainingDivergedError, encode_prompts, finetune,
                          sepen_losses, trainable_parameters)
from sae.models import load_pipeline
from sae.speed import compile_blocks, frozen_weights_in, repeated_blocks

PAIR = ConceptPair("a photo of a cat and a dog", ["cat", "dog"])
FINETUNE_MODULE = sys.modules["sae.finetune"]  # (the package exports a function of the same name)


def sepen_step(pipe, autocast: bool = False):
    """Losses and key gradients of one SepEn step on fixed inputs (under CPU bf16 autocast if asked)."""
    unet = pipe.unet
    unet.requires_grad_(False)
    keys = trainable_parameters(unet)
    for key in keys.values():
        key.requires_grad_(True)
        key.grad = None
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=generator)
    text = encode_prompts(pipe, [PAIR.prompt] * 2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = sepen_losses(unet, latents, torch.tensor([10, 700]), text, [[5], [8]])
    (losses["sep"] + 0.5 * losses["en"]).backward()
    grads = {name: key.grad.clone() for name, key in keys.items() if key.grad is not None}
    return {name: value.detach() for name, value in losses.items()}, grads


def test_frozen_weights_cast_once_give_autocasts_numbers_and_come_back(tiny_pipe):
    losses, grads = sepen_step(tiny_pipe, autocast=True)
    unet = tiny_pipe.unet
    keys = trainable_parameters(unet)
    before = {name: (p.data_ptr(), p.dtype) for name, p in unet.named_parameters()}
    with frozen_weights_in(unet, torch.bfloat16, keep=keys.values()):
        dtypes = {name: p.dtype for name, p in unet.named_parameters()}
        cast_losses, cast_grads = sepen_step(tiny_pipe, autocast=True)
    assert all(dtypes[name] == torch.float32 for name in keys)
    assert dtypes["conv_in.weight"] == dtypes["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] \
        == torch.bfloat16
    assert dtypes["conv_norm_out.weight"] == torch.float32  # autocast runs normalisation in fp32
    assert {name: (p.data_ptr(), p.dtype) for name, p in unet.named_parameters()} == before
    assert losses.keys() == cast_losses.keys() and all(torch.equal(losses[k], cast_losses[k]) for k in losses)
    assert grads.keys() == cast_grads.keys() and all(torch.equal(grads[k], cast_grads[k]) for k in grads)


def test_frozen_weights_none_changes_nothing(tiny_pipe):
    before = {name: p.data_ptr() for name, p in tiny_pipe.unet.named_parameters()}
    with frozen_weights_in(tiny_pipe.unet, None):
        assert {name: p.data_ptr() for name, p in tiny_pipe.unet.named_parameters()} == before


@pytest.fixture
def deferred(monkeypatch):
    """The CPU runs the finetune as a GPU does: losses fetched in blocks, fused AdamW skipping bad steps."""
    monkeypatch.setattr(FINETUNE_MODULE, "DEFERRED_DEVICES", ("cuda", "cpu"))


def read_losses(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_deferred_checks_give_the_same_run(tiny_model_dir, tmp_path, monkeypatch):
    config = FinetuneConfig(steps=6, batch_size=2, learning_rate=1e-3, checkpoint_every=4)
    checked = finetune(load_pipeline(tiny_model_dir), PAIR, config, out_dir=tmp_path / "a", progress=False)
    monkeypatch.setattr(FINETUNE_MODULE, "DEFERRED_DEVICES", ("cuda", "cpu"))
    batched = finetune(load_pipeline(tiny_model_dir), PAIR, config, out_dir=tmp_path / "b", progress=False,
                       log_every=5)
    assert [row["step"] for row in batched.history] == list(range(6))
    # the same losses; the weights up to fused AdamW's rounding, which differs from the foreach one's
    for a, b in zip(checked.history, batched.history):
        assert a.keys() == b.keys()
        for key in a:  # a loss a step does not compute (e.g. `sep` of a single object) is "" in both
            if isinstance(a[key], str):
                assert a[key] == b[key], key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-6), key
    for name in checked.tensors:
        torch.testing.assert_close(batched.tensors[name], checked.tensors[name], rtol=1e-5, atol=1e-6)
    assert len(read_losses(tmp_path / "b" / "losses.csv")) == 6


def test_deferred_run_resumes_a_checked_one(tiny_model_dir, tmp_path, monkeypatch):
    """A run stopped on one kind of device resumes on the other (the optimizer's step counts move)."""
    config = dict(batch_size=2, learning_rate=1e-3, checkpoint_every=2)
    straight = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=4, **config), progress=False)
    finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=2, **config), out_dir=tmp_path,
             progress=False)
    monkeypatch.setattr(FINETUNE_MODULE, "DEFERRED_DEVICES", ("cuda", "cpu"))
    resumed = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=4, **config), out_dir=tmp_path,
                       progress=False)
    assert [row["step"] for row in resumed.history] == [0, 1, 2, 3]
    for name in straight.tensors:
        torch.testing.assert_close(resumed.tensors[name], straight.tensors[name], rtol=1e-5, atol=1e-6)


def test_deferred_non_finite_step_changes_nothing_and_stops_at_the_fetch(tiny_pipe, tmp_path, deferred):
    keys = trainable_parameters(tiny_pipe.unet)
    first = next(iter(keys.values()))
    with torch.no_grad():
        first[0, 0] = float("nan")
    before = {name: p.detach().clone() for name, p in keys.items()}
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 0"):
        finetune(tiny_pipe, PAIR, FinetuneConfig(steps=3, checkpoint_every=2), out_dir=tmp_path, progress=False)
    # every step was skipped on the device (fused AdamW's found_inf): the other weights are as they were
    for name, p in keys.items():
        assert torch.equal(p.nan_to_num(), before[name].nan_to_num()), name
    assert not (tmp_path / "sepen.safetensors").exists() and not (tmp_path / "sepen.partial.safetensors").exists()


@pytest.mark.slow
def test_compiled_blocks_give_the_same_losses_and_gradients(tiny_pipe):
    losses, grads = sepen_step(tiny_pipe)
    assert compile_blocks(tiny_pipe.unet, backend="aot_eager") == len(repeated_blocks(tiny_pipe.unet)) > 0
    compiled_losses, compiled_grads = sepen_step(tiny_pipe)
    assert grads.keys() == compiled_grads.keys()
    for name in losses:
        torch.testing.assert_close(compiled_losses[name], losses[name], rtol=1e-5, atol=1e-7)
    for name in grads:
        torch.testing.assert_close(compiled_grads[name], grads[name], rtol=1e-4, atol=1e-9)


def test_object_maps_equal_list_indexing():
    maps = torch.rand(3, 4, 4, 77)
    groups = [[5], [7, 8], [2, 9, 11]]
    expected = torch.stack([maps[..., group].mean(-1) for group in groups], dim=1)
    assert torch.equal(object_maps(maps, groups), expected)


def test_every_layer_but_the_captured_ones_keeps_sdpa(tiny_pipe):
    """Capture swaps only the maps' layers to explicit softmax: the rest keep PyTorch's fused attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sae.attention import CaptureAttnProcessor, capture_cross_attention

    with capture_cross_attention(tiny_pipe.unet) as store:
        processors = tiny_pipe.unet.attn_processors
    captured = {name for name, p in processors.items() if isinstance(p, CaptureAttnProcessor)}
    assert captured == set(store.layer_names) and len(captured) < len(processors)
    assert all(isinstance(p, AttnProcessor2_0) for name, p in processors.items() if name not in captured)
