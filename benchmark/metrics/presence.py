"""Object presence: which of a prompt's objects an open-vocabulary detector finds, and the success rate.

Columns: `presence_all` (1 when every object is found, as many times as its count: the paper's "success
rate") and `presence_objects` (the fraction of objects found). The image's record also gets
`presence_missing`, the objects not found (GenEval's "reason").

Vocabulary: as in the paper's detector evaluation, the detector is queried with the suite's whole object
vocabulary at once (`MetricContext.vocabulary`), so each box counts only for the class it scores highest on and
competing classes suppress look-alikes; the threshold is applied to that best class. `--metric-model
presence.vocabulary=prompt` queries only the prompt's own objects (more lenient).

The detector is pluggable (`Detector.detect(images, queries) -> detections per image`, each box labelled with
its best query among the image's queries). The default is OWLv2
through transformers: it is open-vocabulary, maintained in transformers, and runs offline from a local
folder; Detic (the paper's) and Grounding DINO need other stacks or custom ops. A query is the object's word,
or its intended sense for polysemous words ("computer mouse"); the attribute is not part of the query
(attribute binding is another question than presence). Threshold: 0.3, the paper's value for Detic. It is
NOT calibrated for OWLv2 here (no weights reach our machines): calibrate it on real images before trusting
absolute rates; comparisons between methods at one threshold stay meaningful.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base import Metric, MetricUnavailable, domain_model

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
THRESHOLD = 0.3
SAME_OBJECT_IOU = 0.5  # boxes of one query overlapping more than this count as one object
VOCABULARIES = ("suite", "prompt")  # --metric-model presence.vocabulary=...


@dataclass(frozen=True)
class Detection:
    query: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (any consistent unit)


def count_objects(detections: list[Detection], query: str, threshold: float) -> int:
    """Distinct objects of `query` above `threshold`: greedy non-maximum suppression of overlapping boxes, best
    first (a box is dropped when its IoU with a kept one is over SAME_OBJECT_IOU)."""
    from torchvision.ops import nms

    found = sorted((d for d in detections if d.query == query and d.score >= threshold), key=lambda d: -d.score)
    if not found:
        return 0
    # float64: the boxes' IoU as Python floats give it. nms gets the rank, not the score: equal scores (every
    # detection of the shapes world scores 1.0) then keep the detector's order, which nms's own sort does not promise
    boxes = torch.tensor([d.box for d in found], dtype=torch.float64)
    rank = torch.arange(len(found), 0, -1, dtype=torch.float64)
    return len(nms(boxes, rank, SAME_OBJECT_IOU))


def object_query(obj: dict) -> str:
    """What an open-vocabulary detector looks for: the object's `query` (its intended sense), else its word."""
    return obj.get("query") or obj["name"]


def presence_of(detections: list[Detection], objects: list[dict], threshold: float,
                query_of: Callable[[dict], str] = object_query) -> dict:
    """Per-image verdict for the prompt's objects (count-aware); `query_of` is the detector's name for an object."""
    wanted = Counter()
    for obj in objects:
        wanted[query_of(obj)] += int(obj.get("count") or 1)
    missing = [q for q, n in wanted.items() if count_objects(detections, q, threshold) < n]
    found = sum(min(count_objects(detections, q, threshold), n) for q, n in wanted.items())
    return {"presence_all": float(not missing), "presence_objects": found / sum(wanted.values()),
            "presence_missing": ",".join(missing)}


