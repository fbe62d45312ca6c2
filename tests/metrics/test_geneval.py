"""GenEval's rules on hand-made detections, the metric on stub and tiny random judges (built offline)."""

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_metric_models import (COCO_SPELLINGS, random_images, save_mask2former, save_open_clip, save_owlv2,
                                tiny_mask2former)

from benchmark.geneval.rules import (CLASSES, COLOURS, Detected, colour_requests, judge, keep, relation, spec_problem,
                                     summarize)
from benchmark.metrics import MetricContext, MetricUnavailable, get_metric
from benchmark.metrics.geneval import (GenEval, Judge, Mask2FormerDetector, class_names, colour_crop,
                                       colour_templates)


def box_at(x, y, w=10, h=10, score=0.95, mask=None):
    return Detected((x, y, x + w, y + h), score, mask)


def dets(*scores, name="clock"):
    """Detections of one class, side by side, with these scores."""
    return {name: [box_at(20 * i, 0, score=s) for i, s in enumerate(scores)]}


ONE = {"tag": "single_object", "include": [{"class": "clock", "count": 1}]}
TWO_CLOCKS = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
              "exclude": [{"class": "clock", "count": 3}]}
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
DOG_RIGHT_OF_BEAR = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                                    {"class": "dog", "count": 1, "position": ["right of", 0]}]}


# ---- detections kept -------------------------------------------------------------------------------------------

def test_keep_is_strictly_above_0_3_and_0_9_for_counting():
    found = dets(0.95, 0.9, 0.5, 0.3, 0.29)
    assert [d.score for d in keep(found, "two_object")["clock"]] == [0.95, 0.9, 0.5]  # 0.3 itself is out
    assert [d.score for d in keep(found, "counting")["clock"]] == [0.95]  # 0.9 itself is out
    assert keep(dets(0.3, 0.1), "single_object") == {}  # a class with nothing kept is left out


def test_keep_at_most_16_per_class_best_first():
    scores = [0.31 + 0.03 * i for i in range(20)]  # 0.31 .. 0.88, all above 0.3
    shuffled = [scores[i] for i in np.random.default_rng(0).permutation(20)]
    kept = keep({**dets(*shuffled), **dets(0.5, name="dog")}, "colors")
    assert [d.score for d in kept["clock"]] == sorted(scores, reverse=True)[:16]  # the 4 weakest dropped
    assert len(kept["dog"]) == 1  # per class


def test_keep_orders_tied_scores_as_genevals_argsort_reversed():
    """GenEval takes `np.argsort(scores)[::-1]`: among equal scores the later detection comes first, which decides
    which of two tied objects a colour or position clause reads."""
    found = {"clock": [Detected((i, 0, i + 1, 1), score) for i, score in enumerate([0.5, 0.8, 0.5, 0.8, 0.4])]}
    kept = [d.box[0] for d in keep(found, "colors")["clock"]]
    scores = np.array([0.5, 0.8, 0.5, 0.8, 0.4], dtype=np.float32)
    assert kept == [int(i) for i in np.argsort(scores)[::-1]] == [3, 1, 2, 0, 4]  # a stable sort: [1, 3, 0, 2, 4]


def test_the_detector_passes_scores_unrounded_to_the_thresholds():
    """A score just above a threshold is kept: GenEval compares its detector's scores as they are (rounding to 6
    decimals, as transformers' post-processing does, would drop 0.3000004)."""
    from types import SimpleNamespace

    from benchmark.metrics.geneval import Mask2FormerDetector

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    found = Mask2FormerDetector._per_class(SimpleNamespace(classes={0: "clock"}), torch.tensor([0, 0]),
                                           torch.tensor([0.3000004, 0.9000004], dtype=torch.float64), masks)
    assert [d.score for d in found["clock"]] == [0.3000004, 0.9000004]
    assert len(keep(found, "two_object")["clock"]) == 2 and len(keep(found, "counting")["clock"]) == 1


# ---- include / exclude -----------------------------------------------------------------------------------------

