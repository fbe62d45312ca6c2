"""SepEn and the latent guidance on PixArt-Sigma (docs/backbones.md), on the tiny PixArt built offline: a DiT whose
blocks cross-attend to T5's tokens, so SD's recipe applies at the patch grid, with T5's positions (no start token)
and its padding masked."""

import numpy as np
import pytest
import torch

from sae.attention import capture_attention, object_maps
from sae.backbones import guidance_pass, sampled_size
from sae.finetune import ConceptPair, FinetuneConfig, finetune, sepen_losses, trainable_parameters
from sae.models import load_pipeline
from sae.sampling import seed_generators
from sae.tokens import find_token_indices
from transformer_batches import run, training_batch

PAIR = ConceptPair("a cat and a dog", ["cat", "dog"])


@pytest.fixture
def pixart(tiny_models):
    """A fresh pipeline per test (tests train it in place)."""
    return load_pipeline(tiny_models("pixart"), device="cpu")


def inputs(pipe, prompts):
    return training_batch(pipe, prompts, channels=4)


def test_t5_positions_count_from_the_first_word(pixart):
    tokenizer = pixart.tokenizer
    assert tokenizer.bos_token_id is None  # T5: no start token
    assert find_token_indices(tokenizer, PAIR.prompt, PAIR.objects) == [[1], [4]]
    assert find_token_indices(tokenizer, "cat and a dog", ["cat", "dog"]) == [[0], [3]]
    ids = tokenizer("cats and a dog").input_ids  # a word the tiny vocabulary lacks: its pieces, all of them
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["▁cat", "s"] and ids[-1] == tokenizer.eos_token_id
    assert find_token_indices(tokenizer, "cats and a dog", ["cats", "dog"]) == [[0, 1], [4]]


def test_maps_of_every_block_sum_to_one_over_the_prompts_tokens(pixart):
    latents, t, text, extra = inputs(pixart, [PAIR.prompt] * 2)
    mask = extra["encoder_attention_mask"]
    length = int(mask[0].sum())
    assert length == len(pixart.tokenizer(PAIR.prompt).input_ids)  # the words and the end token
    with torch.no_grad(), capture_attention(pixart.transformer) as store:
        captured = run(pixart.transformer, latents, t, text, extra)
    assert list(store.by_layer) == [f"transformer_blocks.{b}.attn2.processor" for b in (0, 1)]
    maps = store.maps()
    assert maps.shape == (2, 4, 4, text.shape[1])  # the 8x8 patch grid of a 32x32 latent, over T5's padded tokens
    assert torch.allclose(maps[..., :length].sum(-1), torch.ones(2, 4, 4), atol=1e-5)
    assert maps[..., length:].abs().max() < 1e-6  # the padding is masked
    with torch.no_grad():
        plain = run(pixart.transformer, latents, t, text, extra)
    assert torch.allclose(captured, plain, atol=1e-5)  # the capture leaves the output as it is
    assert all(type(p).__name__ != "CaptureAttnProcessor" for p in pixart.transformer.attn_processors.values())


