import csv

import pytest
import torch

from sae.finetune import (ConceptPair, ConceptPool, FinetuneConfig, TrainingDivergedError, finetune,
                          trainable_parameters)

PAIR = ConceptPair("a cat and a dog", ["cat", "dog"])


def snapshot(pipe):
    return {f"{part}.{name}": t.clone() for part in ("unet", "text_encoder", "vae")
            for name, t in getattr(pipe, part).state_dict().items()}


def changed(before, pipe):
    after = snapshot(pipe)
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("projection", ["k", "q", "v"])
def test_one_step_changes_only_the_selected_projection(tiny_pipe, projection):
    before = snapshot(tiny_pipe)
    finetune(tiny_pipe, PAIR, FinetuneConfig(steps=1, batch_size=2, learning_rate=1e-3, projection=projection),
             progress=False)
    diff = changed(before, tiny_pipe)
    assert diff, "the step changed nothing"
    assert all(name.startswith("unet.") and f".attn2.to_{projection}." in name for name in diff), diff
    # nothing of the training stays on the weights: no gradient held, none asked for
    assert all(p.grad is None and not p.requires_grad for p in tiny_pipe.unet.parameters())


def test_layers_after_the_last_captured_one_get_no_gradient_without_norm_loss(tiny_pipe):
    before = snapshot(tiny_pipe)
    finetune(tiny_pipe, PAIR, FinetuneConfig(steps=1, batch_size=2, learning_rate=1e-3), progress=False)
    diff = changed(before, tiny_pipe)
    # the maps are read in down_blocks.2 and up_blocks.1: earlier layers feed them, up_blocks.2/3 cannot
    assert any("down_blocks.0." in n for n in diff) and any("up_blocks.1." in n for n in diff)
    assert not any("up_blocks.2." in n or "up_blocks.3." in n for n in diff)


def test_norm_loss_trains_every_key_and_starts_at_zero(tiny_pipe):
    before = snapshot(tiny_pipe)
    result = finetune(tiny_pipe, PAIR, FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-3, lambda_norm=1.0),
                      progress=False)
    diff = changed(before, tiny_pipe)
    keys = {f"unet.{n}" for n in trainable_parameters(tiny_pipe.unet, "k")}
    assert diff == keys
    assert result.history[0]["norm"] == 0.0  # identical to the frozen base before the first update
    assert result.history[1]["norm"] > 0.0


@pytest.mark.parametrize("trained", ["sep", "en"])
def test_fifty_steps_lower_each_loss_trained_alone(tiny_model_dir, trained):
    from sae.models import load_pipeline

    weights = {"lambda_sep": float(trained == "sep"), "lambda_en": float(trained == "en")}
    result = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=50, learning_rate=1e-2, **weights),
                      progress=False)
    first, last = result.history[:10], result.history[-10:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, trained) < mean(first, trained)


def test_nan_stops_with_a_clear_message_and_keeps_the_weights(tiny_pipe, tmp_path):
    key = next(iter(trainable_parameters(tiny_pipe.unet).values()))
    with torch.no_grad():
        key[0, 0] = float("nan")
    before = snapshot(tiny_pipe)
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 0"):
        finetune(tiny_pipe, PAIR, FinetuneConfig(steps=3), out_dir=tmp_path, progress=False)
    after = snapshot(tiny_pipe)
    assert all(torch.equal(before[n], after[n]) or torch.isnan(before[n]).any() for n in before)


