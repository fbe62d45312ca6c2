import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transform import image_transform
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from benchmark.metrics import MetricContext, MetricUnavailable, get_metric
from benchmark.metrics.clip import ClipScore, object_phrases, torchmetrics_clip_score


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    return ClipScore(model=model, tokenizer=open_clip.get_tokenizer("ViT-B-16"), preprocess=image_transform(32, False))


def images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_object_phrases_split_like_attend_and_excite():
    assert object_phrases("a cat and a dog") == ["a cat", "a dog"]
    assert object_phrases("a horse with a glasses") == ["a horse", "a glasses"]
    assert object_phrases("a cat and a dog and a bowl") == ["a cat", "a dog", "a bowl"]


def test_torchmetrics_clamp():
    assert torchmetrics_clip_score(torch.tensor([0.3, -0.2])).tolist() == pytest.approx([30.0, 0.0])


def test_template_average_by_hand(tiny_clip):
    tokenizer, model = tiny_clip.tokenizer, tiny_clip.model
    with torch.no_grad():
        each = F.normalize(model.encode_text(tokenizer([t("a cat") for t in OPENAI_IMAGENET_TEMPLATES])), dim=-1)
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    expected = each.mean(0) / each.mean(0).norm()
    assert torch.allclose(tiny_clip.text_embedding("a cat"), expected, atol=1e-6)
    assert tiny_clip.text_embedding("a cat").norm().item() == pytest.approx(1.0, abs=1e-6)


def test_scores_by_hand(tiny_clip):
    pics = images(2)
    records = [{"prompt": "a cat and a dog and a bowl"}, {"prompt": "a horse with a crown"}]
    scores = tiny_clip.score(pics, records)
    embeddings = tiny_clip.image_embeddings(pics)
    for embedding, record, score in zip(embeddings, records, scores):
        parts = [float(embedding @ tiny_clip.text_embedding(p)) for p in object_phrases(record["prompt"])]
        assert score["clip_min_object"] == pytest.approx(min(parts), abs=1e-6)
        assert score["clip_full"] == pytest.approx(float(embedding @ tiny_clip.text_embedding(record["prompt"])),
                                                   abs=1e-6)
        raw = float(embedding @ tiny_clip.text_embedding(record["prompt"], templates=False))
        assert score["clip_full_tm"] == pytest.approx(max(100 * raw, 0.0), abs=1e-4)


def test_batched_scores_equal_one_at_a_time(tiny_clip):
    pics = images(3)
    records = [{"prompt": "a cat and a dog"}] * 3
    together = tiny_clip.score(pics, records)
    alone = [tiny_clip.score([p], [r])[0] for p, r in zip(pics, records)]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-5)


def test_missing_weights_say_how_to_provide_them(tmp_path):
    metric = get_metric("clip")
    with pytest.raises(MetricUnavailable, match="--metric-model clip=PATH"):
        metric.setup(MetricContext(model_paths={"clip": str(tmp_path / "missing.bin")}))
