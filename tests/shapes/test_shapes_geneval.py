"""GenEval in the shapes world: its suite (`prompts/shapes/geneval.jsonl`) and the exact detector as GenEval's judge,
checked on rendered scenes whose answers are known."""

from collections import Counter

import pytest

from benchmark.cli import main
from benchmark.domains import prompts_dir
from benchmark.geneval.rules import COLOURS, spec_problem
from benchmark.metrics import MetricContext, get_metric
from benchmark.shapes.geometry import SHAPES
from benchmark.shapes.suites import GENEVAL_TAGS, geneval_suite
from benchmark.shapes.world import COLOURS as WORLD_COLOURS
from benchmark.shapes.world import Scene, SceneObject, render_pil, scene_from_objects
from benchmark.suites import load_suite

SIZE = 16 / 64
CORNERS = [(0.25, 0.25), (0.75, 0.75), (0.75, 0.25), (0.25, 0.75)]  # room for four objects, far apart
# where the clause's object (first) and its target (second) stand for each relation
PLACES = {"left of": ((0.25, 0.5), (0.75, 0.5)), "right of": ((0.75, 0.5), (0.25, 0.5)),
          "above": ((0.5, 0.25), (0.5, 0.75)), "below": ((0.5, 0.75), (0.5, 0.25))}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@pytest.fixture(scope="module")
def metric():
    metric = get_metric("geneval")
    metric.setup(MetricContext(domain="shapes"))
    return metric


@pytest.fixture(scope="module")
def suite():
    return load_suite("geneval", prompts_dir("shapes"))


def scene(objects, places=None) -> Scene:
    """(colour, shape) objects at the given centres (default: the corners, in order)."""
    places = places or CORNERS
    return Scene(tuple(SceneObject(c, s, x, y, SIZE) for (c, s), (x, y) in zip(objects, places)))


def right_scene(spec, relation=None, seed=0):
    """A scene that satisfies the clauses: every include clause's objects (colour as asked, else a world colour),
    laid out at random (`seed`); a position clause's object placed `relation` (default: as asked) of its target."""
    include = spec["include"]
    objects = [((c.get("color") or WORLD_COLOURS[i]), c["class"]) for i, c in enumerate(include)
               for _ in range(c["count"])]
    positioned = [c for c in include if "position" in c]
    if positioned:
        asked, target = positioned[0]["position"]
        here, there = PLACES[relation or asked]
        return scene(objects, [there, here] if target == 0 else [here, there])
    return scene_from_objects(objects, seed)


def verdicts(metric, scenes, spec):
    return [(row["geneval_correct"], row["geneval_reason"])
            for row in metric.score([render_pil(s) for s in scenes], [{"geneval": spec}] * len(scenes))]


def test_the_suite_holds_the_six_tasks_in_the_worlds_words(suite):
    counts = Counter(p.category for p in suite)
    assert set(counts) == set(GENEVAL_TAGS) and all(18 <= n <= 30 for n in counts.values())
    assert [p.id for p in suite] == [f"geneval/{i:04d}" for i in range(len(suite))]
    assert [p.category for p in suite[:6]] == list(GENEVAL_TAGS)  # tasks in turn: --limit 12 covers all six
    assert len({p.prompt for p in suite if p.category != "colors"}) == len(suite) - counts["colors"]
    for p in suite:
        spec = p.extra["geneval"]
        assert spec_problem(spec) is None and spec["tag"] == p.category and spec["classes"] == "shapes"
        words = p.prompt.split()
        assert all(o.name in words for o in p.objects), p.id  # plurals for counts: "three yellow squares"
        assert [o.count for o in p.objects] == [c["count"] for c in spec["include"]]
        assert {w for w in words if w in COLOURS} <= set(WORLD_COLOURS)
        assert {c["class"] for c in spec["include"] + spec.get("exclude", [])} <= set(SHAPES)
        if p.category == "counting":
            (clause,), (exclude,) = spec["include"], spec["exclude"]
            assert exclude == {"class": clause["class"], "count": clause["count"] + 1}  # exactly that many
            assert words[0] in ("two", "three", "four")
    assert geneval_suite() == geneval_suite()  # deterministic (the committed file: test_instruments)


def test_the_domain_judges_with_the_exact_detector(metric):
    assert metric.judge.name == "shapes-exact" and metric.judge.colours is None
    assert "exact detector" in metric.convention and "no CLIP" in metric.convention
    assert "shrunk by 0.1" in metric.convention  # GenEval's rules, unchanged