def test_resumed_run_equals_an_uninterrupted_one(tiny_model_dir, tmp_path):
    from sae.models import load_pipeline

    config = dict(batch_size=2, learning_rate=1e-3, checkpoint_every=2)
    straight = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=4, **config),
                        out_dir=tmp_path / "a", progress=False)
    finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=2, **config), out_dir=tmp_path / "b",
             progress=False)
    resumed = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=4, **config),
                       out_dir=tmp_path / "b", progress=False)
    assert [h["step"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.history == straight.history
    for name, tensor in straight.tensors.items():
        assert torch.equal(tensor, resumed.tensors[name])
    with open(tmp_path / "b" / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]


def test_out_folder_of_another_run_is_refused(tiny_pipe, tmp_path):
    finetune(tiny_pipe, PAIR, FinetuneConfig(steps=1, batch_size=1), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="run with other concepts, prompt"):
        finetune(tiny_pipe, ConceptPair("a cat and a bowl", ["cat", "bowl"]), FinetuneConfig(steps=2, batch_size=1),
                 out_dir=tmp_path, progress=False)


def test_concept_pool_draws_as_the_release_one_connector_and_no_concept_twice_a_batch():
    pool = ConceptPool([f"c{i}" for i in range(10)])
    for step in range(20):
        batch = pool.draw(step=step, batch_size=4, seed=0)
        assert batch == pool.draw(step=step, batch_size=4, seed=0)
        drawn = [c for _, pair in batch for c in pair]
        assert len(set(drawn)) == 8  # 2 x batch concepts, none repeated
        (connector,) = {prompt.split()[5] for prompt, _ in batch}  # one connector for the whole batch
        assert connector in ("and", "with")
        assert [prompt for prompt, _ in batch] == [f"a photo of a {a} {connector} a {b}" for _, (a, b) in batch]
    assert {pool.draw(step=s, batch_size=4, seed=0)[0][0].split()[5] for s in range(20)} == {"and", "with"}
    small = ConceptPool(["cat", "dog", "apple"])  # fewer than 2 x batch: each element's two concepts apart
    assert all(a != b for _, (a, b) in small.draw(step=0, batch_size=4, seed=0))
    with pytest.raises(ValueError, match="two distinct"):
        ConceptPool(["cat", "cat"])


def test_large_scale_training_runs_with_norm_loss(tiny_pipe):
    result = finetune(tiny_pipe, ConceptPool(["cat", "dog", "apple"]),
                      FinetuneConfig.large_scale(steps=2, batch_size=2), progress=False)
    assert len(result.history) == 2 and all(isinstance(h["norm"], float) for h in result.history)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="projection"):
        FinetuneConfig(projection="o")
    with pytest.raises(ValueError, match="mixed_precision"):
        FinetuneConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="maps must be one of"):
        FinetuneConfig(maps="softmax")


def test_sharpened_maps_give_the_losses_of_attend_and_excite_maps(tiny_pipe):
    """The same pass read two ways: sharpened text maps give each object a larger peak, so a smaller Enhance."""
    from sae.finetune import encode_prompts, sepen_losses
    from sae.tokens import find_token_indices

    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 32, 32, generator=generator)
    timesteps = torch.tensor([500, 500])
    text = encode_prompts(tiny_pipe, [PAIR.prompt] * 2)
    groups = find_token_indices(tiny_pipe.tokenizer, PAIR.prompt, PAIR.objects)
    with torch.no_grad():
        probs = sepen_losses(tiny_pipe.unet, noisy, timesteps, text, groups, maps_kind="probs")
        sharp = sepen_losses(tiny_pipe.unet, noisy, timesteps, text, groups, maps_kind="sharpened")
    assert 0 <= sharp["en"] < probs["en"] <= 1
    assert not torch.isclose(sharp["sep"], probs["sep"])


def test_sample_latents_are_the_base_models_own_samples_from_offset_seeds(tiny_pipe):
    from sae.finetune import SAMPLE_SEED_BASE, sample_latents
    from sae.sampling import seed_generators

    config = FinetuneConfig(latents="samples", latent_samples=3, sample_steps=2, sample_guidance=3.0, seed=1)
    pool = sample_latents(tiny_pipe, PAIR.prompt, config)
    seeds = [SAMPLE_SEED_BASE + 3, SAMPLE_SEED_BASE + 4, SAMPLE_SEED_BASE + 5]  # seed 1, three samples each
    expected = tiny_pipe(prompt=[PAIR.prompt] * 3, generator=seed_generators(seeds), num_inference_steps=2,
                         guidance_scale=3.0, output_type="latent").images
    assert pool.shape == (3, 4, 32, 32)
    torch.testing.assert_close(pool, expected, rtol=1e-5, atol=1e-5)


def test_noisy_batch_noises_latents_drawn_from_the_pool():
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from sae.finetune import _noisy_batch

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(in_channels=1), dtype=torch.float32),
                           scheduler=scheduler)
    pool = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)  # sample i is the constant i
    noisy, timesteps = _noisy_batch(pipe, 5, 2, torch.Generator().manual_seed(7), "cpu", pool)
    generator = torch.Generator().manual_seed(7)  # the same draws by hand: which samples, noise, timesteps
    index = torch.randint(0, 3, (5,), generator=generator)
    noise = torch.randn(5, 1, 2, 2, generator=generator)
    t = torch.randint(0, 1000, (5,), generator=generator)
    alpha = scheduler.alphas_cumprod[t].view(5, 1, 1, 1)
    torch.testing.assert_close(timesteps, t)
    torch.testing.assert_close(noisy, alpha.sqrt() * index.float().view(5, 1, 1, 1) + (1 - alpha).sqrt() * noise)


