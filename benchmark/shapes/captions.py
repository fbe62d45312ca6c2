"""Training captions in GenEval's grammar, beside the world's full captions.

The shipped model learnt from full captions only ("a red circle and a blue square"): it never saw a count, a
relation or a shape named without its colour, which GenEval's tasks ask ("three yellow squares", "a red circle
left of a blue square", "a circle"). A training mix (`mixed_scene`, `train.py --caption-mix`) draws for each
training image a caption kind by weight and a scene that the caption is true of:

- `full`: a scene of 1-4 objects and its full caption (the shipped model's only kind);
- `colourless`: one object, or two of different shapes, named by shape alone ("a circle", "a circle and a
  square");
- `count`: two to four copies of one coloured shape ("three yellow squares");
- `relation`: two objects of different shapes and colours and the one relation GenEval's rule finds between their
  boxes ("a red circle left of a blue square"); a layout where the rule finds none, or two (diagonal), is drawn
  again.

Held-out pairs stay out of every kind (no held-out pair is ever in one scene).
"""

from __future__ import annotations

import numpy as np

from benchmark.geneval.rules import relation

from .geometry import SHAPES
from .world import COLOURS, Scene, caption_for, scene_from_objects

CAPTION_KINDS = ("full", "colourless", "count", "relation")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


def parse_mix(text: str) -> dict[str, float]:
    """"full=0.55,count=0.15" -> {"full": 0.55, "count": 0.15}; the weights need not sum to 1."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in CAPTION_KINDS:
            raise ValueError(f"unknown caption kind {kind!r} in --caption-mix: use {', '.join(CAPTION_KINDS)}")
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise ValueError(f"--caption-mix {part!r}: give KIND=WEIGHT, e.g. count=0.15") from None
        if mix[kind] < 0:
            raise ValueError(f"--caption-mix {part!r}: weights must be >= 0")
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("--caption-mix needs at least one kind with a positive weight, e.g. full=1")
    return mix


def count_caption(colour: str, shape: str, count: int) -> str:
    return f"{NUMBER_WORDS[count]} {colour} {shape}s"


def colourless_caption(scene: Scene) -> str:
    return " and ".join(f"a {o.shape}" for o in scene.objects)


def relation_text(first: tuple[str, str], where: str, second: tuple[str, str]) -> str:
    """("red", "circle"), "left of", ("blue", "square") -> "a red circle left of a blue square"."""
    return f"{caption_for([first])} {where} {caption_for([second])}"


def relation_caption(scene: Scene) -> str | None:
    """`relation_text` of a two-object scene, when GenEval's rule finds exactly one relation of the first object
    to the second; else None."""
    first, second = scene.objects
    found = relation(first.bbox(), second.bbox())
    return relation_text(first.label, found.pop(), second.label) if len(found) == 1 else None


def draw_kind(rng: np.random.Generator, mix: dict[str, float]) -> str:
    kinds = list(mix)
    weights = np.asarray([mix[k] for k in kinds], dtype=float)
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def mixed_scene(rng: np.random.Generator, mix: dict[str, float], count_probs, training_scene) -> tuple[Scene, str]:
    """(scene, caption) of a caption kind drawn by `mix`'s weights; `training_scene(rng, count_probs)` draws the
    scenes of the full, colourless and relation kinds (free of held-out pairs)."""
    return scene_of_kind(rng, draw_kind(rng, mix), count_probs, training_scene)


def scene_of_kind(rng: np.random.Generator, kind: str, count_probs, training_scene) -> tuple[Scene, str]:
    if kind == "full":
        scene = training_scene(rng, count_probs)
        return scene, scene.caption
    if kind == "colourless":
        scene = training_scene(rng, (1.0, 0.0, 0.0, 0.0)) if rng.random() < 0.5 else _two_apart(rng, training_scene)
        return scene, colourless_caption(scene)
    if kind == "count":
        count = int(rng.integers(2, 5))
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        return scene_from_objects([(colour, shape)] * count, rng), count_caption(colour, shape, count)
    while True:  # relation
        scene = _two_apart(rng, training_scene)
        caption = relation_caption(scene)
        if caption is not None:
            return scene, caption


def _two_apart(rng: np.random.Generator, training_scene) -> Scene:
    """Two objects of different shapes and different colours (as GenEval's two-object prompts name them: a
    clause per shape)."""
    while True:
        scene = training_scene(rng, (0.0, 1.0, 0.0, 0.0))
        (colour_a, shape_a), (colour_b, shape_b) = scene.labels
        if colour_a != colour_b and shape_a != shape_b:
            return scene
