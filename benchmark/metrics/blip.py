"""BLIP similarity (the Attend-and-Excite definition the paper reports) and BLIP image-text matching.

- `blip_similarity`: caption the image with BLIP, then the cosine between the CLIP ViT-B/16 text embedding of
  the caption (raw, normalised) and the prompt's embedding averaged over the 80 ImageNet templates (cleaned of
  "a a" and "the a"), exactly as A&E's `metrics/blip_captioning_and_clip_similarity.py` does (a text-text
  similarity). The CLIP side is the
  `clip` metric's own code and weights (`--metric-model clip=...`). The captioner is transformers'
  `BlipForConditionalGeneration`, by default `Salesforce/blip-image-captioning-base` (BLIP base with CapFilt-L,
  finetuned on COCO captioning: the checkpoint of LAVIS' `blip_caption base_coco` that A&E load), with LAVIS'
  generation settings: the text prompt "a picture of " (removed from the caption), beam search of 3, 10 to 30
  tokens (prompt included).
- `blip_itm`: the probability that image and raw prompt match, from BLIP's image-text matching head
  (`BlipForImageTextRetrieval`, by default `Salesforce/blip-itm-base-coco`): softmax over the head's two
  logits, class 1. The prompt is truncated at 35 tokens as BLIP's ITM does.

Each record also gets `blip_caption`. In a domain without a BLIP counterpart (`Domain.unavailable`) the metric is
reported as not available (never as zero).
"""

from __future__ import annotations

import torch

from .base import Metric, MetricUnavailable, check_available
from .clip import ClipScore

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_ITM = "Salesforce/blip-itm-base-coco"
CAPTION_PROMPT = "a picture of "
GENERATION = {"num_beams": 3, "max_length": 30, "min_length": 10}  # LAVIS' BLIP caption defaults
ITM_MAX_TOKENS = 35


def strip_prompt(caption: str, prompt: str = CAPTION_PROMPT) -> str:
    """The caption without the text prompt it was generated from (LAVIS removes it the same way)."""
    caption, prompt = caption.strip(), prompt.strip()
    return caption[len(prompt):].strip() if caption.lower().startswith(prompt.lower()) else caption


def _load(kind: str, source: str, key: str, default: str):
    """A BLIP model and its processor from a hub id or a local folder, or `MetricUnavailable` with the remedy."""
    import transformers

    try:
        model = getattr(transformers, kind).from_pretrained(source)
        processor = transformers.BlipProcessor.from_pretrained(source)
    except Exception as err:  # offline hub, missing folder, wrong format
        raise MetricUnavailable(
            f"cannot load the BLIP model {source!r} ({type(err).__name__}); download it where there is network "
            f"(`hf download {default} --local-dir DIR`) and pass --metric-model {key}=DIR") from err
    return model.eval(), processor


class BlipScore(Metric):
    name = "blip"
    description = "BLIP caption vs prompt CLIP text similarity (A&E, the paper's BLIP score) and BLIP ITM probability"
    columns = {"blip_similarity": True, "blip_itm": True}
    convention = (f"caption: BLIP {DEFAULT_CAPTIONER} (unless --metric-model blip=...), prompt {CAPTION_PROMPT!r} "
                  f"removed, beams {GENERATION['num_beams']}, {GENERATION['min_length']}-{GENERATION['max_length']} "
                  "tokens; blip_similarity = cosine of open_clip ViT-B-16 (QuickGELU, OpenAI weights) text "
                  "embeddings of the raw caption and of the prompt averaged over the 80 ImageNet templates, each "
                  "cleaned of 'a a' and 'the a' (-> 'a', A&E); blip_itm = softmax of the ITM head "
                  f"of {DEFAULT_ITM} (unless --metric-model blip.itm=...), class 1, raw prompt")

    def __init__(self, caption_model=None, caption_processor=None, itm_model=None, itm_processor=None,
                 clip: ClipScore | None = None, device: str = "cpu"):
        self.caption_model, self.caption_processor = caption_model, caption_processor
        self.itm_model, self.itm_processor = itm_model, itm_processor
        self.clip, self.device = clip or ClipScore(), device

    def setup(self, context) -> None:
        check_available(self.name, context)
        self.device = context.device
        missing = []  # every missing model on one line
        if self.caption_model is None:
            try:
                self.caption_model, self.caption_processor = _load(
                    "BlipForConditionalGeneration", context.model_paths.get("blip", DEFAULT_CAPTIONER), "blip",
                    DEFAULT_CAPTIONER)
            except MetricUnavailable as err:
                missing.append(str(err))
        if self.itm_model is None:
            try:
                self.itm_model, self.itm_processor = _load(
                    "BlipForImageTextRetrieval", context.model_paths.get("blip.itm", DEFAULT_ITM), "blip.itm",
                    DEFAULT_ITM)
            except MetricUnavailable as err:
                missing.append(str(err))
        try:
            self.clip.setup(context)
        except MetricUnavailable as err:
            missing.append(str(err))
        if missing:
            raise MetricUnavailable("; ".join(missing))
        self.caption_model = self.caption_model.to(self.device).eval()
        self.itm_model = self.itm_model.to(self.device).eval()

    @torch.no_grad()
    def captions(self, images) -> list[str]:
        """BLIP captions of a batch of images, one `generate` call."""
        inputs = self.caption_processor(images=images, text=[CAPTION_PROMPT] * len(images),
                                        return_tensors="pt").to(self.device)
        ids = self.caption_model.generate(**inputs, **GENERATION)
        return [strip_prompt(text) for text in self.caption_processor.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def itm_probabilities(self, images, texts: list[str]) -> torch.Tensor:
        """P(match) of each (image, text) pair: softmax of the ITM head's two logits, class 1."""
        inputs = self.itm_processor(images=images, text=texts, return_tensors="pt", padding=True, truncation=True,
                                    max_length=ITM_MAX_TOKENS).to(self.device)
        logits = self.itm_model(**inputs, use_itm_head=True).itm_score
        return logits.float().softmax(dim=-1)[:, 1]

    def score(self, images, records):
        if self.caption_model is None or self.itm_model is None:
            raise MetricUnavailable("blip metric used before setup()")
        images = [image.convert("RGB") for image in images]
        prompts = [record["prompt"] for record in records]
        captions = self.captions(images)
        caption_embeddings = self.clip.text_embeddings(captions)
        matching = self.itm_probabilities(images, prompts).tolist()
        return [{"blip_similarity": float(embedding @ self.clip.text_embedding(prompt)), "blip_itm": float(p),
                 "blip_caption": caption}
                for embedding, prompt, p, caption in zip(caption_embeddings, prompts, matching, captions, strict=True)]
