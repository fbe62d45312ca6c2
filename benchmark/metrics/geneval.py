"""GenEval's object-focused score (single object, two objects, counting, colours, position, colour attribution).

Per image: `geneval_correct` (1 when every clause of the prompt holds) and, in the image's record,
`geneval_reason` (what failed, in GenEval's words: "expected clock>=2, found 1"; empty when correct). The rules
are GenEval's (`benchmark.geneval.rules`); the judge that sees the image is pluggable (`Judge`: a detector giving
boxes, scores and masks per class, and a colour classifier):

- `geneval` (default judge "mask2former"): transformers' Mask2Former for COCO instance segmentation
  (`facebook/mask2former-swin-small-coco-instance`: GenEval's architecture and classes, other weights than its
  mmdetection checkpoint, so scores shift slightly), each instance's box taken from its mask; colour by open_clip
  ViT-L/14 (OpenAI weights, QuickGELU) zero-shot among GenEval's 10 colours, on the object's mask pasted on a
  #999999 grey canvas and cropped to its box, with GenEval's three templates per class.
- `geneval_owlv2` (judge "owlv2"): OWLv2 queried with the 80 class names, boxes only (colour on the box crop),
  class-wise NMS (IoU 0.5) so that one object is counted once; its thresholds are GenEval's, not calibrated for
  OWLv2. Reported under its own name, never mixed with the Mask2Former judge's numbers.

Weights: `--metric-model geneval.detector=DIR --metric-model geneval.clip=PATH` (hub ids or local folders; the
CLIP also takes an open_clip weights file). A domain may give its own judge (`Domain.instruments["geneval"]`, a
factory of a `Judge`) unless a model is named. The prompt's clauses come from the record's `geneval` field (its suite
line's, copied when the image was made), else (a record made before records carried them) from the line of its
prompt id in the run's own suite file, never a suite looked up by a name, else from its objects when every object is
one of the 80 classes (colour = attribute); other images get no verdict (NaN, with the reason).

docs/geneval.md: the rules, the judges, fetching the weights, published reference numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..geneval.report import geneval_markdown, geneval_results, geneval_tables
from ..geneval.rules import CLASSES, COLOURS, Detected, colour_requests, judge, keep, spec_problem, THRESHOLD
from .base import Metric, MetricUnavailable, ReportSection, check_available, domain_model

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_OWLV2 = "google/owlv2-base-patch16-ensemble"
CLIP_MODEL = "ViT-L-14"
CLIP_HUB_FOLDER = "timm/vit_large_patch14_clip_224.openai"  # OpenAI's ViT-L/14 as an open_clip folder
GREY = "#999999"  # the canvas a masked object is pasted on for its colour
OWLV2_NMS_IOU = 0.5
# detector label names (COCO's own spellings and VOC-style variants) -> GenEval's class names
LABEL_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                 "motorbike": "motorcycle", "aeroplane": "airplane", "tvmonitor": "tv", "diningtable": "dining table",
                 "sofa": "couch", "pottedplant": "potted plant", "hair dryer": "hair drier"}


def colour_templates(name: str) -> list[str]:
    """GenEval's three colour prompts of a class, as format strings for the colour ("{}")."""
    return [f"a photo of a {{}} {name}", f"a photo of a {{}}-colored {name}", "a photo of a {} object"]


def class_names(id2label: dict) -> dict[int, str]:
    """A detector's label index -> GenEval class name. Labels are matched by name (with COCO's own spellings:
    "mouse" is "computer mouse", ...); a detector with exactly 80 labels has the others matched by index (COCO's
    order, as GenEval's class list). Raises ValueError when no label is one of the 80 classes."""
    labels = {int(i): str(label).strip().lower() for i, label in id2label.items()}
    mapped = {i: LABEL_ALIASES.get(label, label) for i, label in labels.items()}
    mapped = {i: name for i, name in mapped.items() if name in CLASSES}
    if len(labels) == len(CLASSES):
        for i in labels:
            if i not in mapped and 0 <= i < len(CLASSES) and CLASSES[i] not in mapped.values():
                mapped[i] = CLASSES[i]
    if not mapped:
        raise ValueError(f"none of the detector's {len(labels)} labels is a COCO class")
    return mapped


