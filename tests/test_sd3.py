"""SepEn and the latent guidance on SD3 (docs/backbones.md, the SD3 plan), on the tiny SD3 built offline: the text
maps of joint attention, the flow-matching forward process, training of the text keys (`add_k_proj`) alone, and
Attend-and-Excite's and the test-time variant's latent steps through SD3's own pipeline loop."""

import pytest
import torch

from sae.attention import (CaptureJointAttnProcessor, StopForward, capture_attention, capture_transformer_attention,
                           transformer_attention_layers, object_maps)
from sae.backbones import conditioning
from sae.finetune import ConceptPair, FinetuneConfig, finetune, sepen_losses, trainable_parameters
from sae.models import load_pipeline
from sae.tokens import find_token_indices
from transformer_batches import run, training_batch

PAIR = ConceptPair("a cat and a dog", ["cat", "dog"])


@pytest.fixture(scope="module")
def sd3_dir(tiny_models):
    return tiny_models("sd3")


@pytest.fixture
def sd3(sd3_dir):
    """A fresh pipeline per test (tests train it in place)."""
    return load_pipeline(sd3_dir, device="cpu")


def transformer_inputs(pipe, prompts, seed=0):
    return training_batch(pipe, prompts, channels=16, seed=seed)


def test_maps_of_every_joint_block_sum_to_one_over_the_text_tokens(sd3):
    transformer = sd3.transformer
    latents, t, text, extra = transformer_inputs(sd3, ["a cat and a dog", "a red car"])
    assert text.shape[1] == 77 + 256  # CLIP's positions first, then T5's
    with torch.no_grad(), capture_attention(transformer) as store:
        run(transformer, latents, t, text, extra)
        maps = store.maps()
    assert sorted(store.by_layer) == ["transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor"]
    assert maps.shape == (2, 16, 16, 333)  # the 2x2 patch grid of a 32x32 latent
    assert maps.min() >= 0
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 16, 16))
    assert not torch.allclose(maps[0], maps[1])  # per prompt


def test_a_map_is_the_joint_softmax_on_a_text_key_over_the_pixels_total_on_the_text_keys(sd3):
    """Written out from the definition: one softmax over image and text keys, its text columns renormalised."""
    transformer = sd3.transformer
    attn = transformer.transformer_blocks[0].attn
    seen = {}
    attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=kw["hidden_states"], ctx=kw["encoder_hidden_states"]),
                                   with_kwargs=True)
    latents, t, text, extra = transformer_inputs(sd3, ["a cat and a dog"])
    with torch.no_grad(), capture_transformer_attention(transformer) as store:
        run(transformer, latents, t, text, extra)
        got = store.by_layer["transformer_blocks.0.attn.processor"]
        heads = attn.heads

        def split(x):
            return x.view(1, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q = torch.cat([split(attn.to_q(seen["x"])), split(attn.add_q_proj(seen["ctx"]))], dim=2)
        k = torch.cat([split(attn.to_k(seen["x"])), split(attn.add_k_proj(seen["ctx"]))], dim=2)
    pixels = seen["x"].shape[1]
    probs = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1)[:, :, :pixels, pixels:]
    expected = (probs / probs.sum(-1, keepdim=True)).mean(1)
    assert got.shape == (1, 256, 333)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("blocks", [None, [1]])