def test_every_suite_prompt_is_judged_right_on_a_scene_that_answers_it(metric, suite):
    scenes = [right_scene(p.extra["geneval"], seed=i) for i, p in enumerate(suite)]  # random layouts and sizes
    records = [{"suite": "geneval", "prompt_id": p.id, "objects": []} for p in suite]  # clauses from the suite line
    rows = metric.score([render_pil(s) for s in scenes], records)
    wrong = [(p.id, p.prompt, r["geneval_reason"]) for p, r in zip(suite, rows) if r["geneval_correct"] != 1.0]
    assert not wrong


def first(suite, tag, test=lambda p: True):
    return next(p.extra["geneval"] for p in suite if p.category == tag and test(p))


def test_single_and_two_objects_fail_when_an_object_is_missing(metric, suite):
    single = first(suite, "single_object", lambda p: p.prompt == "a red circle")
    assert verdicts(metric, [scene([("red", "circle")]), scene([("red", "square")]),
                             scene([("blue", "circle")])], single) == [
        (1.0, ""), (0.0, "expected circle>=1, found 0"), (1.0, "")]  # colour is the colors task's
    two = first(suite, "two_object")
    a, b = (c["class"] for c in two["include"])
    assert verdicts(metric, [scene([("red", a), ("blue", b)]), scene([("red", a)]), scene([("red", a), ("blue", a)])],
                    two) == [(1.0, ""), (0.0, f"expected {b}>=1, found 0"), (0.0, f"expected {b}>=1, found 0")]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_counting_needs_the_exact_count(metric, suite, count):
    spec = first(suite, "counting", lambda p: p.objects[0].count == count)
    shape = spec["include"][0]["class"]
    other = next(s for s in SHAPES if s != shape)
    fewer, exact, more = ([("red", shape)] * n for n in (count - 1, count, count + 1))
    scenes = [scene(exact), scene(exact[:1] + [("blue", shape)] * (count - 1)), scene(fewer + [("red", other)])]
    expected = [(1.0, ""), (1.0, ""), (0.0, f"expected {shape}>={count}, found {count - 1}")]
    if count < 4:  # a scene holds at most four objects
        scenes.append(scene(more))
        expected.append((0.0, f"expected {shape}<{count + 1}, found {count + 1}"))
    assert verdicts(metric, scenes, spec) == expected


def test_colours_are_the_blobs_palette_colours(metric, suite):
    for colour in WORLD_COLOURS:
        spec = first(suite, "colors", lambda p: p.objects[0].attribute == colour)
        shape = spec["include"][0]["class"]
        other = next(c for c in WORLD_COLOURS if c != colour)
        assert verdicts(metric, [scene([(colour, shape)]), scene([(other, shape)])], spec) == [
            (1.0, ""), (0.0, f"expected {colour} {shape}, found {other} {shape}")]


def test_colour_attribution_fails_on_swapped_colours(metric, suite):
    spec = first(suite, "color_attr")
    (ca, a), (cb, b) = ((c["color"], c["class"]) for c in spec["include"])
    assert verdicts(metric, [scene([(ca, a), (cb, b)]), scene([(cb, a), (ca, b)]), scene([(ca, a)])], spec) == [
        (1.0, ""), (0.0, f"expected {ca} {a}, found {cb} {a}; expected {cb} {b}, found {ca} {b}"),
        (0.0, f"expected {b}>=1, found 0")]


@pytest.mark.parametrize("relation", list(PLACES))
def test_position_fails_on_the_wrong_relation_or_a_missing_target(metric, suite, relation):
    spec = first(suite, "position", lambda p: f" {relation} " in p.prompt)
    target, moved = (c["class"] for c in spec["include"])
    sideways = next(r for r in PLACES if r not in (relation, OPPOSITE[relation]))
    scenes = [right_scene(spec), right_scene(spec, OPPOSITE[relation]), right_scene(spec, sideways),
              scene([("red", moved)])]
    assert verdicts(metric, scenes, spec) == [
        (1.0, ""), (0.0, f"expected {moved} {relation} {target}, found {OPPOSITE[relation]}"),
        (0.0, f"expected {moved} {relation} {target}, found {sideways}"),
        (0.0, f"expected {target}>=1, found 0; no target for {moved} to be {relation} {target}")]


def test_ls_suites_lists_the_shapes_geneval_suite(capsys):
    assert main(["ls", "suites"]) == 0
    shapes = capsys.readouterr().out.split(str(prompts_dir("shapes")))[1]
    line = next(line for line in shapes.splitlines() if line.split()[:1] == ["geneval"])
    assert "135 prompts" in line and "GenEval's six tasks" in line and "color_attr" in line
