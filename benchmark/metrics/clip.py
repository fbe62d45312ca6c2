"""CLIP image-text similarity in the Attend-and-Excite convention, plus torchmetrics' CLIPScore convention.

- `clip_full`: cosine between the image embedding and the prompt's text embedding, where the text embedding is
  the normalised mean of the (normalised) embeddings of the prompt in the 80 ImageNet templates
  ("a bad photo of a {}.", ...), each filled text cleaned of "a a" and "the a" (-> "a"), as A&E's metric script
  does.
- `clip_min_object`: the prompt split on " and " (else " with "): every part scored the same way, the image's
  minimum. For three or more objects every object counts.
- `clip_full_tm`: torchmetrics' CLIPScore convention, `max(100 * cos, 0)` on the raw prompt (no templates).
  torchmetrics' own class is not used: its 1.9.0 breaks with transformers 5 and it takes only transformers
  CLIP models, while the A&E convention is open_clip's ViT-B/16.

The model is ViT-B/16 with QuickGELU, the activation OpenAI trained its weights with (open_clip's plain
`ViT-B-16` config has GELU and would run those weights with the wrong activation).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Metric, MetricUnavailable, domain_model

MODEL_NAME = "ViT-B-16"
HUB_FOLDER = "timm/vit_base_patch16_clip_224.openai"  # OpenAI's ViT-B/16 as an open_clip folder


def object_phrases(prompt: str) -> list[str]:
    """A&E's split: on " and " if the prompt has one, else on " with "; every part kept."""
    joiner = " and " if " and " in prompt else " with "
    return [part.strip() for part in prompt.split(joiner) if part.strip()]


def imagenet_template_texts(prompt: str) -> list[str]:
    """The prompt in the 80 ImageNet templates, each text cleaned as A&E's script does: plain substring replaces of
    "a a" and "the a" by "a" ("a a cat." -> "a cat.", "itap of the a cat." -> "itap of a cat.")."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template(prompt).replace("a a", "a").replace("the a", "a") for template in OPENAI_IMAGENET_TEMPLATES]


def create_clip(source: str | None = "openai", device: str = "cpu", model_name: str = MODEL_NAME):
    """(model, preprocess, tokenizer): open_clip `model_name` (ViT-B/16 unless said) with QuickGELU on every route.
    `source` is an open_clip tag ("openai"), a weights file for that architecture, an open_clip folder
    (open_clip_config.json + weights), or None (random weights). Raises what open_clip raises when the weights
    cannot be had."""
    import open_clip

    folder = source is not None and Path(source).is_dir()
    name = f"local-dir:{source}" if folder else model_name
    if folder and not any(Path(source).glob(p) for p in ("*.safetensors", "*.bin", "*.pth")):
        raise FileNotFoundError(f"no weights in {source}")  # open_clip would build a random model
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None if folder else source,
                                                                 force_quick_gelu=True, device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def torchmetrics_clip_score(cosine: torch.Tensor) -> torch.Tensor:
    """torchmetrics' CLIPScore of a cosine: `max(100 * cos, 0)`."""
    return torch.clamp(100 * cosine, min=0)


class ClipScore(Metric):
    name = "clip"
    description = "CLIP ViT-B/16 full-prompt and minimum-object similarity (A&E), and torchmetrics' CLIPScore"
    columns = {"clip_full": True, "clip_min_object": True, "clip_full_tm": True}
    convention = ("open_clip ViT-B-16 with QuickGELU (OpenAI weights); text = normalised mean of the 80 "
                  "ImageNet-template embeddings, each text cleaned of 'a a' and 'the a' (-> 'a', A&E); cosine; "
                  "min-object splits the prompt on ' and ' (else ' with ') and takes the per-image minimum; "
                  "clip_full_tm = max(100 * cos, 0) on the raw prompt (torchmetrics' convention)")

    def __init__(self, model=None, tokenizer=None, preprocess=None, device: str = "cpu"):
        self.model, self.tokenizer, self.preprocess, self.device = model, tokenizer, preprocess, device
        self._text_cache: dict[tuple[str, bool], torch.Tensor] = {}

    use_templates = True  # a domain's own CLIP, trained on bare captions, scores them without templates

    def setup(self, context) -> None:
        self.device = context.device
        if self.model is not None:
            return
        factory = domain_model(self.name, context)
        if factory is not None:  # the domain's CLIP: (model, preprocess, tokenizer, convention)
            self.model, self.preprocess, self.tokenizer, self.convention = factory(context)
            self.use_templates = False
            return
        source = context.model_paths.get("clip", "openai")  # the blip metric reads the same weights
        logging.disable(logging.ERROR)  # open_clip logs its failed download; our one line says it with the remedy
        try:
            self.model, self.preprocess, self.tokenizer = create_clip(source, self.device)
        except Exception as err:  # download, file and format errors all mean "no weights here"
            raise MetricUnavailable(
                f"cannot load open_clip {MODEL_NAME} weights {source!r} ({type(err).__name__}); fetch them where "
                f"there is network (`hf download {HUB_FOLDER} --local-dir DIR`, or open_clip's 'openai' "
                "ViT-B-16 file) and pass --metric-model clip=PATH") from err
        finally:
            logging.disable(logging.NOTSET)

    @torch.no_grad()
    def text_embedding(self, text: str, templates: bool = True) -> torch.Tensor:
        """Unit text embedding; with `templates`, the normalised mean over the 80 (cleaned) ImageNet templates."""
        key = (text, templates)
        if key not in self._text_cache:
            texts = imagenet_template_texts(text) if templates else [text]
            self._text_cache[key] = F.normalize(self.text_embeddings(texts).mean(dim=0), dim=-1)
        return self._text_cache[key]

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unit embeddings of raw texts (no templates), one forward for all of them."""
        return F.normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images) -> torch.Tensor:
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1)

    def score(self, images, records):
        if self.model is None:
            raise MetricUnavailable("clip metric used before setup()")
        embeddings = self.image_embeddings(images)
        out = []
        for embedding, record in zip(embeddings, records, strict=True):
            prompt = record["prompt"]
            parts = [float(embedding @ self.text_embedding(p, self.use_templates)) for p in object_phrases(prompt)]
            raw = embedding @ self.text_embedding(prompt, templates=False)
            out.append({"clip_full": float(embedding @ self.text_embedding(prompt, self.use_templates)),
                        "clip_min_object": min(parts),
                        "clip_full_tm": float(torchmetrics_clip_score(raw))})
        return out