def test_include_needs_count_kept_objects():
    assert judge(ONE, keep(dets(0.8), "single_object")) == (True, "")
    verdict = judge(TWO_CLOCKS, keep(dets(0.95, 0.85), "counting"))  # 0.85: kept for 0.3 tasks, not for counting
    assert verdict == (False, "expected clock>=2, found 1")
    assert judge(ONE, {}) == (False, "expected clock>=1, found 0")


def test_exclude_fails_at_count_kept_objects():
    assert judge(TWO_CLOCKS, keep(dets(0.95, 0.92, 0.5), "counting")) == (True, "")  # the 0.5 one is not kept
    assert judge(TWO_CLOCKS, keep(dets(0.95, 0.92, 0.91), "counting")) == (False, "expected clock<3, found 3")
    # the 16 kept objects at most are what an exclude clause counts
    many = {"tag": "two_object", "include": [{"class": "clock", "count": 1}],
            "exclude": [{"class": "clock", "count": 17}]}
    assert judge(many, keep(dets(*[0.5] * 20), "two_object")).correct
    many["exclude"][0]["count"] = 16
    assert judge(many, keep(dets(*[0.5] * 20), "two_object")) == (False, "expected clock<16, found 16")


def test_every_failed_clause_is_reported():
    spec = {"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}]}
    assert judge(spec, {}) == (False, "expected bench>=1, found 0; expected sports ball>=1, found 0")


# ---- colour ----------------------------------------------------------------------------------------------------

def test_colour_is_asked_of_the_first_count_objects_only_when_the_count_holds():
    spec = {"tag": "color_attr", "include": [{"class": "car", "count": 2, "color": "red"},
                                             {"class": "cup", "count": 1, "color": "blue"}]}
    kept = keep({**dets(0.9, 0.8, 0.7, name="car")}, "color_attr")
    assert colour_requests(spec, kept) == {"car": 2}  # the third car is never classified; no cup: no crop
    assert judge(spec, kept, {"car": ["red", "red"]}) == (False, "expected cup>=1, found 0")


def test_colour_every_one_of_the_first_count_objects_must_have_it():
    kept = keep(dets(0.9, 0.8, 0.7, name="car"), "colors")
    assert judge(RED_CAR, kept, {"car": ["red"]}) == (True, "")
    assert judge(RED_CAR, kept, {"car": ["blue"]}) == (False, "expected red car, found blue car")
    two = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}
    assert judge(two, kept, {"car": ["red", "red"]}).correct
    # one red of two: not enough, whatever the third (unclassified) car would be
    assert judge(two, kept, {"car": ["blue", "red"]}) == (False, "expected red car>=2, found 1 red car, 1 blue car")
    with pytest.raises(ValueError, match="colour_requests"):
        judge(two, kept, {"car": ["red"]})


# ---- position --------------------------------------------------------------------------------------------------

def test_the_four_relations():
    a = (0, 0, 10, 10)
    # offset 30, shrunk by 0.1 * (10 + 10) = 2 to 28, over the offset's length 30: 0.93 > 0.5
    assert relation(a, (30, 0, 40, 10)) == {"left of"}
    assert relation((30, 0, 40, 10), a) == {"right of"}
    assert relation(a, (0, 30, 10, 40)) == {"above"}  # image y grows downwards
    assert relation((0, 30, 10, 40), a) == {"below"}
    # diagonal: (18, 18) / 28.28 = 0.64 on both axes
    assert relation((20, 20, 30, 30), a) == {"right of", "below"}


def test_the_shrink_by_a_tenth_of_the_summed_sizes():
    # offset (-10, -8): unshrunk (-0.78, -0.62) would be left of and above; shrunk by 2: (-8, -6) / 12.8 =
    # (-0.62, -0.47): left of only
    assert relation((0, 0, 10, 10), (10, 8, 20, 18)) == {"left of"}
    # large objects: offset 30 shrinks by 0.1 * (100 + 100) = 20 to 10, 10 / 30 = 0.33: no relation
    assert relation((0, 0, 100, 10), (30, 0, 130, 10)) == set()


