"""The shapes world: seeded scenes, layout rules, captions and rendering."""

import re
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from benchmark.shapes import (BACKGROUND, COLOURS, PALETTE, SHAPES, caption_for, render, render_pil,
                              sample_scene, scene_from_objects)
from benchmark.shapes.geometry import coverage
from benchmark.shapes.world import GAP, MARGIN, MAX_SIZE, MIN_SIZE


def test_same_seed_gives_same_scene_and_pixels():
    assert sample_scene(7) == sample_scene(7)
    assert np.array_equal(render(sample_scene(7)), render(sample_scene(7)))
    # a Generator advances: two draws from one generator match two draws from a fresh one with that seed
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [sample_scene(a) for _ in range(3)] == [sample_scene(b) for _ in range(3)]
    assert len({sample_scene(s).caption for s in range(20)}) > 15  # different seeds, different scenes


def test_scenes_cover_all_counts_colours_and_shapes():
    scenes = [sample_scene(s) for s in range(300)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)


def test_sample_scene_respects_count_and_vocabulary():
    for seed in range(30):
        scene = sample_scene(seed, num_objects=3, colours=["red", "blue"], shapes=["square"])
        assert len(scene.objects) == 3
        assert {o.colour for o in scene.objects} <= {"red", "blue"}
        assert {o.shape for o in scene.objects} == {"square"}


def test_objects_fit_the_canvas_and_keep_apart():
    for seed in range(300):
        objs = sample_scene(seed, num_objects=4).objects
        for o in objs:
            assert MIN_SIZE <= o.size <= MAX_SIZE
            assert MARGIN - 1e-9 <= o.cx - o.size / 2 and o.cx + o.size / 2 <= 1 - MARGIN + 1e-9
            assert MARGIN - 1e-9 <= o.cy - o.size / 2 and o.cy + o.size / 2 <= 1 - MARGIN + 1e-9
        for a, b in combinations(objs, 2):
            need = (a.size + b.size) / 2 + GAP - 1e-9
            assert abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need


def test_rendered_objects_share_no_pixel():
    for seed in range(100):
        scene = sample_scene(seed, num_objects=4)
        masks = [coverage(o.shape, o.cx * 64, o.cy * 64, o.size * 64, 64, 64) > 0 for o in scene.objects]
        for a, b in combinations(masks, 2):
            assert not (a & b).any()


def test_caption_format():
    scene = scene_from_objects([("red", "circle"), ("blue", "square"), ("red", "circle")], rng=0)
    assert scene.caption == "a red circle and a blue square and a red circle"
    assert scene_from_objects([("green", "triangle")], rng=0).caption == "a green triangle"
    assert caption_for([("yellow", "square"), ("purple", "circle")]) == "a yellow square and a purple circle"
    word = "(" + "|".join(COLOURS) + ") (" + "|".join(SHAPES) + ")"
    pattern = re.compile(f"^a {word}( and a {word})*$")
    for seed in range(100):
        scene = sample_scene(seed)
        assert pattern.match(scene.caption), scene.caption
        assert scene.caption.count(" and ") == len(scene.objects) - 1


def test_scene_from_objects_keeps_order_and_checks_input():
    wanted = [("orange", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle")]
    assert scene_from_objects(wanted, rng=1).labels == wanted
    with pytest.raises(ValueError):
        scene_from_objects([("pink", "circle")])
    with pytest.raises(ValueError):
        scene_from_objects([("red", "star")])
    with pytest.raises(ValueError):
        scene_from_objects([("red", "circle")] * 5)
    with pytest.raises(ValueError):
        scene_from_objects([])


def test_render_pixels():
    scene = scene_from_objects([("red", "circle"), ("blue", "triangle"), ("yellow", "square")], rng=2)
    image = render(scene)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    assert tuple(image[0, 0]) == BACKGROUND  # corners are always background (MARGIN)
    for o in scene.objects:
        # the triangle's centroid lies s/6 below its box centre; sample there, well inside every shape
        y = int((o.cy + (o.size / 6 if o.shape == "triangle" else 0)) * 64)
        assert tuple(image[y, int(o.cx * 64)]) == PALETTE[o.colour]
    big = render(scene, size=128)
    assert big.shape == (128, 128, 3)
    pil = render_pil(scene, size=96)
    assert isinstance(pil, Image.Image) and pil.size == (96, 96) and pil.mode == "RGB"


def test_object_geometry_in_pixels():
    obj = scene_from_objects([("red", "square")], rng=0).objects[0]
    x0, y0, x1, y1 = obj.bbox(64)
    assert x1 - x0 == pytest.approx(obj.size * 64) and y1 - y0 == pytest.approx(obj.size * 64)
    assert obj.centre(128) == pytest.approx((obj.cx * 128, obj.cy * 128))
    mask = render(scene_from_objects([("red", "square")], rng=0)) != BACKGROUND
    ys, xs = np.nonzero(mask.any(-1))
    # every touched pixel lies within the (pixel-rounded) bounding square
    assert xs.min() >= int(x0) and xs.max() < x1 + 1 and ys.min() >= int(y0) and ys.max() < y1 + 1