class Owlv2Detector:
    """OWLv2 from transformers: one forward per batch, each image with its own queries."""

    def __init__(self, model, processor, device: str = "cpu"):
        self.model, self.processor, self.device = model.to(device).eval(), processor, device

    @classmethod
    def from_pretrained(cls, source: str, device: str = "cpu") -> Owlv2Detector:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        return cls(Owlv2ForObjectDetection.from_pretrained(source), Owlv2Processor.from_pretrained(source), device)

    @torch.no_grad()
    def detect(self, images, queries: list[list[str]]) -> list[list[Detection]]:
        inputs = self.processor(text=[[f"a photo of a {q}" for q in qs] for qs in queries], images=images,
                                return_tensors="pt", padding=True).to(self.device)
        outputs = self.model(**inputs)
        scores = outputs.logits.sigmoid()  # (batch, boxes, queries); queries padded to the longest list
        boxes = outputs.pred_boxes  # centre x, centre y, width, height, relative to the padded square
        result = []
        for i, qs in enumerate(queries):
            cx, cy, w, h = boxes[i].unbind(-1)
            corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).tolist()
            best, index = scores[i, :, :len(qs)].max(dim=-1)  # each box's best query among this image's own
            result.append([Detection(qs[j], s, tuple(corners[b]))
                           for b, (s, j) in enumerate(zip(best.tolist(), index.tolist(), strict=True))])
        return result


class Presence(Metric):
    name = "presence"
    description = "objects found by an open-vocabulary detector (OWLv2): all-present success rate, object rate"
    columns = {"presence_all": True, "presence_objects": True}
    base_convention = (f"OWLv2 ({DEFAULT_DETECTOR} unless --metric-model presence=...), query 'a photo of a "
                       f"<object>', score threshold {THRESHOLD} (the paper's Detic value; uncalibrated for OWLv2), "
                       f"count-aware with boxes of IoU > {SAME_OBJECT_IOU} merged; success = every object found")
    convention = (f"{base_convention}; queries: the suite's object vocabulary at once, each box its best class "
                  "(--metric-model presence.vocabulary=prompt: the prompt's objects only)")

    def __init__(self, detector=None, threshold: float = THRESHOLD, vocabulary: list[str] | None = None):
        self.detector, self.threshold = detector, threshold
        self.vocabulary = list(vocabulary or [])  # empty: each prompt's own objects

    def setup(self, context) -> None:
        mode = context.model_paths.get(f"{self.name}.vocabulary", "suite")
        if mode not in VOCABULARIES:
            raise ValueError(f"--metric-model {self.name}.vocabulary takes {' or '.join(VOCABULARIES)}, got {mode!r}")
        self.vocabulary = list(context.vocabulary or self.vocabulary) if mode == "suite" else []
        base = self.base_convention
        factory = None if self.detector is not None else domain_model(self.name, context)
        if factory is not None:  # e.g. the shapes world's exact detector: (detector, convention)
            self.detector, base = factory(context)
            self.threshold = 0.0
        rule = (f"the suite's {len(self.vocabulary)}-object vocabulary at once, each box its best class"
                if self.vocabulary else "the prompt's own objects")
        self.convention = f"{base}; queries: {rule}"
        if self.detector is not None:
            return
        source = context.model_paths.get(self.name, DEFAULT_DETECTOR)
        try:
            self.detector = Owlv2Detector.from_pretrained(source, device=context.device)
        except Exception as err:  # offline hub, missing folder, wrong format
            raise MetricUnavailable(
                f"cannot load the OWLv2 detector {source!r} ({type(err).__name__}); download it where there is "
                f"network (`hf download {DEFAULT_DETECTOR} --local-dir DIR`) and pass --metric-model presence=DIR"
            ) from err

    def queries(self, record: dict) -> list[str]:
        """The detector's queries for a record: the vocabulary (plus any object of the prompt outside it), or
        with no vocabulary the prompt's own objects."""
        own = [self.query_of(o) for o in record["objects"]]
        if not self.vocabulary:
            return own
        return self.vocabulary + [q for q in dict.fromkeys(own) if q not in self.vocabulary]

    def score(self, images, records):
        queries = [self.queries(r) for r in records]
        detections = self.detector.detect([image.convert("RGB") for image in images], queries)
        return [presence_of(dets, r["objects"], self.threshold, self.query_of)
                for dets, r in zip(detections, records, strict=True)]

    def query_of(self, obj: dict) -> str:
        """The detector's own name for an object where it has one (the shapes world's "colour shape")."""
        return getattr(self.detector, "query_of", object_query)(obj)
