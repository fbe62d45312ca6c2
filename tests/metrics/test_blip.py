import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import QuickGELU
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from tiny_metric_models import CLIP_CONFIG, random_images, save_blip, save_open_clip, tiny_blip, tiny_open_clip

from benchmark.metrics import MetricContext, MetricUnavailable, get_metric
from benchmark.metrics.blip import CAPTION_PROMPT, GENERATION, BlipScore, strip_prompt
from benchmark.metrics.clip import ClipScore

RECORDS = [{"prompt": "a cat and a dog"}, {"prompt": "a red car with a bowl"}, {"prompt": "a frog"}]


def quick_gelu_open_clip():
    """tiny_open_clip's weights in a QuickGELU model, as the clip metric builds it on every route."""
    model, tokenizer, preprocess = tiny_open_clip()
    quick = CLIP(embed_dim=CLIP_CONFIG["embed_dim"], vision_cfg=CLIPVisionCfg(**CLIP_CONFIG["vision_cfg"]),
                 text_cfg=CLIPTextCfg(**CLIP_CONFIG["text_cfg"]), quick_gelu=True)
    quick.load_state_dict(model.state_dict())
    return quick.eval(), tokenizer, preprocess


def tiny_metric():
    captioner, itm, processor = tiny_blip()
    model, tokenizer, preprocess = quick_gelu_open_clip()
    metric = BlipScore(captioner, processor, itm, processor, ClipScore(model=model, tokenizer=tokenizer,
                                                                       preprocess=preprocess))
    metric.setup(MetricContext())
    return metric


@pytest.fixture(scope="module")
def blip():
    return tiny_metric()


@pytest.fixture(scope="module")
def scored(blip):
    return blip.score(random_images(3), RECORDS)


def test_strip_prompt():
    assert strip_prompt("a picture of a cat on a table") == "a cat on a table"
    assert strip_prompt("two dogs") == "two dogs"


def test_captions_are_blip_generate_with_the_stated_settings(blip, scored):
    processor = blip.caption_processor
    inputs = processor(images=random_images(3), text=[CAPTION_PROMPT] * 3, return_tensors="pt")
    with torch.no_grad():
        ids = blip.caption_model.generate(**inputs, num_beams=3, max_length=30, min_length=10)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    assert GENERATION == {"num_beams": 3, "max_length": 30, "min_length": 10}
    assert all(t.startswith("a picture of") for t in texts)
    assert [s["blip_caption"] for s in scored] == [t[len("a picture of"):].strip() for t in texts]


def test_blip_similarity_is_caption_against_template_averaged_prompt_by_hand(blip, scored):
    model, tokenizer = blip.clip.model, blip.clip.tokenizer
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    for record, score in zip(RECORDS, scored):
        with torch.no_grad():
            caption = F.normalize(model.encode_text(tokenizer([score["blip_caption"]]))[0], dim=-1)
            texts = [t(record["prompt"]).replace("a a", "a").replace("the a", "a") for t in OPENAI_IMAGENET_TEMPLATES]
            each = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        prompt = each.mean(0) / each.mean(0).norm()
        assert score["blip_similarity"] == pytest.approx(float(caption @ prompt), abs=1e-5)
    assert len({round(s["blip_similarity"], 6) for s in scored}) > 1  # the tiny model does see the images


def test_itm_probability_is_the_softmax_of_the_itm_head_by_hand(blip, scored):
    processor = blip.itm_processor
    for image, record, score in zip(random_images(3), RECORDS, scored):
        inputs = processor(images=[image], text=[record["prompt"]], return_tensors="pt")
        with torch.no_grad():
            no, yes = blip.itm_model(**inputs, use_itm_head=True).itm_score[0].tolist()
        assert score["blip_itm"] == pytest.approx(math.exp(yes) / (math.exp(no) + math.exp(yes)), abs=1e-5)
    assert all(0 < s["blip_itm"] < 1 for s in scored)


def test_loads_from_local_folders_like_real_weights(tmp_path, scored):
    caption_dir, itm_dir = save_blip(tmp_path / "blip")
    metric = get_metric("blip")
    metric.setup(MetricContext(model_paths={"blip": str(caption_dir), "blip.itm": str(itm_dir),
                                            "clip": str(save_open_clip(tmp_path / "clip"))}))
    assert {type(m) for m in metric.clip.model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))} == {QuickGELU}
    again = metric.score(random_images(3), RECORDS)
    for a, b in zip(again, scored):
        assert a["blip_caption"] == b["blip_caption"]
        assert a["blip_similarity"] == pytest.approx(b["blip_similarity"], abs=1e-5)
        assert a["blip_itm"] == pytest.approx(b["blip_itm"], abs=1e-5)


def test_missing_weights_name_every_model_and_the_remedy(tmp_path):
    missing = {name: str(tmp_path / name) for name in ("blip", "blip.itm", "clip")}
    with pytest.raises(MetricUnavailable) as err:
        get_metric("blip").setup(MetricContext(model_paths=missing))
    message = str(err.value)
    assert "--metric-model blip=DIR" in message and "--metric-model blip.itm=DIR" in message
    assert "--metric-model clip=PATH" in message and "\n" not in message


def test_not_available_in_the_shapes_world():
    captioner, itm, processor = tiny_blip()
    metric = BlipScore(captioner, processor, itm, processor)
    with pytest.raises(MetricUnavailable, match="not available for this model"):
        metric.setup(MetricContext(domain="shapes"))
