"""Training captions in GenEval's grammar (benchmark/shapes/captions.py): every caption kind is true of its
rendered scene by the world's GenEval judge, held-out pairs stay out, and without a mix the training data is
what it was (the shipped model's recipe)."""

import hashlib

import numpy as np
import pytest

from benchmark.metrics import MetricContext, get_metric
from benchmark.shapes.captions import CAPTION_KINDS, mixed_scene, parse_mix, relation_caption
from benchmark.shapes.data import has_heldout_pair, training_batch, training_scene
from benchmark.shapes.world import Scene, SceneObject, render_pil

NUMBERS = {"two": 2, "three": 3, "four": 4}


@pytest.fixture(scope="module")
def metric():
    metric = get_metric("geneval")
    metric.setup(MetricContext(domain="shapes"))
    return metric


def clauses(caption: str) -> dict:
    """GenEval's clauses for a caption of any kind, as the world's geneval suite writes them."""
    words = caption.split()
    if words[0] in NUMBERS:  # "three yellow squares"
        count, colour, shape = NUMBERS[words[0]], words[1], words[2][:-1]
        return {"include": [{"class": shape, "count": count, "color": colour}],
                "exclude": [{"class": shape, "count": count + 1}]}
    for relation in ("left of", "right of", "above", "below"):  # "a red circle left of a blue square"
        if f" {relation} " in caption:
            first, second = (part.split() for part in caption.split(f" {relation} "))
            return {"include": [{"class": second[2], "count": 1, "color": second[1]},
                                {"class": first[2], "count": 1, "color": first[1], "position": [relation, 0]}]}
    objects = [phrase.split()[1:] for phrase in caption.split(" and ")]  # full or colourless objects
    shapes = [words[-1] for words in objects]
    include = []
    for shape in dict.fromkeys(shapes):  # a clause per shape: its count, and its colour when it is alone
        colours = [words[0] for words in objects if words[-1] == shape and len(words) == 2]
        include.append({"class": shape, "count": shapes.count(shape),
                        **({"color": colours[0]} if len(colours) == 1 and shapes.count(shape) == 1 else {})})
    return {"include": include}


@pytest.mark.parametrize("kind", CAPTION_KINDS)
def test_every_caption_kind_is_true_of_its_scene(metric, kind):
    rng = np.random.default_rng(7)
    pairs = [mixed_scene(rng, {kind: 1.0}, (0.25, 0.25, 0.25, 0.25), training_scene) for _ in range(24)]
    records = [{"geneval": {"tag": "test", "classes": "shapes", **clauses(caption)}} for _, caption in pairs]
    rows = metric.score([render_pil(scene) for scene, _ in pairs], records)
    wrong = [(caption, row["geneval_reason"]) for (_, caption), row in zip(pairs, rows) if row["geneval_correct"] != 1]
    assert not wrong
    assert not any(has_heldout_pair(scene.labels) for scene, _ in pairs)
    if kind == "count":
        assert {caption.split()[0] for _, caption in pairs} == set(NUMBERS)
    if kind == "relation":
        assert {r for _, c in pairs for r in ("left of", "right of", "above", "below") if r in c} == \
            {"left of", "right of", "above", "below"}


def test_a_diagonal_layout_gets_no_relation_caption():
    diagonal = Scene((SceneObject("red", "circle", 0.25, 0.25, 0.2), SceneObject("blue", "square", 0.75, 0.75, 0.2)))
    beside = Scene((SceneObject("red", "circle", 0.25, 0.5, 0.2), SceneObject("blue", "square", 0.75, 0.5, 0.2)))
    assert relation_caption(diagonal) is None
    assert relation_caption(beside) == "a red circle left of a blue square"


def test_a_mix_draws_every_kind_in_proportion():
    captions = training_batch(0, batch_size=400, caption_mix=parse_mix("full=2,count=1,relation=1"))[1]
    counts = sum(c.split()[0] in NUMBERS for c in captions)
    relations = sum(" of " in c or " above " in c or " below " in c for c in captions)
    assert 70 <= counts <= 130 and 70 <= relations <= 130 and len(captions) == 400


def test_without_a_mix_the_training_data_is_the_shipped_recipes():
    images, captions = training_batch(5, seed=0, batch_size=6, caption_dropout=0.1, count_probs=(0.45, 0.2, 0.2, 0.15))
    # as drawn before caption mixes existed
    assert captions == ["a red triangle and a purple square and a yellow square",
                        "a red triangle and a red square and a blue triangle and a red square", "a orange triangle",
                        "", "a green square", "a orange circle and a green triangle and a green triangle"]
    assert hashlib.sha256(images.tobytes()).hexdigest()[:16] == "34069c4997af2bf3"


@pytest.mark.parametrize("text, message", [("full=1,many=2", "unknown caption kind 'many'"),
                                           ("count", "give KIND=WEIGHT"), ("full=-1", ">= 0"),
                                           ("full=0", "positive weight")])
def test_bad_mixes_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mix(text)