def test_noisy_batch_draws_timesteps_from_the_configured_range(tiny_model_dir):
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from sae.finetune import _noisy_batch
    from sae.models import load_pipeline

    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(in_channels=1), dtype=torch.float32),
                           scheduler=DDPMScheduler(num_train_timesteps=1000))
    _, timesteps = _noisy_batch(pipe, 64, 2, torch.Generator().manual_seed(3), "cpu", timestep_range=(900, 5000))
    assert timesteps.min() >= 900 and timesteps.max() < 1000  # capped at the scheduler's timesteps
    assert len(timesteps.unique()) > 20
    with pytest.raises(ValueError, match="no timestep"):
        _noisy_batch(pipe, 4, 2, torch.Generator(), "cpu", timestep_range=(1000, 1200))
    for bad in [(500, 500), (-1, 10), (1, 2, 3)]:
        with pytest.raises(ValueError, match="timesteps must be a range"):
            FinetuneConfig(timesteps=bad)

    def first_loss(timesteps):  # the range reaches training: the same draws, other timesteps, other losses
        config = FinetuneConfig(steps=1, batch_size=2, timesteps=timesteps)
        return finetune(load_pipeline(tiny_model_dir), PAIR, config, progress=False).history
    assert first_loss((0, 1000)) != first_loss((990, 1000))


def test_training_on_samples_is_reproducible_and_needs_one_pair(tiny_model_dir):
    from sae.models import load_pipeline

    config = FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-3, latents="samples", latent_samples=2,
                            sample_steps=2)
    first = finetune(load_pipeline(tiny_model_dir), PAIR, config, progress=False)
    second = finetune(load_pipeline(tiny_model_dir), PAIR, config, progress=False)
    noise = finetune(load_pipeline(tiny_model_dir), PAIR, FinetuneConfig(steps=2, batch_size=2, learning_rate=1e-3),
                     progress=False)
    assert first.history == second.history
    assert first.history != noise.history  # the samples, not Gaussian latents, were noised
    with pytest.raises(ValueError, match="needs one concept pair"):
        finetune(load_pipeline(tiny_model_dir), ConceptPool(["cat", "dog", "apple"]), config, progress=False)
    with pytest.raises(ValueError, match="latents must be one of"):
        FinetuneConfig(latents="images")


def test_clean_latents_have_the_vae_scaling_factor_std_at_t0(tiny_pipe):
    from sae.finetune import _noisy_batch, latent_amplitude

    assert tiny_pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    abar0 = float(tiny_pipe.scheduler.alphas_cumprod[0])  # 1 - beta_0 = 0.99915: t = 0 is nearly clean
    for scale, amplitude in (("vae", 0.18215), ("unit", 1.0)):
        assert latent_amplitude(tiny_pipe, scale) == pytest.approx(amplitude)
        noisy, _ = _noisy_batch(tiny_pipe, 64, 16, torch.Generator().manual_seed(0), "cpu", timestep_range=(0, 1),
                                amplitude=latent_amplitude(tiny_pipe, scale))
        expected = (abar0 * amplitude ** 2 + 1 - abar0) ** 0.5
        assert noisy.std().item() == pytest.approx(expected, rel=0.02)


def test_training_noises_with_ddpm_betas_whatever_the_sampling_scheduler(tiny_model_dir, tmp_path):
    """An Euler (sigma-based) model folder: training still noises as sqrt(abar) x + sqrt(1 - abar) n."""
    import shutil

    from diffusers import EulerDiscreteScheduler

    from sae.finetune import _noisy_batch, forward_process
    from sae.models import load_pipeline

    folder = tmp_path / "euler"
    shutil.copytree(tiny_model_dir, folder)
    pipe = load_pipeline(folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(folder)
    pipe = load_pipeline(folder)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    config = pipe.scheduler.config  # SD's "scaled_linear" betas, by hand
    betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, dim=0).float()
    noisy, t = _noisy_batch(pipe, 4, 8, torch.Generator().manual_seed(1), "cpu", amplitude=0.5,
                            forward=forward_process(pipe))
    generator = torch.Generator().manual_seed(1)
    clean = torch.randn(4, 4, 8, 8, generator=generator) * 0.5
    noise = torch.randn(4, 4, 8, 8, generator=generator)
    torch.testing.assert_close(t, torch.randint(0, 1000, (4,), generator=generator))
    a = abar[t].view(4, 1, 1, 1)
    torch.testing.assert_close(noisy, a.sqrt() * clean + (1 - a).sqrt() * noise, atol=1e-5, rtol=1e-5)
    sigma_noised = pipe.scheduler.add_noise(clean, noise, pipe.scheduler.timesteps[:4])  # what Euler would do
    assert not torch.allclose(sigma_noised, noisy, atol=1e-2)


def test_norm_prompts_split_the_batch_per_pair_and_take_the_first_concept_large_scale():
    from sae.finetune import norm_prompts

    batch = PAIR.draw(0, 4, 0)
    assert norm_prompts(PAIR, batch) == ["a photo of cat"] * 2 + ["a photo of dog"] * 2  # the release's words
    pool = ConceptPool(["cat", "dog", "owl", "apple"])
    drawn = pool.draw(3, 4, 0)
    assert norm_prompts(pool, drawn) == [f"a photo of a {o[0]}" for _, o in drawn]  # "a" even before a vowel


