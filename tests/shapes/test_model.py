"""The shipped shapes model (benchmark/shapes/pretrained) and the code that trains and evaluates it."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.shapes.data import HELDOUT_PAIRS, has_heldout_pair, training_batch
from benchmark.shapes.evaluate import eval_prompts, evaluate, generate
from benchmark.shapes.geometry import SHAPES
from benchmark.shapes.world import COLOURS

PRETRAINED = Path(__file__).resolve().parents[2] / "benchmark" / "shapes" / "pretrained"


@pytest.fixture(scope="module")
def pipe():
    from sae.models import load_pipeline

    assert (PRETRAINED / "model_index.json").is_file(), f"the shipped model is missing: {PRETRAINED}"
    return load_pipeline(PRETRAINED, device="cpu")


def test_shipped_folder_is_small_safetensors():
    files = [f for f in PRETRAINED.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert {f.parent.name for f in weights} == {"unet", "vae", "text_encoder"}
    assert all(f.suffix == ".safetensors" for f in weights)


def test_plain_diffusers_loads_it_offline():
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(str(PRETRAINED), safety_checker=None, requires_safety_checker=False)
    assert isinstance(sd.scheduler, DDPMScheduler)
    assert sd.scheduler.config.beta_schedule == "scaled_linear"


def test_architecture(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from sae.attention import cross_attention_layers

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.unet.dtype == torch.float32  # stored in fp16, loaded as fp32
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 32  # 64 px images, 32x32 latents
    assert len(pipe.unet.down_blocks) == 4 and len(pipe.unet.up_blocks) == 4
    blocks = sorted({n.split(".attentions")[0] for n in cross_attention_layers(pipe.unet)})
    assert blocks == ["down_blocks.2", "up_blocks.1"]  # the 1/4-resolution (8x8) maps that SepEn reads
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings == 77
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim


def test_quarter_resolution_maps_are_8x8(pipe):
    from sae.attention import capture_cross_attention
    from sae.finetune import encode_prompts

    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    text = encode_prompts(pipe, ["a red circle and a blue square", "a green triangle"])
    with torch.no_grad(), capture_cross_attention(pipe.unet) as store:
        pipe.unet(latents, torch.tensor([500, 500]), encoder_hidden_states=text)
        maps = store.maps()
    assert maps.shape == (2, 8, 8, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 8, 8), atol=1e-5)


def test_evaluate_reports_every_count(pipe):
    report = evaluate(pipe, n_per_count=2, seed=3, steps=2, guidance=7.5)
    assert set(report) == {"1", "2", "3", "4", "heldout", "settings", "images"}
    images, objects = report["images"]["2"]
    assert len(images) == len(objects) == 2 and all(len(o) == 2 for o in objects)
    for key in ("1", "2", "3", "4", "heldout"):
        assert report[key]["n"] == 2 and 0 <= report[key]["all_found"] <= 1


def test_eval_prompts():
    singles = eval_prompts(1, 36, seed=0)
    assert sorted(map(tuple, singles)) == sorted([((c, s),) for c in COLOURS for s in SHAPES] * 2)
    assert all(len(objs) == 3 for objs in eval_prompts(3, 10))
    assert eval_prompts(2, 10, seed=5) == eval_prompts(2, 10, seed=5) != eval_prompts(2, 10, seed=6)
    assert all(has_heldout_pair(p) for p in eval_prompts("heldout", 12))


def test_training_batches_are_seeded_and_free_of_heldout_pairs():
    images, captions = training_batch(5, seed=1, batch_size=64, caption_dropout=0.1)
    again, captions_again = training_batch(5, seed=1, batch_size=64, caption_dropout=0.1)
    assert np.array_equal(images, again) and captions == captions_again
    assert images.shape == (64, 64, 64, 3) and images.dtype == np.uint8
    assert training_batch(6, seed=1, batch_size=64)[1] != training_batch(5, seed=1, batch_size=64)[1]
    counted = [training_batch(s, seed=0, batch_size=64, count_probs=(0.45, 0.2, 0.2, 0.15))[1] for s in range(8)]
    counts = [c.count(" and ") + 1 for batch in counted for c in batch]
    assert 0.35 < counts.count(1) / len(counts) < 0.55
    for batch in counted:
        for caption in batch:
            words = caption.split()
            objects = [(words[i + 1], words[i + 2]) for i in range(0, len(words), 4)]
            assert not has_heldout_pair(objects), caption
    assert "" in captions  # dropped captions, for classifier-free guidance


def test_heldout_pairs_cover_every_colour_and_shape():
    objects = [o for pair in HELDOUT_PAIRS for o in pair]
    assert len(set(objects)) == len(objects) == 12
    assert {c for c, _ in objects} == set(COLOURS) and {s for _, s in objects} == set(SHAPES)


@pytest.mark.slow
def test_training_resumes_where_it_stopped_and_exports(tmp_path, monkeypatch):
    from sae.models import load_pipeline
    from benchmark.shapes import train
    from benchmark.shapes.data import BatchStream

    def args(out, *extra):
        return ["--out", str(out), "--vae-steps", "2", "--vae-batch", "2", "--decoder-steps", "2", "--steps", "3",
                "--batch", "2",
                "--warmup", "1", "--checkpoint-minutes", "0", *extra]

    train.main(args(tmp_path / "straight"))
    straight = torch.load(tmp_path / "straight" / "diffusion.pt", weights_only=False)
    assert straight["step"] == 3

    # interrupted after the first diffusion step (checkpoints every step here), then the same command again
    real_iter = BatchStream.__iter__

    def one_batch_then_crash(self):
        it = real_iter(self)
        yield next(it)
        if self.fn.keywords["stream"] == 2:
            raise KeyboardInterrupt
        yield from it

    monkeypatch.setattr(BatchStream, "__iter__", one_batch_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(tmp_path / "resumed"))
    assert torch.load(tmp_path / "resumed" / "diffusion.pt", weights_only=False)["step"] == 1
    monkeypatch.setattr(BatchStream, "__iter__", real_iter)
    with pytest.raises(SystemExit, match="other settings"):  # a resumed run must keep its settings
        train.main(args(tmp_path / "resumed", "--lr", "5e-4"))
    export = tmp_path / "export"
    train.main(args(tmp_path / "resumed", "--export", str(export)))
    resumed = torch.load(tmp_path / "resumed" / "diffusion.pt", weights_only=False)
    assert resumed["step"] == 3
    for key in ("ema_unet", "ema_text"):
        for name, value in straight[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=1e-5, atol=1e-6)

    pipe = load_pipeline(export, device="cpu")  # exported in fp16, loaded in fp32
    assert pipe.unet.dtype == torch.float32
    images = generate(pipe, [[("red", "circle")]], steps=2)
    assert images[0].shape == (64, 64, 3)


@pytest.mark.slow
def test_init_continues_from_the_shipped_weights_and_skips_the_vae_phases(tmp_path):
    """`--init`: one diffusion step on the mix from the shipped model. The VAE is the shipped one bit for bit (no VAE
    phase ran), the UNet moved by about one Adam step (from scratch it would be a different network entirely)."""
    from sae.models import load_pipeline
    from benchmark.shapes import train

    with pytest.raises(SystemExit, match="not a pipeline folder"):
        train.main(["--out", str(tmp_path / "bad"), "--init", str(tmp_path)])
    export = tmp_path / "export"
    train.main(["--out", str(tmp_path / "run"), "--init", str(PRETRAINED), "--steps", "1", "--batch", "2",
                "--warmup", "1", "--lr", "1e-4", "--caption-mix", "full=0.5,count=0.5", "--export", str(export),
                "--export-dtype", "float32"])
    assert not (tmp_path / "run" / "vae").exists()
    shipped, tuned = load_pipeline(PRETRAINED, device="cpu"), load_pipeline(export, device="cpu")
    tuned_vae = tuned.vae.state_dict()
    for name, value in shipped.vae.state_dict().items():
        assert torch.equal(tuned_vae[name], value), name
    moved = max((tuned.unet.state_dict()[k] - v).abs().max().item() for k, v in shipped.unet.state_dict().items())
    assert 0 < moved < 1e-3  # lr 1e-4: Adam's first step moves each weight by at most ~lr (times EMA's 0.9)
    assert tuned.tokenizer.model_max_length == shipped.tokenizer.model_max_length


@pytest.mark.slow
def test_a_short_text_context_reaches_the_exported_pipeline(tmp_path):
    from sae.models import load_pipeline
    from sae.tokens import find_token_indices
    from benchmark.shapes import train

    export = tmp_path / "export"
    train.main(["--out", str(tmp_path / "run"), "--vae-steps", "1", "--vae-batch", "2", "--decoder-steps", "0",
                "--steps", "1", "--batch", "2", "--warmup", "1", "--context-length", "20", "--export", str(export)])
    pipe = load_pipeline(export, device="cpu")
    assert pipe.tokenizer.model_max_length == 20
    assert pipe.text_encoder.config.max_position_embeddings == 20
    caption = "a red circle and a blue square and a green triangle and a yellow circle"
    assert find_token_indices(pipe.tokenizer, caption, ["circle", "circle"]) == [[3], [15]]
    assert generate(pipe, [[("red", "circle")]], steps=1)[0].shape == (64, 64, 3)


def test_small_tokens_padding_carries_nothing_of_the_caption():
    """The `small-tokens` probe: without transformer layers each token's embedding is its word and position only,
    so two captions differ exactly at the positions whose words differ (with the 2-layer causal encoder every
    later position, padding included, would differ too)."""
    from benchmark.shapes.model import build_text_encoder
    from sae.models import clip_tokenizer

    tokenizer = clip_tokenizer()
    encoder = build_text_encoder(tokenizer, "small-tokens").eval()
    assert encoder.config.num_hidden_layers == 0
    ids = tokenizer(["a red circle", "a blue circle"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids).last_hidden_state
    differs = (hidden[0] - hidden[1]).abs().amax(dim=-1) > 1e-6
    assert differs.nonzero().flatten().tolist() == [2]  # start, "a", "red"/"blue", ...
    contextual = build_text_encoder(tokenizer, "small").eval()
    with torch.no_grad():
        hidden = contextual(ids).last_hidden_state
    assert ((hidden[0, 3:] - hidden[1, 3:]).abs().amax(dim=-1) > 1e-6).all()


@pytest.mark.slow
def test_grounding_trains_the_layers_up_to_the_grounded_maps_only(tmp_path):
    """`--grounding`: one step from the same seed with and without it. Its gradient reaches every weight upstream of
    the 8x8 maps (the text encoder, the down path) and none downstream of the last one (the up path's last blocks)."""
    from benchmark.shapes import train

    def one_step(out, *extra):
        train.main(["--out", str(out), "--vae-steps", "1", "--vae-batch", "2", "--decoder-steps", "0", "--steps", "1",
                    "--batch", "4", "--warmup", "1", "--caption-dropout", "0", *extra])
        return torch.load(out / "diffusion.pt", weights_only=False)

    plain = one_step(tmp_path / "plain")
    (tmp_path / "grounded").mkdir()
    shutil.copytree(tmp_path / "plain" / "vae", tmp_path / "grounded" / "vae")  # the same VAE: skip its phase
    grounded = one_step(tmp_path / "grounded", "--grounding", "1")
    header, row = (tmp_path / "grounded" / "log.csv").read_text().splitlines()[:2]
    assert header.endswith(",grounding") and 0 < float(row.split(",")[-1]) < 3

    def differs(key, name):  # one Adam step moves a weight by ~2e-3 (the first step is lr * sign(gradient)); a
        # weight downstream moves the same in both runs up to Adam's epsilon on near-zero gradients (measured < 4e-5)
        return (plain[key][name] - grounded[key][name]).abs().max().item() > 2e-4

    assert differs("unet", "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    assert differs("unet", "down_blocks.0.resnets.0.conv1.weight")
    assert differs("text_encoder", "embeddings.token_embedding.weight")
    for name in ("up_blocks.2.resnets.0.conv1.weight", "up_blocks.3.resnets.0.conv1.weight", "conv_out.weight"):
        assert not differs("unet", name), name