def colour_crop(image, obj: Detected, background: str = GREY):
    """The image GenEval classifies for an object's colour: with a mask, the object pasted on a grey canvas;
    cropped to the object's box (clamped to the image, at least one pixel)."""
    from PIL import Image

    image = image.convert("RGB")
    if obj.mask is not None:
        mask = np.asarray(obj.mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask of shape {mask.shape} for an image of {image.height}x{image.width}")
        image = Image.composite(image, Image.new("RGB", image.size, background), Image.fromarray(mask))
    x0, y0, x1, y1 = (int(round(v)) for v in obj.box)
    x0, y0 = min(max(x0, 0), image.width - 1), min(max(y0, 0), image.height - 1)
    x1, y1 = min(max(x1, x0 + 1), image.width), min(max(y1, y0 + 1), image.height)
    return image.crop((x0, y0, x1, y1))


class Mask2FormerDetector:
    """transformers' Mask2Former (COCO instance segmentation): per image, every instance scored at least `floor`
    (GenEval's lowest threshold), as (box from its mask, score, mask), by GenEval class. One forward per batch."""

    def __init__(self, model, processor, device: str = "cpu", floor: float = THRESHOLD):
        self.model, self.processor, self.device, self.floor = model.to(device).eval(), processor, device, floor
        self.classes = class_names(model.config.id2label)

    @classmethod
    def from_pretrained(cls, source: str, device: str = "cpu") -> Mask2FormerDetector:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        return cls(Mask2FormerForUniversalSegmentation.from_pretrained(source),
                   AutoImageProcessor.from_pretrained(source), device)

    @torch.no_grad()
    def detect(self, images) -> list[dict[str, list[Detected]]]:
        if not images:
            return []
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        return [self._per_class(*instances) for instances in
                instance_segments(outputs.class_queries_logits, outputs.masks_queries_logits, self.floor,
                                  [(im.height, im.width) for im in images])]

    def _per_class(self, labels, scores, masks) -> dict[str, list[Detected]]:
        from torchvision.ops import masks_to_boxes

        per_class: dict[str, list[Detected]] = {}
        if not len(labels):
            return per_class
        boxes = masks_to_boxes(masks)
        boxes[:, 2:] += 1  # the last pixel's far edge: a one-pixel object is one pixel wide
        for label, score, box, mask in zip(labels.tolist(), scores.tolist(), boxes.tolist(), masks.cpu().numpy(),
                                           strict=True):
            name = self.classes.get(int(label))
            if name is not None:
                per_class.setdefault(name, []).append(Detected(tuple(box), score, mask))  # unrounded: GenEval's
        return per_class


# Written by hand because transformers' `post_process_instance_segmentation` (which this reproduces, kept equal by
# tests/metrics/test_geneval.py) turns every query's full-size mask into a Python-level check, image by image: it
# was most of a batched GenEval scoring call. A query's final score is its class score times its mean mask
# probability (at most 1), so queries whose class score is under `threshold` are dropped before any mask work.
MASK2FORMER_SIZE = (384, 384)  # transformers scales the mask logits back to its processor's input size first


def nearest_source(size: int, target: int) -> torch.Tensor:
    """The source index of each target pixel under `interpolate(mode="nearest")` (asked of it, so exactly its own)."""
    ramp = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    return F.interpolate(ramp, size=target, mode="nearest").view(target).long()


def instance_segments(class_logits, mask_logits, threshold: float, target_sizes) -> list[tuple]:
    """Per image (labels, scores, boolean masks at its target size) of the instances scored >= `threshold`, in
    the order transformers lists them (its top-k of query-class pairs, one per query on average)."""
    queries, classes = class_logits.shape[1], class_logits.shape[2] - 1
    pair_scores = class_logits.softmax(dim=-1)[..., :-1].flatten(1)  # (batch, queries * classes)
    top_scores, top_pairs = pair_scores.topk(queries, dim=-1, sorted=False)
    results = []
    for i, size in enumerate(target_sizes):  # image by image: a whole batch of 384 x 384 masks leaves the cache
        candidate = top_scores[i] >= threshold
        scores, pairs = top_scores[i][candidate], top_pairs[i][candidate]
        logits = F.interpolate(mask_logits[i, torch.div(pairs, classes, rounding_mode="floor")][None],
                               size=MASK2FORMER_SIZE, mode="bilinear", align_corners=False)[0].flatten(1)
        positive = logits > 0
        area = positive.sum(1)
        scores = scores * (torch.where(positive, logits.sigmoid(), 0.0).sum(1) / (area + 1e-6))
        rows, cols = (nearest_source(n, m) for n, m in zip(MASK2FORMER_SIZE, size, strict=True))
        masks = positive.view(-1, *MASK2FORMER_SIZE)[:, rows][:, :, cols]
        kept = (scores >= threshold) & masks.flatten(1).any(dim=1)
        results.append((pairs[kept] % classes, scores[kept], masks[kept]))
    return results


class Owlv2BoxDetector:
    """OWLv2 queried with the 80 class names (the `presence` metric's detector): each box labelled with its best
    class, boxes in pixels, class-wise NMS so that one object is counted once; no masks."""

    def __init__(self, detector, iou: float = OWLV2_NMS_IOU, floor: float = THRESHOLD):
        self.detector, self.iou, self.floor = detector, iou, floor

    @classmethod
    def from_pretrained(cls, source: str, device: str = "cpu") -> Owlv2BoxDetector:
        from .presence import Owlv2Detector

        return cls(Owlv2Detector.from_pretrained(source, device=device))

    def detect(self, images) -> list[dict[str, list[Detected]]]:
        from torchvision.ops import batched_nms

        if not images:
            return []
        raw = self.detector.detect(images, [list(CLASSES)] * len(images))
        found = []
        for image, detections in zip(images, raw, strict=True):
            detections = [d for d in detections if d.score >= self.floor]
            per_class: dict[str, list[Detected]] = {}
            if detections:
                side = max(image.size)  # OWLv2's boxes are relative to the image padded to a square
                boxes = torch.tensor([d.box for d in detections], dtype=torch.float32) * side
                scores = torch.tensor([d.score for d in detections], dtype=torch.float32)
                labels = torch.tensor([CLASSES.index(d.query) for d in detections])
                for index in batched_nms(boxes, scores, labels, self.iou).tolist():
                    name = detections[index].query
                    per_class.setdefault(name, []).append(Detected(tuple(boxes[index].tolist()),
                                                                   float(scores[index])))
            found.append(per_class)
        return found


class ClipColours:
    """Zero-shot colour of object crops with open_clip: per class, a classifier over GenEval's 10 colours from its
    three templates (open_clip's `build_zero_shot_classifier`, cached); all crops of a call in one image forward."""

    def __init__(self, model, preprocess, tokenizer, device: str = "cpu"):
        self.model, self.preprocess, self.tokenizer = model.to(device).eval(), preprocess, tokenizer
        self.device = device
        self._classifiers: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, source: str, device: str = "cpu") -> ClipColours:
        from .clip import create_clip

        model, preprocess, tokenizer = create_clip(source, device, model_name=CLIP_MODEL)
        return cls(model, preprocess, tokenizer, device)

    def classifier(self, name: str) -> torch.Tensor:
        """(embedding dim, 10): the class's colour text embeddings, each the normalised template mean."""
        if name not in self._classifiers:
            from open_clip import build_zero_shot_classifier

            self._classifiers[name] = build_zero_shot_classifier(
                self.model, self.tokenizer, list(COLOURS), colour_templates(name), num_classes_per_batch=None,
                device=self.device).float()
        return self._classifiers[name]

    @torch.no_grad()
    def classify(self, crops: list, names: list[str]) -> list[str]:
        if not crops:
            return []
        batch = torch.stack([self.preprocess(crop.convert("RGB")) for crop in crops]).to(self.device)
        features = F.normalize(self.model.encode_image(batch).float(), dim=-1)
        weights = torch.stack([self.classifier(name) for name in names])  # (crops, dim, colours)
        logits = torch.einsum("nd,ndk->nk", features, weights)
        return [COLOURS[i] for i in logits.argmax(dim=-1).tolist()]


