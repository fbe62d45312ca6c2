"""GenEval's scoring rules, as pure functions over a judge's detections (no model, no image).

A prompt's clauses (`spec`): `{"tag": ..., "include": [clause, ...], "exclude": [clause, ...]}`, a clause being
`{"class": name, "count": n}` with, in `include`, an optional `"color"` and an optional
`"position": [relation, index of the include clause it is relative to]`.

The rules, as GenEval's evaluation applies them:

- a class's detections are kept when their score is above 0.3 (above 0.9 for `counting` prompts), best first,
  at most 16 a class (`keep`);
- an include clause needs at least `count` kept objects of its class; its objects are then the first `count`
  kept (the most confident ones); an exclude clause fails the image when `count` or more are kept;
- colour: each of the clause's objects gets a colour label from the judge (`colour_requests` says which); the
  clause holds when at least `count` of them have the asked colour, i.e. all of them;
- position (`relation`): each object of the clause against each object of the clause it points to, from box
  centres and sizes; checked only when the clause's count and colour hold, and fails when its target clause
  failed;
- an image is correct when every clause holds (`judge`); a task's score is the mean over its images; the overall
  score is the unweighted mean of the task scores, and the share of prompts with at least one correct image is
  reported beside it (`summarize`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

THRESHOLD = 0.3  # a detection is kept above this score ...
COUNTING_THRESHOLD = 0.9  # ... or above this one for counting prompts
MAX_PER_CLASS = 16  # kept detections of one class, best first
POSITION_SHRINK = 0.1  # each centre offset component shrinks towards 0 by this fraction of the summed sizes
NO_RELATION = 1e-3  # below this (every shrunk component) two objects stand in no relation

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
# The 80 COCO classes in COCO's order, spelled as GenEval's prompts spell them (its detector's class list).
CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# Class lists a suite's clauses may name, by the name a clause's `"classes"` field gives (default "coco").
CLASS_LISTS: dict[str, tuple[str, ...]] = {"coco": CLASSES}


def register_class_list(name: str, classes: Sequence[str]) -> None:
    """Another judge's class list (a clause then says `"classes": name`)."""
    CLASS_LISTS[name] = tuple(classes)


@dataclass(frozen=True)
class Detected:
    """One detection of a class: box (x0, y0, x1, y1, pixels), score, the object's mask ((H, W) booleans) when
    the judge segments, and its colour when the judge knows it exactly (then no colour classifier is asked)."""

    box: tuple[float, float, float, float]
    score: float
    mask: object = field(default=None, compare=False, repr=False)
    colour: str | None = None


class Verdict(NamedTuple):
    correct: bool
    reason: str  # "" when correct; otherwise every failed clause, "; "-separated


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _clause_problem(clause, where: str, classes: Sequence[str], list_name: str) -> str | None:
    if not isinstance(clause, dict):
        return f"{where} must be an object {{class, count, ...}}"
    name = clause.get("class")
    if name not in classes:
        return (f"{where} names class {name!r}, not one of the {len(classes)} classes of list {list_name!r} "
                f"({', '.join(classes[:4])}, ...)")
    if not _is_count(clause.get("count")):
        return f"{where}: count must be a whole number >= 1, got {clause.get('count')!r}"
    return None