def test_no_relation_below_1e_3():
    assert relation((0, 0, 10, 10), (1, 1, 11, 11)) == set()  # offsets (-1, -1) shrink to 0
    # point boxes (no size, no shrink): the direction alone would say "right of"; under 1e-3 it says nothing
    assert relation((0.0005, 0, 0.0005, 0), (0, 0, 0, 0)) == set()
    assert relation((0.002, 0, 0.002, 0), (0, 0, 0, 0)) == {"right of"}


def test_position_verdicts_and_reasons():
    bear = {"teddy bear": [box_at(0, 0)]}
    assert judge(DOG_RIGHT_OF_BEAR, {**bear, "dog": [box_at(30, 0)]}) == (True, "")
    assert judge(DOG_RIGHT_OF_BEAR, {**bear, "dog": [box_at(0, -30)]}) == (
        False, "expected dog right of teddy bear, found above")
    assert judge(DOG_RIGHT_OF_BEAR, {**bear, "dog": [box_at(1, 1)]}) == (
        False, "expected dog right of teddy bear, found no relation")
    assert judge(DOG_RIGHT_OF_BEAR, {**bear, "dog": [box_at(-30, -30)]}) == (
        False, "expected dog right of teddy bear, found left of and above")
    assert judge(DOG_RIGHT_OF_BEAR, {"dog": [box_at(30, 0)]}) == (
        False, "expected teddy bear>=1, found 0; no target for dog to be right of teddy bear")


def test_position_every_object_against_every_target_object():
    spec = {"tag": "position", "include": [{"class": "cup", "count": 2},
                                           {"class": "dog", "count": 2, "position": ["left of", 0]}]}
    cups = [box_at(100, 0, score=0.9), box_at(140, 0, score=0.8)]
    both_left = {"cup": cups, "dog": [box_at(0, 0, score=0.9), box_at(40, 0, score=0.8)]}
    assert judge(spec, both_left).correct
    # the second dog stands between the cups: left of one, right of the other
    between = {"cup": cups, "dog": [box_at(0, 0, score=0.9), box_at(120, 0, score=0.8)]}
    assert judge(spec, between) == (False, "expected dog left of cup, found right of")
    # a third cup on the far left is beyond the clause's count (the 2 most confident): it takes no part
    extra_cup = {"cup": cups + [box_at(-100, 0, score=0.5)], "dog": both_left["dog"]}
    assert judge(spec, keep(extra_cup, "position")).correct


def test_position_is_checked_only_when_count_and_colour_hold():
    spec = {"tag": "color_attr", "include": [{"class": "cup", "count": 1},
                                             {"class": "dog", "count": 1, "color": "red", "position": ["left of", 0]}]}
    kept = {"cup": [box_at(0, 0)], "dog": [box_at(30, 0)]}  # the dog is right of the cup
    assert judge(spec, kept, {"dog": ["blue"]}) == (False, "expected red dog, found blue dog")  # no position reason
    assert judge(spec, kept, {"dog": ["red"]}) == (False, "expected dog left of cup, found right of")


# ---- summary ---------------------------------------------------------------------------------------------------

def test_summary_task_means_unweighted_overall_and_prompts_with_a_correct_image():
    rows = [("p0", "single_object", 1), ("p0", "single_object", 1), ("p1", "single_object", 0),
            ("p1", "single_object", 1),  # single_object: 3 / 4
            ("p2", "counting", 0), ("p2", "counting", 0), ("p2", "counting", 0), ("p2", "counting", 0),  # 0
            {"prompt_id": "p3", "category": "position", "geneval_correct": 1.0},  # 1 / 1
            ("p4", "position", float("nan")), ("p5", "objects", None)]  # no verdict: left out
    summary = summarize(rows)
    assert summary["tasks"] == {"single_object": 0.75, "counting": 0.0, "position": 1.0}
    assert summary["overall"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)  # not the image mean 4 / 9
    assert summary["correct_images"] == pytest.approx(4 / 9)
    assert summary["prompts"] == 4 and summary["prompts_any_correct"] == 0.75  # p0, p1, p3


# ---- clauses checked when a suite loads (their line numbers: tests/harness/test_geneval_suite.py) ---------------