def test_gradients_reach_the_cross_attention_keys_and_nothing_else(pixart):
    transformer = pixart.transformer
    params = trainable_parameters(transformer)
    assert sorted({n.rsplit(".", 1)[0] for n in params}) == [f"transformer_blocks.{b}.attn2.to_k" for b in (0, 1)]
    transformer.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    latents, t, text, extra = inputs(pixart, [PAIR.prompt] * 2)
    groups = find_token_indices(pixart.tokenizer, PAIR.prompt, PAIR.objects)
    losses = sepen_losses(transformer, latents, t, text, groups, unet_kwargs=extra)
    (losses["sep"] + losses["en"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    assert [n for n, p in transformer.named_parameters() if p.grad is not None and n not in params] == []


def test_settings_that_do_not_fit_a_transformer_are_refused(pixart):
    with pytest.raises(ValueError, match="patch grid"):
        finetune(pixart, PAIR, FinetuneConfig(steps=1, map_downscale=2), progress=False)
    with pytest.raises(ValueError, match="maps sharpened"):  # T5 has no start token to drop
        finetune(pixart, PAIR, FinetuneConfig(steps=1, maps="sharpened"), progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        finetune(pixart, PAIR, FinetuneConfig(steps=1, joint_blocks=(5,)), progress=False)


def test_finetune_changes_only_the_keys_and_sae_train_writes_a_checkpoint_that_loads_back(tiny_models, tmp_path,
                                                                                          capsys):
    from sae.checkpoint import BaseModelMismatchError, apply_delta, load_delta
    from sae.cli import main

    pixart_dir = tiny_models("pixart")
    pipe = load_pipeline(pixart_dir, device="cpu")
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    finetune(pipe, PAIR, FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-2, lambda_norm=0.5), progress=False)
    changed = {n for n, p in pipe.transformer.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2.to_k." in n for n in changed), changed
    out = tmp_path / "train"
    assert main(["train", "--model", str(pixart_dir), "--prompt", PAIR.prompt, "--objects", "cat,dog", "--steps", "2",
                 "--batch-size", "2", "--lr", "1e-2", "--out", str(out), "--no-progress"]) == 0, \
        capsys.readouterr().err
    delta = load_delta(out / "sepen.safetensors")
    fresh = load_pipeline(pixart_dir, device="cpu")
    apply_delta(fresh.transformer, delta)
    assert set(delta.tensors) == set(trainable_parameters(fresh.transformer))
    other = load_pipeline(pixart_dir, device="cpu")
    with torch.no_grad():
        other.transformer.transformer_blocks[0].attn1.to_q.weight.add_(0.01)
    with pytest.raises(BaseModelMismatchError):
        apply_delta(other.transformer, delta)


def test_the_guidance_reads_the_prompts_tokens_behind_an_empty_start_column(pixart):
    height, width = sampled_size(pixart, 64, 64)
    assert (height, width) == (256, 256)  # the smallest aspect-ratio bin
    family_pass = guidance_pass(pixart, PAIR.prompt, 1, height, width)
    groups = find_token_indices(pixart.tokenizer, PAIR.prompt, PAIR.objects)
    length = len(pixart.tokenizer(PAIR.prompt).input_ids)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture_attention(pixart.transformer) as store:
        family_pass(latents, torch.tensor(500))
    maps = store.maps()
    read = family_pass.text_maps(maps)
    assert read.shape[-1] == length + 1 and torch.equal(read[..., 0], torch.zeros_like(read[..., 0]))
    assert family_pass.text_groups(groups) == [[g + 1 for g in group] for group in groups]
    # the object maps are the same numbers the SepEn losses read at T5's own positions
    assert torch.allclose(object_maps(read, family_pass.text_groups(groups)), object_maps(maps, groups), atol=1e-6)


@pytest.mark.parametrize("method", ["attend_excite", "sepen_tt"])
def test_latent_guidance_on_pixart_steps_the_latents_and_leaves_the_loop_as_it_is(pixart, method):
    from benchmark.guidance import attend_and_excite, sepen_test_time

    make = attend_and_excite if method == "attend_excite" else \
        (lambda steps, **kw: sepen_test_time(num_inference_steps=steps, **kw))
    groups = find_token_indices(pixart.tokenizer, PAIR.prompt, PAIR.objects)
    pixart.scheduler.set_timesteps(4)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    stepped = make(4).update(guidance_pass(pixart, PAIR.prompt, 1, 256, 256), latents, pixart.scheduler.timesteps[1],
                             1, groups, 20.0)
    moved = (stepped - latents).abs().max().item()
    assert 0 < moved < 10 and torch.isfinite(stepped).all()
    # with a zero step the guided loop is PixArt's own loop (its older callback, its aspect-ratio bin): the same image
    unmoved = make(4, scale_factor=0.0).generate(pixart, PAIR.prompt, groups, seed_generators([0]), 4, 4.5)[0]
    plain = pixart(PAIR.prompt, num_inference_steps=4, guidance_scale=4.5, generator=seed_generators([0])).images[0]
    assert unmoved.size == plain.size
    assert np.abs(np.asarray(unmoved, dtype=int) - np.asarray(plain, dtype=int)).max() <= 1
    moved_image = make(4, scale_factor=2000.0).generate(pixart, PAIR.prompt, groups, seed_generators([0]), 4, 4.5)[0]
    assert np.abs(np.asarray(moved_image, dtype=int) - np.asarray(plain, dtype=int)).max() > 1


def test_large_scale_training_on_a_transformer_trains_its_text_keys(tiny_models, tmp_path):
    """`sae train --concepts` (the large-scale run: a concept pool, the norm loss in its own step) on PixArt and SD3."""
    import json

    from sae.checkpoint import load_delta
    from sae.cli import main

    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps(["cat", "dog", "bowl", "frog", "car", "chair", "bear", "book"]))
    for arch, keys in (("pixart", ".attn2.to_k."), ("sd3", ".attn.add_k_proj.")):
        out = tmp_path / arch
        assert main(["train", "--model", str(tiny_models(arch)), "--concepts", str(concepts), "--steps", "2",
                     "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
        delta = load_delta(out / "sepen.safetensors")
        assert delta.tensors and all(keys in name for name in delta.tensors)
        assert delta.config["lambda_norm"] == 0.5 and delta.config["norm_step"] == "separate"  # the release's