def test_capture_leaves_the_output_unchanged_and_restores_the_processors(sd3, blocks):
    transformer = sd3.transformer
    before = dict(transformer.attn_processors)
    latents, t, text, extra = transformer_inputs(sd3, ["a cat and a dog", "a red car"])
    with torch.no_grad():
        reference = run(transformer, latents, t, text, extra)
        with capture_transformer_attention(transformer, blocks) as store:
            captured = run(transformer, latents, t, text, extra)
            during = transformer.attn_processors
        after = run(transformer, latents, t, text, extra)
    names = transformer_attention_layers(transformer, blocks)
    assert sorted(store.by_layer) == names and len(names) == (2 if blocks is None else 1)
    assert all(isinstance(during[n], CaptureJointAttnProcessor) for n in names)
    torch.testing.assert_close(captured, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, reference)
    assert all(transformer.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(ValueError, match="do not fit"):
        transformer_attention_layers(transformer, [2])


def test_stop_after_last_skips_the_rest_of_the_transformer(sd3):
    transformer = sd3.transformer
    calls = []
    transformer.transformer_blocks[1].register_forward_pre_hook(lambda *a: calls.append("block 1"))
    latents, t, text, extra = transformer_inputs(sd3, ["a cat and a dog"])
    with torch.no_grad(), capture_transformer_attention(transformer, [0], stop_after_last=True) as store:
        with pytest.raises(StopForward):
            run(transformer, latents, t, text, extra)
    assert list(store.by_layer) == ["transformer_blocks.0.attn.processor"] and calls == []


def test_gradients_reach_the_text_keys_and_nothing_else(sd3):
    transformer = sd3.transformer
    params = trainable_parameters(transformer)
    assert sorted(params) == [f"transformer_blocks.{b}.attn.add_k_proj.{w}" for b in (0, 1) for w in ("bias", "weight")]
    assert trainable_parameters(transformer, "add_k").keys() == params.keys()
    with pytest.raises(ValueError, match="text keys"):
        trainable_parameters(transformer, "q")
    transformer.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    latents, t, text, extra = transformer_inputs(sd3, [PAIR.prompt] * 2)
    groups = find_token_indices(sd3.tokenizer, PAIR.prompt, PAIR.objects)
    assert groups == [[2], [5]]  # CLIP's positions, the first 77 of the text sequence
    losses = sepen_losses(transformer, latents, t, text, groups, unet_kwargs=extra)
    assert set(losses) == {"sep", "en"} and all(torch.isfinite(v) for v in losses.values())
    (losses["sep"] + losses["en"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    others = [n for n, p in sd3.transformer.named_parameters() if p.grad is not None and n not in params]
    assert others == []


def test_object_maps_read_the_clip_positions(sd3):
    latents, t, text, extra = transformer_inputs(sd3, [PAIR.prompt])
    with torch.no_grad(), capture_attention(sd3.transformer) as store:
        run(sd3.transformer, latents, t, text, extra)
        maps = store.maps()
    objects = object_maps(maps, [[2], [5]])
    assert objects.shape == (1, 2, 16, 16)
    torch.testing.assert_close(objects[:, 1], maps[..., 5])


def test_conditioning_and_the_flow_matching_forward_process(sd3):
    from sae.finetune import _noisy_batch, forward_process

    text, extra = conditioning(sd3, [PAIR.prompt])
    with torch.no_grad():
        own, _, pooled, _ = sd3.encode_prompt(PAIR.prompt, None, None, do_classifier_free_guidance=False)
    assert set(extra) == {"pooled_projections"} and pooled.shape == (1, 64)
    assert torch.equal(text, own) and torch.equal(extra["pooled_projections"], pooled)
    forward = forward_process(sd3)
    noisy, t = _noisy_batch(sd3, 4, 8, torch.Generator().manual_seed(1), "cpu", amplitude=0.5, forward=forward)
    generator = torch.Generator().manual_seed(1)  # the same draws by hand
    clean = torch.randn(4, 16, 8, 8, generator=generator) * 0.5
    noise = torch.randn(4, 16, 8, 8, generator=generator)
    torch.testing.assert_close(t, torch.randint(0, 1000, (4,), generator=generator))
    sigma = (t.float() / 1000).view(4, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - sigma) * clean + sigma * noise)


def test_settings_that_do_not_fit_sd3_are_refused(sd3, tiny_model_dir):
    with pytest.raises(ValueError, match="patch grid"):
        finetune(sd3, PAIR, FinetuneConfig(steps=1, map_downscale=8), progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        finetune(sd3, PAIR, FinetuneConfig(steps=1, joint_blocks=(2,)), progress=False)
    with pytest.raises(ValueError, match="text keys"):
        finetune(sd3, PAIR, FinetuneConfig(steps=1, projection="v"), progress=False)
    sd = load_pipeline(tiny_model_dir, device="cpu")
    with pytest.raises(ValueError, match="joint_blocks chooses SD3"):
        finetune(sd, PAIR, FinetuneConfig(steps=1, joint_blocks=(0,)), progress=False)
    with pytest.raises(ValueError, match="add_k is SD3"):
        trainable_parameters(sd.unet, "add_k")
    assert "joint_blocks" not in FinetuneConfig().to_dict()  # UNet runs' settings (and cache keys) as they were
    assert FinetuneConfig(joint_blocks=[1]).to_dict()["joint_blocks"] == (1,)


def snapshot(pipe):
    return {f"{part}.{name}": t.clone() for part in ("transformer", "text_encoder", "text_encoder_2",
                                                     "text_encoder_3", "vae")
            for name, t in getattr(pipe, part).state_dict().items()}


def test_finetune_steps_change_only_the_text_keys(sd3):
    before = snapshot(sd3)
    result = finetune(sd3, PAIR, FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-3, lambda_norm=0.5),
                      progress=False)
    after = snapshot(sd3)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"transformer.{n}" for n in trainable_parameters(sd3.transformer)}
    assert all(isinstance(row[k], float) for row in result.history for k in ("total", "sep", "en", "norm"))
    assert result.history[0]["norm"] == 0.0 and result.history[1]["norm"] > 0  # the frozen base, then apart


def test_one_block_trains_with_its_own_maps(sd3):
    result = finetune(sd3, PAIR, FinetuneConfig(steps=1, batch_size=1, joint_blocks=(0,)), progress=False)
    assert set(result.tensors) == set(trainable_parameters(sd3.transformer))


@pytest.mark.parametrize("trained", ["sep", "en"])
def test_thirty_steps_lower_each_loss_trained_alone(sd3, trained):
    weights = {"lambda_sep": float(trained == "sep"), "lambda_en": float(trained == "en")}
    result = finetune(sd3, PAIR, FinetuneConfig(steps=30, batch_size=2, learning_rate=1e-2, **weights),
                      progress=False)
    first, last = result.history[:10], result.history[-10:]
    mean = lambda rows: sum(r[trained] for r in rows) / len(rows)  # noqa: E731
    assert mean(last) < mean(first)


def test_sae_train_on_sd3_writes_a_checkpoint_that_loads_back(sd3_dir, tiny_model_dir, tmp_path, capsys):
    from sae.checkpoint import BaseModelMismatchError, CheckpointError, apply_delta, load_delta
    from sae.cli import main

    out = tmp_path / "train"
    assert main(["train", "--model", str(sd3_dir), "--prompt", PAIR.prompt, "--objects", "cat,dog", "--steps", "3",
                 "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert "3 steps" in capsys.readouterr().out
    delta = load_delta(out / "sepen.safetensors")
    pipe = load_pipeline(sd3_dir, device="cpu")
    keys = trainable_parameters(pipe.transformer)
    assert set(delta.tensors) == set(keys) and delta.config["projection"] == "k"
    assert not all(torch.equal(delta.tensors[n], p) for n, p in keys.items())  # trained
    apply_delta(pipe.transformer, delta)  # the base's fingerprint matches
    assert all(torch.equal(delta.tensors[n], p) for n, p in keys.items())
    with pytest.raises(CheckpointError):
        apply_delta(load_pipeline(tiny_model_dir, device="cpu").unet, out / "sepen.safetensors")
    other = load_pipeline(sd3_dir, device="cpu")  # the same architecture, other base weights
    with torch.no_grad():
        other.transformer.transformer_blocks[0].attn.to_q.weight.add_(0.01)
    with pytest.raises(BaseModelMismatchError):
        apply_delta(other.transformer, delta)
    # `sae sample --delta` applies it to the transformer
    assert main(["sample", "--model", str(sd3_dir), "--delta", str(out / "sepen.safetensors"), "--prompt",
                 PAIR.prompt, "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 1
    capsys.readouterr()
    # the training report draws a UNet's maps: refused in one line before anything is written
    assert main(["train", "--model", str(sd3_dir), "--prompt", PAIR.prompt, "--objects", "cat,dog", "--steps", "1",
                 "--out", str(tmp_path / "report"), "--report"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --report draws the maps of sd, sdxl models, not of sd3: train without it"]
    assert not (tmp_path / "report").exists()


def test_the_guidance_pass_is_the_pipelines_and_reads_the_clip_positions(sd3):
    from sae.backbones import guidance_pass

    family_pass = guidance_pass(sd3, PAIR.prompt, 2, 64, 64)
    latents, t, text, extra = transformer_inputs(sd3, [PAIR.prompt] * 2)
    assert torch.equal(family_pass.text, text) and torch.equal(family_pass.kwargs["pooled_projections"],
                                                                extra["pooled_projections"])
    t = torch.tensor(500.0)
    with torch.no_grad(), capture_attention(sd3.transformer) as store:
        out = family_pass(latents, t)[0]
    assert torch.allclose(out, run(sd3.transformer, latents, t.expand(2), text, extra), atol=1e-6)
    maps = store.maps()
    clip = family_pass.text_maps(maps)
    assert maps.shape[-1] > 77 and clip.shape == (*maps.shape[:-1], 77)
    assert torch.allclose(clip.sum(-1), torch.ones(clip.shape[:-1]), atol=1e-5)
    # each CLIP position's share of what the pixel gives the CLIP positions
    pixel = maps[1, 3, 4]
    assert torch.allclose(clip[1, 3, 4, 5], pixel[5] / pixel[:77].sum(), atol=1e-6)


@pytest.mark.parametrize("method", ["attend_excite", "sepen_tt"])
def test_latent_guidance_on_sd3_steps_the_latents_only_and_leaves_the_loop_as_it_is(sd3, method):
    import numpy as np

    from benchmark.guidance import attend_and_excite, sepen_test_time
    from sae.backbones import guidance_pass
    from sae.sampling import seed_generators

    make = attend_and_excite if method == "attend_excite" else \
        (lambda steps, **kw: sepen_test_time(num_inference_steps=steps, **kw))
    groups = find_token_indices(sd3.tokenizer, PAIR.prompt, PAIR.objects)
    seen = []
    before = {n: p.detach().clone() for n, p in sd3.transformer.named_parameters()}
    guidance = make(4)
    loss_fn = guidance.loss_fn
    guidance.loss_fn = lambda maps, token_groups: seen.append(maps.shape) or loss_fn(maps, token_groups)
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    sd3.scheduler.set_timesteps(4)
    stepped = guidance.update(guidance_pass(sd3, PAIR.prompt, 1, 64, 64), latents, sd3.scheduler.timesteps[1], 1,
                              groups, 20.0)
    moved = (stepped - latents).abs().max().item()
    assert 0 < moved < 10 and torch.isfinite(stepped).all()  # a gradient step on the latents
    assert seen and all(shape[-1] == 77 for shape in seen)  # the loss read CLIP's positions
    assert all(torch.equal(p, before[n]) for n, p in sd3.transformer.named_parameters())  # the weights stay
    # with a zero step the guided loop is SD3's own pipeline loop: the same image
    unmoved = make(4, scale_factor=0.0).generate(sd3, PAIR.prompt, groups, seed_generators([0]), 4, 5.0)[0]
    plain = sd3(PAIR.prompt, num_inference_steps=4, guidance_scale=5.0, generator=seed_generators([0])).images[0]
    assert np.abs(np.asarray(unmoved, dtype=int) - np.asarray(plain, dtype=int)).max() <= 1
    moved_image = make(4, scale_factor=2000.0).generate(sd3, PAIR.prompt, groups, seed_generators([0]), 4, 5.0)[0]
    assert np.abs(np.asarray(moved_image, dtype=int) - np.asarray(plain, dtype=int)).max() > 1


def test_the_guided_loop_keeps_a_dynamically_shifted_schedule(sd3):
    """A flow-matching scheduler with dynamic shifting takes SD3's pipeline's shift: with a zero step the guided
    loop's images are still the pipeline's own."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from benchmark.guidance import attend_and_excite
    from sae.backbones import schedule_kwargs
    from sae.sampling import seed_generators

    sd3.scheduler = FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler.config, use_dynamic_shifting=True)
    assert set(schedule_kwargs(sd3, 64, 64)) == {"mu"}
    groups = find_token_indices(sd3.tokenizer, PAIR.prompt, PAIR.objects)
    unmoved = attend_and_excite(4, scale_factor=0.0).generate(sd3, PAIR.prompt, groups, seed_generators([0]), 4,
                                                             5.0)[0]
    plain = sd3(PAIR.prompt, num_inference_steps=4, guidance_scale=5.0, generator=seed_generators([0])).images[0]
    assert np.abs(np.asarray(unmoved, dtype=int) - np.asarray(plain, dtype=int)).max() <= 1