@pytest.mark.parametrize("spec, message", [
    ({"tag": "two_object", "include": [{"class": "clock", "count": 1}, {"class": "dragon", "count": 1}]},
     "include clause 1 names class 'dragon'"),
    ({"tag": "position", "include": [{"class": "cup", "count": 1},
                                     {"class": "dog", "count": 1, "position": ["left of", 2]}]},
     "position index 2 points to no clause"),
    ({"tag": "position", "include": [{"class": "cup", "count": 1, "position": ["left of", 0]}]},
     "must point to an earlier include clause"),
    ({"tag": "position", "include": [{"class": "cup", "count": 1},
                                     {"class": "dog", "count": 1, "position": ["beside", 0]}]}, "relation one of"),
    ({"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "teal"}]}, "color 'teal'"),
    ({"tag": "counting", "include": [{"class": "cup", "count": 0}]}, "count must be a whole number"),
    ({"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "mug", "count": 3}]},
     "exclude clause 0 names class 'mug'"),
])
def test_spec_problems(spec, message):
    assert message in spec_problem(spec)


def test_the_class_list_is_cocos_80():
    assert len(CLASSES) == 80 == len(set(CLASSES))
    assert {"computer mouse", "tv remote", "hair drier", "teddy bear"} <= set(CLASSES)
    assert all(spec_problem(spec) is None for spec in (RED_CAR, TWO_CLOCKS, DOG_RIGHT_OF_BEAR))


# ---- the metric on a stub judge --------------------------------------------------------------------------------

class StubDetector:
    def __init__(self, per_image):
        self.per_image, self.calls = per_image, []

    def detect(self, images):
        self.calls.append(len(images))
        return self.per_image[:len(images)]


class StubColours:
    """Colour = the crop's mean pixel's nearest of red/blue/white; counts its calls."""

    def __init__(self):
        self.calls, self.names = [], []

    def classify(self, crops, names):
        self.calls.append(len(crops))
        self.names.append(list(names))
        palette = {"red": (255, 0, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
        out = []
        for crop in crops:
            mean = np.asarray(crop, dtype=float).reshape(-1, 3).mean(0)
            out.append(min(palette, key=lambda c: np.abs(mean - palette[c]).sum()))
        return out


def red_and_blue_image():
    image = np.full((40, 80, 3), 255, np.uint8)
    image[10:30, 5:25] = (255, 0, 0)  # red square on the left
    image[10:30, 50:70] = (0, 0, 255)  # blue square on the right
    return Image.fromarray(image)


def test_metric_from_stub_detections_and_colours_in_one_call():
    car_left, car_right = box_at(5, 10, 20, 20, 0.9), box_at(50, 10, 20, 20, 0.8)
    per_image = [{"car": [car_left]}, {"car": [car_right]}, {"car": [car_left, car_right]}, {}]
    colours = StubColours()
    metric = GenEval(Judge("stub", StubDetector(per_image), colours, "hand-made boxes"))
    metric.setup(MetricContext())
    two_red = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}
    records = [{"geneval": RED_CAR}, {"geneval": RED_CAR}, {"geneval": two_red}, {"geneval": RED_CAR}]
    scores = metric.score([red_and_blue_image()] * 4, records)
    assert [s["geneval_correct"] for s in scores] == [1.0, 0.0, 0.0, 0.0]
    assert [s["geneval_reason"] for s in scores] == [
        "", "expected red car, found blue car", "expected red car>=2, found 1 red car, 1 blue car",
        "expected car>=1, found 0"]
    assert colours.calls == [4]  # every crop of the batch in one call (1 + 1 + 2; none for the image without a car)
    assert metric.judge.detector.calls == [4]
    assert metric.convention.startswith("GenEval-compatible (judge=stub): hand-made boxes; GenEval's rules")


def test_metric_finds_the_clauses_by_prompt_id_or_derives_them_from_objects():
    per_image = [{"bird": [box_at(0, 0)], "couch": [box_at(40, 0)]}] * 3
    metric = GenEval(Judge("stub", StubDetector(per_image), StubColours()))
    metric.setup(MetricContext())
    records = [
        # no clauses in the record: those of prompts/geneval.jsonl's line "a photo of a bird left of a couch"
        {"suite": "geneval", "prompt_id": "geneval/00400", "objects": [{"name": "couch"}, {"name": "bird"}]},
        {"suite": "two_object", "prompt_id": "x", "objects": [{"name": "bird"}, {"name": "couch"}]},
        {"suite": "two_object", "prompt_id": "y", "objects": [{"name": "frog"}, {"name": "couch"}]},
    ]
    scores = metric.score([Image.new("RGB", (64, 64))] * 3, records)
    assert scores[0] == {"geneval_correct": 1.0, "geneval_reason": ""}
    assert scores[1] == {"geneval_correct": 1.0, "geneval_reason": ""}  # both objects are COCO classes
    assert math.isnan(scores[2]["geneval_correct"])  # no verdict, never a zero
    assert scores[2]["geneval_reason"] == "not judged: 'frog' is not one of GenEval's 80 classes"
    assert metric.judge.detector.calls == [2]  # only the judged images are detected


def test_colour_crop_pastes_the_mask_on_grey_and_crops_the_box():
    image = red_and_blue_image()
    mask = np.zeros((40, 80), bool)
    mask[10:30, 5:15] = True  # the left half of the red square
    crop = colour_crop(image, Detected((5, 10, 25, 30), 0.9, mask))
    assert crop.size == (20, 20)
    pixels = np.asarray(crop)
    assert (pixels[:, :10] == (255, 0, 0)).all() and (pixels[:, 10:] == (0x99, 0x99, 0x99)).all()
    boxed = np.asarray(colour_crop(image, Detected((0, 0, 30, 40), 0.9)))  # no mask: the box as it is
    assert boxed.shape == (40, 30, 3) and (boxed[15, 10] == (255, 0, 0)).all() and (boxed[0, 0] == 255).all()
    assert colour_crop(image, Detected((79.6, 39.6, 90, 50), 0.9)).size == (1, 1)  # clamped, never empty


def test_colour_templates_are_genevals():
    assert [t.format("red") for t in colour_templates("fire hydrant")] == [
        "a photo of a red fire hydrant", "a photo of a red-colored fire hydrant", "a photo of a red object"]
    assert COLOURS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


def test_detector_labels_map_to_geneval_names():
    coco = {i: COCO_SPELLINGS.get(n, n) for i, n in enumerate(CLASSES)}
    assert class_names(coco) == dict(enumerate(CLASSES))  # "mouse" -> "computer mouse", ...
    assert class_names({i: f"LABEL_{i}" for i in range(80)}) == dict(enumerate(CLASSES))  # COCO's order
    assert class_names({0: "person", 1: "tree", 2: "sofa"}) == {0: "person", 2: "couch"}
    with pytest.raises(ValueError, match="COCO"):
        class_names({0: "circle", 1: "square"})


# ---- the metric on tiny random judges --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval_weights")
    return {"detector": save_mask2former(root / "mask2former", dominant="car"), "clip": save_open_clip(root / "clip"),
            "owlv2": save_owlv2(root / "owlv2")}


@pytest.fixture(scope="module")
def tiny_geneval(weights):
    metric = get_metric("geneval")
    metric.setup(MetricContext(model_paths={"geneval.detector": str(weights["detector"]),
                                            "geneval.clip": str(weights["clip"])}))
    return metric


RECORDS = [{"geneval": RED_CAR}, {"geneval": TWO_CLOCKS}, {"geneval": DOG_RIGHT_OF_BEAR}]


def test_tiny_mask2former_and_clip_end_to_end(tiny_geneval):
    images = random_images(3, size=(64, 48))
    scores = tiny_geneval.score(images, RECORDS)
    assert [set(s) for s in scores] == [{"geneval_correct", "geneval_reason"}] * 3
    assert all(s["geneval_correct"] in (0.0, 1.0) for s in scores)
    # the tiny model sees cars only, so the clock and dog prompts fail on their counts
    assert scores[1]["geneval_reason"] == "expected clock>=2, found 0"
    assert scores[2]["geneval_reason"] == "expected teddy bear>=1, found 0; expected dog>=1, found 0"
    # its cars are confident: the colour was asked, and CLIP's answer is one of the ten
    assert scores[0]["geneval_reason"] == "" or scores[0]["geneval_reason"].split(", found ")[1].split()[0] in COLOURS
    assert tiny_geneval.convention.startswith("GenEval-compatible (judge=mask2former)")


def test_instance_segments_equal_transformers_post_processing():
    """The hand-written post-processing against transformers' own, on logits made to hit every branch: a confident
    query, one whose class score passes 0.3 but not once times its mask score, one with an empty mask, one query
    with two classes over 0.3, and images of other sizes than the 384-pixel input."""
    from types import SimpleNamespace

    from transformers import Mask2FormerImageProcessor

    from benchmark.metrics.geneval import instance_segments

    torch.manual_seed(3)
    batch, queries, classes = 3, 6, 80
    class_logits = torch.randn(batch, queries, classes + 1)
    class_logits[:, 0, 5] += 12.0  # confident
    class_logits[:, 1, :] = -10.0
    class_logits[:, 1, 7] = math.log(0.35 / 0.65) + math.log(classes) - 10.0  # ~0.35: passes before its mask score
    class_logits[:, 2, 9] += 12.0  # confident, but its mask will be empty
    class_logits[:, 3, :] = -10.0
    class_logits[:, 3, 11] = class_logits[:, 3, 12] = 2.0  # two classes of one query over 0.3
    mask_logits = torch.randn(batch, queries, 24, 24)
    mask_logits[:, 2] = -5.0
    sizes = [(48, 64), (100, 75), (512, 512)]
    reference = Mask2FormerImageProcessor().post_process_instance_segmentation(
        SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits), threshold=0.3,
        target_sizes=sizes, return_binary_maps=True)
    ours = instance_segments(class_logits, mask_logits, 0.3, sizes)
    assert sum(len(r["segments_info"]) for r in reference) >= 9  # enough instances to compare
    for (labels, scores, masks), expected, size in zip(ours, reference, sizes):
        segments = expected["segments_info"]
        assert labels.tolist() == [s["label_id"] for s in segments]
        assert [round(score, 6) for score in scores.tolist()] == [s["score"] for s in segments]  # (it rounds)
        assert 9 not in labels.tolist() and 7 not in labels.tolist()  # empty mask; 0.35 times its mask score
        assert masks.shape == (len(segments), *size) and masks.dtype == torch.bool
        assert torch.equal(masks, expected["segmentation"].to(torch.bool))


def test_tiny_mask2former_detections_carry_boxes_from_their_masks():
    model, processor = tiny_mask2former(dominant="car")
    found = Mask2FormerDetector(model, processor).detect(random_images(2, size=(64, 48)))
    assert len(found) == 2 and set(found[0]) == {"car"}
    for car in found[0]["car"]:
        assert car.mask.shape == (48, 64) and car.mask.any() and car.score >= 0.3
        rows, cols = np.nonzero(car.mask)
        assert car.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_owlv2_judge_is_its_own_metric(weights):
    metric = get_metric("geneval_owlv2")
    metric.setup(MetricContext(model_paths={"geneval_owlv2.detector": str(weights["owlv2"]),
                                            "geneval_owlv2.clip": str(weights["clip"])}))
    scores = metric.score(random_images(2, size=(64, 48)), RECORDS[:2])
    assert all(set(s) == {"geneval_owlv2_correct", "geneval_owlv2_reason"} for s in scores)
    assert all(s["geneval_owlv2_correct"] in (0.0, 1.0) for s in scores)
    assert metric.convention.startswith("GenEval-compatible (judge=owlv2)")
    assert set(metric.columns) == {"geneval_owlv2_correct"} and metric.name != get_metric("geneval").name


def test_owlv2_boxes_are_suppressed_per_class():
    from benchmark.metrics.geneval import Owlv2BoxDetector
    from benchmark.metrics.presence import Detection

    class Raw:
        def detect(self, images, queries):
            assert queries == [list(CLASSES)] * len(images)
            return [[Detection("cat", 0.9, (0.0, 0.0, 0.5, 0.5)), Detection("cat", 0.8, (0.02, 0.0, 0.5, 0.5)),
                     Detection("dog", 0.7, (0.0, 0.0, 0.5, 0.5)), Detection("cat", 0.6, (0.6, 0.6, 0.9, 0.9)),
                     Detection("cat", 0.2, (0.6, 0.0, 0.9, 0.3))]]

    found = Owlv2BoxDetector(Raw()).detect([Image.new("RGB", (100, 50))])[0]
    assert [d.score for d in found["cat"]] == pytest.approx([0.9, 0.6])  # overlapping cat merged, 0.2 under 0.3
    assert found["cat"][0].box == pytest.approx((0, 0, 50, 50))  # in pixels of the square the image was padded to
    assert len(found["dog"]) == 1 and found["dog"][0].mask is None  # another class is not suppressed


def test_missing_weights_one_line_naming_what_to_fetch(tmp_path):
    metric = get_metric("geneval")
    with pytest.raises(MetricUnavailable) as err:
        metric.setup(MetricContext(model_paths={"geneval.detector": str(tmp_path / "none"),
                                                "geneval.clip": str(tmp_path)}))  # a folder without weights
    message = str(err.value)
    assert "\n" not in message
    assert "hf download facebook/mask2former-swin-small-coco-instance" in message and "geneval.detector=DIR" in message
    assert "hf download timm/vit_large_patch14_clip_224.openai" in message and "geneval.clip=DIR" in message


def test_the_reason_is_stored_in_the_record_and_only_correct_is_a_column(tmp_path):
    from benchmark.scoring import score_missing
    from benchmark.records import build_samples, write_image
    from benchmark.report import score_columns

    per_image = [{"car": [box_at(5, 10, 20, 20, 0.9)]}]
    metric = GenEval(Judge("stub", StubDetector(per_image), StubColours()))
    metric.setup(MetricContext())
    record = {"method": "plain", "prompt_id": "geneval/00001", "suite": "geneval", "category": "colors",
              "prompt": "a photo of a red car", "objects": [{"name": "car", "attribute": "red"}], "seed": 0,
              "geneval": {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}]}}
    write_image(tmp_path / "images" / "plain" / "geneval_00001" / "0000.png", red_and_blue_image(), record)
    assert score_missing(tmp_path, [metric], progress=False) == 1
    rows = build_samples(tmp_path)
    assert rows[0]["geneval_correct"] == 0.0 and rows[0]["geneval_reason"] == "expected blue car, found red car"
    assert score_columns(rows) == ["geneval_correct"]


# ---- batching --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_timing(tiny_geneval):
    """(speed-up of scoring 32 images in one call over one by one, batched verdicts, one-by-one verdicts). Each way
    is timed three times, interleaved, and its best time kept, so that a busy machine slows both alike; on one thread,
    since a shared machine stalls the batched call's multi-threaded kernels more than the small ones."""
    images = random_images(32, size=(64, 64), seed=1)
    records = [{"geneval": RED_CAR}] * 32
    tiny_geneval.score(images[:2], records[:2])  # warm-up
    batched_seconds, single_seconds = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            start = time.perf_counter()
            batched = tiny_geneval.score(images, records)
            batched_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            single = [tiny_geneval.score([image], [record])[0] for image, record in zip(images, records)]
            single_seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    ratio = min(single_seconds) / min(batched_seconds)
    print(f"geneval on tiny judges, 32 images: batched {min(batched_seconds):.2f} s, one by one "
          f"{min(single_seconds):.2f} s: {ratio:.1f}x")
    return ratio, batched, single


@pytest.mark.slow
def test_batched_scoring_is_faster_than_image_by_image(batch_timing):
    ratio, batched, single = batch_timing
    assert [s["geneval_correct"] for s in batched] == [s["geneval_correct"] for s in single]
    assert ratio >= 1.5


@pytest.mark.perf
def test_batched_scoring_is_three_times_faster(batch_timing):
    assert batch_timing[0] >= 3.0