@dataclass
class Judge:
    """What sees the images for GenEval's rules: `detector.detect(images)` -> per image {class: [Detected]} (every
    detection the rules may keep), `colours.classify(crops, class names)` -> one colour label per crop. A detector
    that gives each `Detected` its colour is never asked for crops' colours (`colours` may then be None)."""

    name: str
    detector: object
    colours: object
    description: str = ""


def spec_from_objects(objects: list[dict]) -> tuple[dict | None, str]:
    """GenEval clauses for a prompt that has none, from its objects (class = query or name, colour = attribute),
    or (None, why not)."""
    include = []
    for obj in objects:
        name, colour = obj.get("query") or obj["name"], obj.get("attribute")
        if name not in CLASSES:
            return None, f"not judged: {name!r} is not one of GenEval's 80 classes"
        if colour is not None and colour not in COLOURS:
            return None, f"not judged: colour {colour!r} is not one of GenEval's 10 colours"
        include.append({"class": name, "count": int(obj.get("count") or 1), **({"color": colour} if colour else {})})
    return {"tag": "objects", "include": include}, ""


# GenEval's task table (six tasks, overall, paired against plain), one for every GenEval judge of the run
GENEVAL_SECTION = ReportSection("geneval", geneval_results, geneval_markdown, geneval_tables)


