import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transform import image_transform
from open_clip.transformer import QuickGELU
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image
from tiny_metric_models import save_open_clip, tiny_open_clip

from benchmark.metrics import MetricContext, MetricUnavailable, get_metric
from benchmark.metrics.clip import (ClipScore, create_clip, imagenet_template_texts, object_phrases,
                                    torchmetrics_clip_score)


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


def test_template_texts_are_cleaned_like_attend_and_excite():
    raw = [t("a cat and a dog") for t in OPENAI_IMAGENET_TEMPLATES]
    texts = imagenet_template_texts("a cat and a dog")
    assert len(texts) == 80
    # a template changes when its slot follows "a " or "the ": "a a cat..." and "the a cat..." become "a cat..."
    slots = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert sum("a {}" in f or "the {}" in f for f in slots) == 48
    changed = {r: c for r, c in zip(raw, texts) if r != c}
    assert len(changed) == 48
    assert changed["a bad photo of a a cat and a dog."] == "a bad photo of a cat and a dog."
    assert changed["itap of the a cat and a dog."] == "itap of a cat and a dog."
    assert "a photo of my a cat and a dog." in texts  # "my a" is left as A&E leave it
    assert not any("a a " in t or "the a " in t for t in texts)


def test_template_average_by_hand(tiny_clip):
    tokenizer, model = tiny_clip.tokenizer, tiny_clip.model
    texts = [t("a cat").replace("a a", "a").replace("the a", "a") for t in OPENAI_IMAGENET_TEMPLATES]
    with torch.no_grad():
        each = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
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


def activations(model) -> dict:
    """The activation modules' types in each tower."""
    return {tower: {type(m) for m in part.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}
            for tower, part in (("image", model.visual), ("text", model.transformer))}


@pytest.fixture(scope="module")
def vit_b16_file(tmp_path_factory):
    """Random ViT-B-16 weights (half precision, to keep the file small) in one file."""
    torch.manual_seed(0)
    state = {k: v.half() for k, v in open_clip.create_model("ViT-B-16").state_dict().items()}
    path = tmp_path_factory.mktemp("vit_b16") / "vit_b16.pt"
    torch.save(state, path)
    return path, state["visual.proj"]



def test_openai_tag_builds_quick_gelu(vit_b16_file, monkeypatch):
    path, proj = vit_b16_file
    asked = []
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: asked.append(cfg) or str(path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*QuickGELU")  # open_clip's warning: tag and model activations differ
        model, _, _ = create_clip("openai")
    assert asked[0]["quick_gelu"] and "ViT-B-16.pt" in asked[0]["url"]  # OpenAI's tag, trained with QuickGELU
    assert activations(model) == {"image": {QuickGELU}, "text": {QuickGELU}}
    assert torch.equal(model.visual.proj.detach(), proj.float())


def test_weights_file_builds_quick_gelu_through_setup(vit_b16_file):
    path, proj = vit_b16_file
    metric = get_metric("clip")
    metric.setup(MetricContext(model_paths={"clip": str(path)}))
    assert activations(metric.model) == {"image": {QuickGELU}, "text": {QuickGELU}}
    assert torch.equal(metric.model.visual.proj.detach(), proj.float())
    assert "QuickGELU" in metric.convention


def test_open_clip_folder_builds_quick_gelu(tmp_path):
    folder = save_open_clip(tmp_path / "clip")  # its config leaves quick_gelu unset (GELU)
    model, _, _ = create_clip(str(folder))
    assert activations(model) == {"image": {QuickGELU}, "text": {QuickGELU}}
    saved, _, _ = tiny_open_clip()
    assert torch.equal(model.visual.proj.detach(), saved.visual.proj.detach())