def spec_problem(spec) -> str | None:
    """What is wrong with a prompt's GenEval clauses, or None: unknown classes (outside the clause's class list,
    by default the 80 COCO classes), counts, colours, relations, and position indices that point to no earlier
    include clause (the rules check clauses in order, so a position refers back)."""
    if not isinstance(spec, dict):
        return "geneval must be an object {tag, include, exclude}"
    if not isinstance(spec.get("tag"), str) or not spec["tag"]:
        return "geneval: tag must be a non-empty string"
    list_name = spec.get("classes", "coco")
    if list_name not in CLASS_LISTS:
        return f"geneval: unknown class list {list_name!r} (known: {', '.join(CLASS_LISTS)})"
    classes = CLASS_LISTS[list_name]
    include, exclude = spec.get("include"), spec.get("exclude", [])
    if not isinstance(include, list) or not include:
        return "geneval: include must be a non-empty list of clauses"
    if not isinstance(exclude, list):
        return "geneval: exclude must be a list of clauses"
    for index, clause in enumerate(include):
        where = f"geneval include clause {index}"
        problem = _clause_problem(clause, where, classes, list_name)
        if problem:
            return problem
        if "color" in clause and clause["color"] not in COLOURS:
            return f"{where}: color {clause['color']!r} is not one of {', '.join(COLOURS)}"
        if "position" in clause:
            position = clause["position"]
            if (not isinstance(position, list) or len(position) != 2 or position[0] not in RELATIONS
                    or isinstance(position[1], bool) or not isinstance(position[1], int)):
                return f"{where}: position must be [relation, clause index], relation one of {', '.join(RELATIONS)}"
            target = position[1]
            if not 0 <= target < len(include):
                return f"{where}: position index {target} points to no clause (include has {len(include)})"
            if target >= index:
                return (f"{where}: position index {target} must point to an earlier include clause (clauses are "
                        "checked in order)")
    for index, clause in enumerate(exclude):
        problem = _clause_problem(clause, f"geneval exclude clause {index}", classes, list_name)
        if problem:
            return problem
    return None


def threshold_for(tag: str) -> float:
    return COUNTING_THRESHOLD if tag == "counting" else THRESHOLD


def keep(detections: Mapping[str, Sequence[Detected]], tag: str) -> dict[str, list[Detected]]:
    """Per class, the detections scored above the prompt's threshold, best first, at most 16; classes with none
    are left out."""
    threshold = threshold_for(tag)
    kept = {}
    for name, found in detections.items():
        # GenEval's own ordering, `np.argsort(scores)[::-1]` over every detection of the class (float32, as its
        # detector's arrays) before the threshold: tied scores come in numpy's order, reversed (a stable sort by
        # descending score would keep them in detection order)
        order = np.argsort(np.array([d.score for d in found], dtype=np.float32))[::-1]
        best = [found[i] for i in order if found[i].score > threshold][:MAX_PER_CLASS]
        if best:
            kept[name] = best
    return kept


def colour_requests(spec: Mapping, kept: Mapping[str, Sequence[Detected]]) -> dict[str, int]:
    """Per class, how many of its first kept objects need a colour label: those of the colour clauses whose count
    holds (a clause short of objects fails before any colour is asked)."""
    needed: dict[str, int] = {}
    for clause in spec.get("include", []):
        name, count = clause["class"], clause["count"]
        if "color" in clause and len(kept.get(name, ())) >= count:
            needed[name] = max(needed.get(name, 0), count)
    return needed


def relation(box_a: Sequence[float], box_b: Sequence[float]) -> set[str]:
    """Where A stands relative to B: a subset of "left of", "right of", "above", "below" (image coordinates, y
    down); empty when the centres are too close for their sizes."""
    centre_a = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    centre_b = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    size_a = (abs(box_a[2] - box_a[0]), abs(box_a[3] - box_a[1]))
    size_b = (abs(box_b[2] - box_b[0]), abs(box_b[3] - box_b[1]))
    offset = [ca - cb for ca, cb in zip(centre_a, centre_b, strict=True)]
    shrunk = [math.copysign(max(abs(o) - POSITION_SHRINK * (sa + sb), 0.0), o)
              for o, sa, sb in zip(offset, size_a, size_b, strict=True)]
    if all(abs(s) < NO_RELATION for s in shrunk):
        return set()
    length = math.hypot(*offset)
    dx, dy = shrunk[0] / length, shrunk[1] / length
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def _relations_text(relations: set[str]) -> str:
    return " and ".join(r for r in RELATIONS if r in relations) or "no relation"


