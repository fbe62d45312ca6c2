"""The shapes world plugged into the benchmark: its suites, its domain, and its metric instruments."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmark.domains import DOMAIN_FILE, NATURAL, model_domain, prompts_dir
from benchmark.metrics import MetricContext, MetricUnavailable, get_metric
from benchmark.shapes.data import HELDOUT_PAIRS
from benchmark.shapes.instruments import reference_folder
from benchmark.shapes.world import render_pil, scene_from_objects
from benchmark.suites import load_suite

SHAPES = "shapes"
SHAPES_CONTEXT = MetricContext(domain=SHAPES)


def record(prompt, objects):
    return {"prompt": prompt, "method": "plain", "prompt_id": "p", "seed": 0, "category": "c",
            "objects": [{"name": s, "attribute": c, "count": 1, "query": f"{c} {s}"} for c, s in objects]}


def test_shapes_suites_are_rebuilt_identically(tmp_path):
    from benchmark.shapes.suites import write_suites as write_shapes_suites

    write_shapes_suites(tmp_path)
    for path in tmp_path.glob("*.jsonl"):
        assert path.read_bytes() == (prompts_dir(SHAPES) / path.name).read_bytes()


def test_shapes_suites_hold_the_heldout_pairs_and_distinct_objects():
    two = load_suite("two_object", prompts_dir(SHAPES))
    heldout = {tuple((o.attribute, o.name) for o in p.objects) for p in two if p.category == "heldout_pair"}
    assert heldout == {tuple(p) for p in HELDOUT_PAIRS} | {tuple(p[::-1]) for p in HELDOUT_PAIRS}
    assert all(not p.extra["heldout"] for p in two if p.category == "seen_pair")
    for p in load_suite("multi_object", prompts_dir(SHAPES)):
        labels = [(o.attribute, o.name) for o in p.objects]
        assert len(set(labels)) == len(labels) and p.prompt.startswith("a ")
        assert all(o.query == f"{o.attribute} {o.name}" for o in p.objects)
    assert len(load_suite("single_object", prompts_dir(SHAPES))) == 18


def test_a_model_folder_declares_its_domain(tmp_path, tiny_model_dir):
    assert model_domain(tiny_model_dir) == NATURAL
    assert model_domain("CompVis/stable-diffusion-v1-4") == NATURAL
    (tmp_path / DOMAIN_FILE).write_text(json.dumps({"domain": SHAPES}))
    assert model_domain(tmp_path) == SHAPES


def test_presence_uses_the_exact_detector_in_the_shapes_world():
    metric = get_metric("presence")
    metric.setup(SHAPES_CONTEXT)
    image = render_pil(scene_from_objects([("red", "circle"), ("blue", "square")], 3))
    both = record("a red circle and a blue square", [("red", "circle"), ("blue", "square")])
    wrong = record("a red circle and a green square", [("red", "circle"), ("green", "square")])
    twice = record("a red circle and a red circle", [("red", "circle"), ("red", "circle")])
    a, b, c = metric.score([image] * 3, [both, wrong, twice])
    assert (a["presence_all"], a["presence_objects"]) == (1.0, 1.0)
    assert (b["presence_all"], b["presence_objects"], b["presence_missing"]) == (0.0, 0.5, "green square")
    assert (c["presence_all"], c["presence_objects"]) == (0.0, 0.5)  # count-aware: one red circle, two asked
    assert "exact detector" in metric.describe()["convention"]


def test_clip_uses_the_world_clip_without_templates():
    metric = get_metric("clip")
    metric.setup(SHAPES_CONTEXT)
    assert not metric.use_templates and "shapes world's CLIP" in metric.convention
    image = render_pil(scene_from_objects([("red", "circle"), ("blue", "square")], 3))
    right, swapped = metric.score([image] * 2, [record("a red circle and a blue square", []),
                                                record("a blue circle and a red square", [])])
    assert right["clip_full"] > swapped["clip_full"]
    assert right["clip_min_object"] > swapped["clip_min_object"]
    # the minimum over objects, each scored alone (bare phrase, no templates)
    parts = [float(metric.image_embeddings([image])[0] @ metric.text_embedding(p, False))
             for p in ("a red circle", "a blue square")]
    assert right["clip_min_object"] == pytest.approx(min(parts), abs=1e-6)


def test_blip_is_not_available_in_the_shapes_world():
    with pytest.raises(MetricUnavailable, match="not available"):
        get_metric("blip").setup(SHAPES_CONTEXT)


def test_fid_compares_with_rendered_scenes_through_the_world_clip(tmp_path):
    folder = reference_folder(tmp_path, n=24, seed=1)
    assert len(list(folder.glob("*.png"))) == 24 and reference_folder(tmp_path, n=24, seed=1) == folder
    metric = get_metric("fid")
    metric.setup(MetricContext(domain=SHAPES, model_paths={"fid.reference": str(folder),
                                                           "fid.cache": str(tmp_path / "cache")}))
    assert "shapes-clip" in metric.convention
    rng = np.random.default_rng(5)
    from benchmark.shapes.world import sample_scene

    scenes = [render_pil(sample_scene(rng)) for _ in range(24)]
    blank = [Image.new("RGB", (64, 64), (240, 240, 240 - i)) for i in range(24)]
    recs = [dict(record("x", []), seed=i) for i in range(24)]
    metric.update(scenes, recs)
    world = metric.compute(list(metric.states.values()))["fid"]
    metric.reset()
    metric.update(blank, recs)
    empty = metric.compute(list(metric.states.values()))["fid"]
    assert 0 <= world < empty


def test_presence_asks_the_world_for_the_objects_colour_with_or_without_a_query():
    """A suite line's `query` is optional: the world's detector answers "colour shape", so an object is looked up
    by its `attribute` and name; an object without a colour is found in any colour."""
    metric = get_metric("presence")
    metric.setup(SHAPES_CONTEXT)
    image = render_pil(scene_from_objects([("red", "circle"), ("blue", "square")], 3))
    no_query = {"prompt": "a red circle and a blue square",
                "objects": [{"name": "circle", "attribute": "red"}, {"name": "square", "attribute": "blue"}]}
    wrong_colour = {"prompt": "a green circle", "objects": [{"name": "circle", "attribute": "green"}]}
    colourless = {"prompt": "a circle and a square", "objects": [{"name": "circle"}, {"name": "square"}]}
    absent = {"prompt": "a triangle", "objects": [{"name": "triangle"}]}
    a, b, c, d = metric.score([image] * 4, [no_query, wrong_colour, colourless, absent])
    assert (a["presence_all"], a["presence_objects"]) == (1.0, 1.0)
    assert (b["presence_all"], b["presence_missing"]) == (0.0, "green circle")
    assert (c["presence_all"], c["presence_objects"]) == (1.0, 1.0)
    assert (d["presence_all"], d["presence_missing"]) == (0.0, "triangle")


def test_the_worlds_query_keeps_a_given_query_and_adds_a_missing_colour():
    from benchmark.shapes.instruments import ExactDetector

    assert ExactDetector.query_of({"name": "squares", "attribute": "yellow", "query": "yellow square"}) == \
        "yellow square"
    assert ExactDetector.query_of({"name": "circle", "attribute": "red", "query": "circle"}) == "red circle"
    assert ExactDetector.query_of({"name": "circle", "attribute": "red"}) == "red circle"
    assert ExactDetector.query_of({"name": "circle"}) == "circle"