@pytest.mark.parametrize("norm_step, optimizer_steps", [("combined", 2), ("separate", 4)])
def test_separate_norm_step_takes_a_second_optimizer_step(tiny_pipe, tmp_path, norm_step, optimizer_steps):
    config = FinetuneConfig(steps=2, batch_size=2, lambda_norm=0.5, norm_step=norm_step, learning_rate=1e-3)
    result = finetune(tiny_pipe, PAIR, config, out_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)["optimizer"]["state"]
    # keys after the last captured layer get gradient from the norm loss alone: one step per iteration
    assert {float(s["step"]) for s in state.values()} == {2, optimizer_steps}
    row = result.history[1]
    assert row["total"] == pytest.approx(row["sep"] + 0.5 * row["en"] + 0.5 * row["norm"], rel=1e-5)
    assert FinetuneConfig.large_scale().norm_step == "separate" and FinetuneConfig().norm_step == "combined"


def test_release_head_groups_are_the_releases_reshape_of_the_kept_rows():
    """Batch 4, 4 heads: the release keeps rows 8-15 of the (image x head) rows and reshapes them to 4 groups of
    2: image 2's heads 0-1 and 2-3, then image 3's."""
    from sae.finetune import release_head_groups

    maps = torch.arange(4 * 4, dtype=torch.float32).reshape(4, 4, 1, 1, 1)  # value = image * 4 + head
    groups = release_head_groups(maps)
    assert groups.flatten().tolist() == [8, 9, 10, 11, 12, 13, 14, 15] and groups.shape == (4, 2, 1, 1, 1)
    assert groups[:, :, 0, 0, 0].tolist() == [[8, 9], [10, 11], [12, 13], [14, 15]]
    with pytest.raises(ValueError, match="even number of heads"):
        release_head_groups(torch.zeros(4, 3, 1, 1, 1))


def test_release_heads_take_each_losss_max_within_a_group_and_average_the_groups(tiny_pipe):
    from sae.attention import capture_cross_attention
    from sae.finetune import encode_prompts, sepen_losses
    from sae.losses import enhance_peaks

    torch.manual_seed(0)
    noisy, t = torch.randn(4, 4, 32, 32), torch.tensor([100, 300, 500, 700])
    text = encode_prompts(tiny_pipe, ["a cat and a dog"] * 4)
    with torch.no_grad(), capture_cross_attention(tiny_pipe.unet, keep_heads=True) as store:
        tiny_pipe.unet(noisy, t, encoder_hidden_states=text)
        per_head = store.maps()
        with capture_cross_attention(tiny_pipe.unet) as averaged:
            tiny_pipe.unet(noisy, t, encoder_hidden_states=text)
    assert per_head.shape == (4, 4, 8, 8, 77)  # (batch, heads, H, W, tokens)
    torch.testing.assert_close(per_head.mean(dim=1), averaged.maps())
    # images 2 and 3, two heads a group (written out, not through release_head_groups)
    groups = torch.stack([per_head[2, :2], per_head[2, 2:], per_head[3, :2], per_head[3, 2:]])
    objects = groups[..., [2, 5]].permute(0, 1, 4, 2, 3)  # (group, heads, K, H, W)
    with torch.no_grad():
        losses = sepen_losses(tiny_pipe.unet, noisy, t, text, [[2], [5]], heads="release")
    expected_en = (1 - enhance_peaks(objects).amax(dim=1).amin(dim=-1)).mean()
    a, b = objects[:, :, 0], objects[:, :, 1]
    expected_sep = (a * b / (a + b)).amax(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(losses["en"], expected_en)
    torch.testing.assert_close(losses["sep"], expected_sep)


def test_release_quirks_config():
    quirky = FinetuneConfig().with_release_quirks()
    assert (quirky.heads, quirky.token_positions) == ("release", None)
    assert quirky.learning_rate == pytest.approx(8e-6)  # run_individual.sh: 2e-6 x batch 4 (--scale_lr)
    assert FinetuneConfig(lambda_norm=1.0).with_release_quirks().learning_rate == pytest.approx(16e-6)  # --use_norm
    large = FinetuneConfig.large_scale().with_release_quirks(large_scale=True)
    assert large.token_positions == (6, 9) and large.learning_rate == pytest.approx(4e-6)  # 5e-7 x 4 x 2
    assert FinetuneConfig(latent_scale="0.18").latent_scale == 0.18  # a std of its own (a probe's amplitude)
    for bad in ({"latent_scale": "half"}, {"smoothing": "box"}, {"norm_step": "twice"}, {"heads": "min"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FinetuneConfig(**bad)