def _colour_text(labels: Sequence[str], name: str) -> str:
    return ", ".join(f"{labels.count(c)} {c} {name}" for c in COLOURS if c in labels)


def judge(spec: Mapping, kept: Mapping[str, Sequence[Detected]],
          colours: Mapping[str, Sequence[str]] | None = None) -> Verdict:
    """The image's verdict from its kept detections (`keep`) and the colour labels of the objects that
    `colour_requests` asked for (`colours[class][i]` labels `kept[class][i]`)."""
    colours = colours or {}
    reasons: list[str] = []
    include = list(spec.get("include", []))
    groups: list[list[Detected] | None] = []  # each include clause's objects, None when the clause failed
    for clause in include:
        name, count = clause["class"], clause["count"]
        objects = list(kept.get(name, ()))[:count]
        holds = len(objects) >= count
        if not holds:
            reasons.append(f"expected {name}>={count}, found {len(objects)}")
        else:
            if "color" in clause:
                labels = list(colours.get(name, ()))[:count]
                if len(labels) < count:
                    raise ValueError(f"{count} colour labels of {name!r} needed, {len(labels)} given "
                                     "(see colour_requests)")
                wanted = clause["color"]
                if labels.count(wanted) < count:
                    holds = False
                    asked = f"{wanted} {name}" if count == 1 else f"{wanted} {name}>={count}"
                    found = f"{labels[0]} {name}" if count == 1 else _colour_text(labels, name)
                    reasons.append(f"expected {asked}, found {found}")
            if "position" in clause and holds:
                expected, target = clause["position"]
                target_name = include[target]["class"]
                if groups[target] is None:
                    holds = False
                    reasons.append(f"no target for {name} to be {expected} {target_name}")
                else:
                    for a in objects:
                        for b in groups[target]:
                            found_relations = relation(a.box, b.box)
                            if expected not in found_relations:
                                holds = False
                                reasons.append(f"expected {name} {expected} {target_name}, found "
                                               f"{_relations_text(found_relations)}")
                                break
                        if not holds:
                            break
        groups.append(objects if holds else None)
    for clause in spec.get("exclude", []):
        name, count = clause["class"], clause["count"]
        found = len(kept.get(name, ()))
        if found >= count:
            reasons.append(f"expected {name}<{count}, found {found}")
    return Verdict(not reasons, "; ".join(reasons))


def summarize(rows: Iterable) -> dict:
    """GenEval's summary of one method's images. `rows`: (prompt id, tag, correct) triples, or dicts with
    `prompt_id`, `category` (the tag) and `geneval_correct`. Returns `tasks` (tag -> share of correct images, the
    six tasks in GenEval's order first), `overall` (unweighted mean of the task scores), `images`,
    `correct_images` (share), `prompts` and `prompts_any_correct` (share of prompts with at least one correct
    image). Rows without a verdict (None or NaN) are left out."""
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for row in rows:
        if isinstance(row, Mapping):
            row = (row["prompt_id"], row["category"], row["geneval_correct"])
        prompt_id, tag, correct = row
        if correct is None or (isinstance(correct, float) and math.isnan(correct)):
            continue  # an image without a verdict (not a GenEval prompt) counts nowhere
        correct = bool(correct)
        by_tag.setdefault(tag, []).append(correct)
        by_prompt[prompt_id] = by_prompt.get(prompt_id, False) or correct
    order = [t for t in TAGS if t in by_tag] + [t for t in by_tag if t not in TAGS]
    tasks = {tag: sum(by_tag[tag]) / len(by_tag[tag]) for tag in order}
    images = sum(len(v) for v in by_tag.values())
    correct = sum(sum(v) for v in by_tag.values())
    return {"tasks": tasks, "overall": sum(tasks.values()) / len(tasks) if tasks else float("nan"),
            "images": images, "correct_images": correct / images if images else float("nan"),
            "prompts": len(by_prompt),
            "prompts_any_correct": sum(by_prompt.values()) / len(by_prompt) if by_prompt else float("nan")}