class GenEval(Metric):
    name = "geneval"
    report_section = GENEVAL_SECTION
    judge_name = "mask2former"
    description = ("GenEval's six tasks (objects, counting, colours, position) judged by Mask2Former + CLIP "
                   "ViT-L/14: 1 when every clause of the prompt holds")
    columns = {"geneval_correct": True}
    version = "1"
    rules = ("GenEval's rules: detections kept above 0.3 (0.9 for counting), best first, at most 16 a class; "
             "include clause = at least count kept; exclude clause fails at count kept; colour = every one of the "
             "first count objects labelled as asked by the judge (GenEval's 10 colours); position = each "
             "object against each object of its target clause, centre offsets shrunk by 0.1 (dA + dB), "
             "|component| < 1e-3: no relation, else a component over 0.5 of the offset's length; correct = every "
             "clause holds; task = mean per tag, overall = unweighted mean of the six tasks")
    judge_description = (f"Mask2Former {DEFAULT_DETECTOR} (transformers; boxes from masks) unless --metric-model "
                         f"geneval.detector=...; colour: open_clip {CLIP_MODEL} with QuickGELU (OpenAI weights unless "
                         f"--metric-model geneval.clip=...) zero-shot with GenEval's 3 templates, on the mask pasted "
                         f"on {GREY} and cropped to the box")
    convention = f"GenEval-compatible (judge=mask2former): {judge_description}; {rules}"

    def __init__(self, judge: Judge | None = None):
        self.judge = judge
        self.domain = "natural"
        self.suite = ""  # the run's suite (name or file), for records made before they carried their clauses
        self._suite_specs: dict[str, dict] = {}
        if judge is not None:
            self.convention = self.convention_for(judge)

    @property
    def reason_key(self) -> str:
        return f"{self.name}_reason"

    @property
    def correct_key(self) -> str:
        return f"{self.name}_correct"

    def convention_for(self, judge: Judge) -> str:
        return f"GenEval-compatible (judge={judge.name}): {judge.description or judge.name}; {self.rules}"

    def load_detector(self, source: str, device: str):
        return Mask2FormerDetector.from_pretrained(source, device)

    default_detector = DEFAULT_DETECTOR
    detector_kind = "Mask2Former detector"

    @classmethod
    def check_prompts(cls, prompts) -> None:
        """A line's GenEval clauses (classes, counts, colours, position indices) are checked before the run loads
        anything; a line without clauses is judged by clauses derived from its objects."""
        from ..suites import SuiteError

        for item in prompts:
            problem = spec_problem(item.extra["geneval"]) if "geneval" in item.extra else None
            if problem:
                raise SuiteError(f"{item.where}: {problem}")

    def setup(self, context) -> None:
        check_available(self.name, context)
        self.domain, self.suite = context.domain, context.suite
        if self.judge is not None:
            self.convention = self.convention_for(self.judge)
            return
        named = [key for key in context.model_paths if key == self.name or key.startswith(f"{self.name}.")]
        factory = None if named else domain_model(self.name, context)
        if factory is not None:  # the domain's own judge
            self.judge = factory(context)
            self.convention = self.convention_for(self.judge)
            return
        detector_source = context.model_paths.get(f"{self.name}.detector", self.default_detector)
        clip_source = context.model_paths.get(f"{self.name}.clip", "openai")
        detector = colours = None
        missing = []  # every missing model on one line
        try:
            detector = self.load_detector(detector_source, context.device)
        except Exception as err:  # offline hub, missing folder, wrong format
            missing.append(f"cannot load the {self.detector_kind} {detector_source!r} ({type(err).__name__}); fetch "
                           f"it where there is network (`hf download {self.default_detector} --local-dir DIR`) and "
                           f"pass --metric-model {self.name}.detector=DIR")
        logging.disable(logging.ERROR)  # open_clip logs its failed download; our line says it with the remedy
        try:
            colours = ClipColours.load(clip_source, context.device)
        except Exception as err:
            missing.append(f"cannot load open_clip {CLIP_MODEL} weights {clip_source!r} ({type(err).__name__}); "
                           f"fetch them where there is network (`hf download {CLIP_HUB_FOLDER} --local-dir DIR`) "
                           f"and pass --metric-model {self.name}.clip=DIR")
        finally:
            logging.disable(logging.NOTSET)
        if missing:
            raise MetricUnavailable("; ".join(missing))
        self.judge = Judge(self.judge_name, detector, colours, self.judge_description)
        self.convention = self.convention_for(self.judge)

    def suite_specs(self, suite: str) -> dict:
        """{prompt id: (prompt, clauses)} of a suite of the run's domain ({} when it cannot be read)."""
        if suite not in self._suite_specs:
            from ..domains import prompts_dir
            from ..suites import load_suite

            try:
                prompts = load_suite(suite, prompts_dir(self.domain))
            except (OSError, ValueError):  # SuiteError is a ValueError
                prompts = []
            self._suite_specs[suite] = {p.id: (p.prompt, p.extra["geneval"]) for p in prompts if "geneval" in p.extra}
        return self._suite_specs[suite]

    def spec_of(self, record: dict) -> tuple[dict | None, str]:
        """The prompt's GenEval clauses: the record's own, the run's suite line of the same id and prompt (an older
        record), or derived from its objects."""
        if isinstance(record.get("geneval"), dict):
            return record["geneval"], ""
        if self.suite:
            prompt, spec = self.suite_specs(self.suite).get(record.get("prompt_id"), (None, None))
            if spec is not None and prompt == record.get("prompt"):
                return spec, ""
        return spec_from_objects(record.get("objects", []))

    def score(self, images, records):
        if self.judge is None:
            raise MetricUnavailable(f"{self.name} metric used before setup()")
        images = [image.convert("RGB") for image in images]
        specs = [self.spec_of(record) for record in records]
        judged = [i for i, (spec, _) in enumerate(specs) if spec is not None]
        detections = dict(zip(judged, self.judge.detector.detect([images[i] for i in judged]), strict=True))
        kept = {i: keep(detections[i], specs[i][0]["tag"]) for i in judged}
        crops, owners = [], []  # every colour crop of the batch, for one CLIP call
        colours: dict[int, dict[str, list]] = {i: {} for i in judged}
        for i in judged:
            for name, count in colour_requests(specs[i][0], kept[i]).items():
                for obj in kept[i][name][:count]:
                    colours[i].setdefault(name, []).append(obj.colour)  # None: asked of the classifier below
                    if obj.colour is None:
                        crops.append(colour_crop(images[i], obj))
                        owners.append((i, name, len(colours[i][name]) - 1))
        labels = self.judge.colours.classify(crops, [name for _, name, _ in owners]) if crops else []
        for (i, name, slot), label in zip(owners, labels, strict=True):
            colours[i][name][slot] = label
        out = []
        for i, (spec, why) in enumerate(specs):
            if spec is None:
                out.append({self.correct_key: float("nan"), self.reason_key: why})
                continue
            verdict = judge(spec, kept[i], colours[i])
            out.append({self.correct_key: float(verdict.correct), self.reason_key: verdict.reason})
        return out


class GenEvalOwlv2(GenEval):
    name = "geneval_owlv2"
    judge_name = "owlv2"
    description = ("GenEval's six tasks judged by OWLv2 boxes (class-wise NMS) + CLIP ViT-L/14 on box crops; "
                   "not comparable with the Mask2Former judge")
    columns = {"geneval_owlv2_correct": True}
    judge_description = (f"OWLv2 {DEFAULT_OWLV2} unless --metric-model geneval_owlv2.detector=..., queried with "
                         f"the 80 class names, each box its best class, class-wise NMS at IoU {OWLV2_NMS_IOU}, "
                         "boxes only (thresholds not calibrated for OWLv2); colour: open_clip "
                         f"{CLIP_MODEL} with QuickGELU (OpenAI weights unless --metric-model geneval_owlv2.clip=...) "
                         "zero-shot with GenEval's 3 templates, on the box crop")
    convention = f"GenEval-compatible (judge=owlv2): {judge_description}; {GenEval.rules}"
    default_detector = DEFAULT_OWLV2
    detector_kind = "OWLv2 detector"

    def load_detector(self, source: str, device: str):
        return Owlv2BoxDetector.from_pretrained(source, device)
