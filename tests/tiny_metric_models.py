"""Tiny random metric models built offline (never a hub download), in memory or saved as local folders/files that
`--metric-model NAME=PATH` loads exactly as it would load the real weights."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "picture", "of", "cat", "and", "dog", "red",
              "car", "bowl", "frog", "with", "the", "on", "photo", "horse", "crown", "table", "sitting"]


def random_images(n, size=(40, 40), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def tiny_open_clip(seed=0):
    """(model, tokenizer, preprocess): ViT-B-16's tokenizer, a tiny random tower pair."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.transform import image_transform

    torch.manual_seed(seed)
    model = CLIP(embed_dim=CLIP_CONFIG["embed_dim"], vision_cfg=CLIPVisionCfg(**CLIP_CONFIG["vision_cfg"]),
                 text_cfg=CLIPTextCfg(**CLIP_CONFIG["text_cfg"])).eval()
    return model, open_clip.get_tokenizer("ViT-B-16"), image_transform(32, False)


def save_open_clip(folder: Path) -> Path:
    """An open_clip folder (open_clip_config.json + weights), as `hf download` of an open_clip repo gives."""
    folder.mkdir(parents=True, exist_ok=True)
    model, _, _ = tiny_open_clip()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CONFIG, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def blip_processor(image_size=32):
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(BLIP_WORDS)}, bos_token="[DEC]")
    return BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                         tokenizer=tokenizer)


def blip_config():
    from transformers import BlipConfig

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = dict(small, vocab_size=len(BLIP_WORDS), bos_token_id=BLIP_WORDS.index("[DEC]"),
                sep_token_id=BLIP_WORDS.index("[SEP]"), eos_token_id=BLIP_WORDS.index("[SEP]"), pad_token_id=0,
                max_position_embeddings=64, encoder_hidden_size=32)
    # a wide initialisation, so that the random models' outputs depend visibly on the image
    return BlipConfig(text_config=dict(text, initializer_range=0.5),
                      vision_config=dict(small, image_size=32, patch_size=8, initializer_range=0.5),
                      projection_dim=16, image_text_hidden_size=16, initializer_range=0.5)


def tiny_blip(seed=0):
    """(captioner, ITM model, processor), tiny and random."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    torch.manual_seed(seed)
    config = blip_config()
    return BlipForConditionalGeneration(config).eval(), BlipForImageTextRetrieval(config).eval(), blip_processor()


def save_blip(folder: Path) -> tuple[Path, Path]:
    """Two transformers folders (captioner, ITM), as `hf download` gives."""
    captioner, itm, processor = tiny_blip()
    for model, name in ((captioner, "caption"), (itm, "itm")):
        model.save_pretrained(folder / name)
        processor.save_pretrained(folder / name)
    return folder / "caption", folder / "itm"


def save_owlv2(folder: Path) -> Path:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from sae.models import clip_tokenizer

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = Owlv2Config(text_config=small, vision_config={**small, "image_size": 64, "patch_size": 16},
                         projection_dim=32)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=clip_tokenizer(16)).save_pretrained(folder)
    return folder


def save_inception(path: Path) -> Path:
    """Random weights for torchmetrics' FID Inception in torch-fidelity's file format (real architecture)."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in model.modules():  # torch's default init shrinks activations layer by layer to ~0 features
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


class CountingExtractor:
    """A tiny FID extractor (fixed random projection of 8x8 thumbnails) that counts the images it embeds."""

    name = "test projection 8x8x3 -> 6"
    resize = "PIL bilinear to 8x8"
    library = "numpy (tests)"

    def __init__(self, dim=6):
        self.weight = torch.from_numpy(np.random.default_rng(1).normal(size=(8 * 8 * 3, dim)))
        self.calls = 0

    def features(self, images):
        self.calls += len(images)
        x = np.stack([np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float64) / 255
                      for im in images])
        return torch.from_numpy(x.reshape(len(images), -1)) @ self.weight


# COCO's own spellings of the three classes GenEval renames (its detector's labels)
COCO_SPELLINGS = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}


def tiny_mask2former(dominant=None, seed=0):
    """(model, processor): a random Mask2Former for 80 COCO labels (COCO's spellings), tiny Swin backbone, 64 px,
    4 queries. With `dominant` (a GenEval class name) every query predicts that class with a probability near 1,
    so that the random masks become confident detections."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              SwinConfig)

    from benchmark.geneval.rules import CLASSES

    torch.manual_seed(seed)
    labels = [COCO_SPELLINGS.get(name, name) for name in CLASSES]
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, feature_size=32, mask_feature_size=32,
                               num_queries=4, encoder_layers=1, decoder_layers=2, encoder_feedforward_dim=64,
                               dim_feedforward=64, num_attention_heads=2, use_pretrained_backbone=False,
                               id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = Mask2FormerForUniversalSegmentation(config).eval()
    if dominant is not None:
        with torch.no_grad():
            model.class_predictor.weight.zero_()
            model.class_predictor.bias.fill_(-10.0)
            model.class_predictor.bias[CLASSES.index(dominant)] = 10.0
    return model, Mask2FormerImageProcessor(size={"height": 64, "width": 64})


def save_mask2former(folder: Path, dominant=None) -> Path:
    """A transformers folder (model + image processor), as `hf download` of a Mask2Former repo gives."""
    model, processor = tiny_mask2former(dominant)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
