import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

from benchmark.cli import main
from benchmark.metrics import Metric, MetricContext, MetricUnavailable, get_metric
from benchmark.metrics.presence import Detection, Owlv2Detector, Presence, count_objects, presence_of
from sae.models import clip_tokenizer

CAT, DOG = {"name": "cat", "count": 1}, {"name": "dog", "count": 1}


class StubDetector:
    """Known boxes per image, whatever the pixels."""

    def __init__(self, per_image):
        self.per_image = per_image

    def detect(self, images, queries):
        return self.per_image[:len(images)]


def test_presence_from_a_stub_detector_with_known_boxes():
    detections = [
        [Detection("cat", 0.9, (0, 0, 10, 10)), Detection("dog", 0.2, (20, 20, 30, 30))],  # dog under 0.3
        [Detection("cat", 0.5, (0, 0, 10, 10)), Detection("dog", 0.31, (20, 20, 30, 30))],
        [],
    ]
    metric = Presence(detector=StubDetector(detections))
    records = [{"objects": [CAT, DOG]}] * 3
    scores = metric.score([Image.new("RGB", (8, 8))] * 3, records)
    assert [s["presence_all"] for s in scores] == [0.0, 1.0, 0.0]
    assert [s["presence_objects"] for s in scores] == [0.5, 1.0, 0.0]
    assert [s["presence_missing"] for s in scores] == ["dog", "", "cat,dog"]


def test_counts_merge_overlapping_boxes():
    two_apart = [Detection("cat", 0.9, (0, 0, 10, 10)), Detection("cat", 0.8, (20, 0, 30, 10))]
    overlapping = [Detection("cat", 0.9, (0, 0, 10, 10)), Detection("cat", 0.8, (1, 0, 11, 10))]
    assert count_objects(two_apart, "cat", 0.3) == 2
    assert count_objects(overlapping, "cat", 0.3) == 1  # IoU 9/11 > 0.5: one cat
    two_cats = [{"name": "cat", "count": 2}]
    assert presence_of(two_apart, two_cats, 0.3)["presence_all"] == 1.0
    assert presence_of(overlapping, two_cats, 0.3) == {"presence_all": 0.0, "presence_objects": 0.5,
                                                      "presence_missing": "cat"}


def test_intended_sense_is_the_query():
    mouse = [{"name": "mouse", "query": "computer mouse"}]
    assert presence_of([Detection("mouse", 0.9, (0, 0, 1, 1))], mouse, 0.3)["presence_all"] == 0.0
    assert presence_of([Detection("computer mouse", 0.9, (0, 0, 1, 1))], mouse, 0.3)["presence_all"] == 1.0


def tiny_owlv2():
    """A random OWLv2 config (64 px, one layer) and its processor, built offline."""
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = Owlv2Config(text_config=small, vision_config={**small, "image_size": 64, "patch_size": 16},
                         projection_dim=32)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=clip_tokenizer(16))
    return config, processor


def test_owlv2_detector_runs_on_a_tiny_random_model():
    config, processor = tiny_owlv2()
    detector = Owlv2Detector(Owlv2ForObjectDetection(config), processor)
    images = [Image.fromarray(np.full((48, 40, 3), v, np.uint8)) for v in (0, 200)]
    detections = detector.detect(images, [["cat", "dog"], ["bowl"]])
    assert len(detections) == 2 and len(detections[0]) == 16  # one best query per predicted box (4x4 patches)
    assert {d.query for d in detections[1]} == {"bowl"}  # padded query slots never leak into an image
    assert all(0 <= d.score <= 1 for dets in detections for d in dets)
    scores = Presence(detector=detector, threshold=0.0).score(images, [{"objects": [CAT, DOG]},
                                                                      {"objects": [{"name": "bowl"}]}])
    assert scores[1]["presence_all"] == 1.0  # threshold 0: every query counts as found


class BestClassDetector:
    """Boxes with a score for every word; each box labelled with its best query among those asked (as OWLv2)."""

    def __init__(self, boxes):
        self.boxes, self.asked = boxes, []

    def detect(self, images, queries):
        self.asked.extend(queries)
        return [[Detection(max(qs, key=lambda q: scores.get(q, 0.0)), max(scores.get(q, 0.0) for q in qs), box)
                 for box, scores in self.boxes] for qs in queries[:len(images)]]


VOCABULARY = ["bowl", "cat", "dog", "tiger"]
TIGERISH_CAT = [((0, 0, 10, 10), {"cat": 0.5, "tiger": 0.8}), ((20, 20, 30, 30), {"dog": 0.9})]


def test_suite_vocabulary_lets_another_class_take_the_box():
    detector = BestClassDetector(TIGERISH_CAT)
    metric = Presence(detector=detector)
    metric.setup(MetricContext(vocabulary=VOCABULARY))
    score = metric.score([Image.new("RGB", (8, 8))], [{"objects": [CAT, DOG]}])[0]
    assert detector.asked == [VOCABULARY]  # the whole vocabulary at once
    assert score == {"presence_all": 0.0, "presence_objects": 0.5, "presence_missing": "cat"}  # the box is a tiger
    assert "the suite's 4-object vocabulary at once, each box its best class" in metric.describe()["convention"]


def test_prompt_vocabulary_is_the_lenient_option():
    detector = BestClassDetector(TIGERISH_CAT)
    metric = Presence(detector=detector)
    metric.setup(MetricContext(vocabulary=VOCABULARY, model_paths={"presence.vocabulary": "prompt"}))
    score = metric.score([Image.new("RGB", (8, 8))], [{"objects": [CAT, DOG]}])[0]
    assert detector.asked == [["cat", "dog"]]
    assert score["presence_all"] == 1.0  # without "tiger" asked, the box is the cat's
    assert "queries: the prompt's own objects" in metric.convention
    with pytest.raises(ValueError, match="presence.vocabulary takes suite or prompt"):
        Presence(detector=detector).setup(MetricContext(model_paths={"presence.vocabulary": "all"}))


def test_prompt_objects_outside_the_vocabulary_are_asked_too():
    metric = Presence(detector=BestClassDetector([]), vocabulary=VOCABULARY)
    assert metric.queries({"objects": [CAT, {"name": "mouse", "query": "computer mouse"}]}) == [
        *VOCABULARY, "computer mouse"]
    assert Presence(detector=BestClassDetector([])).queries({"objects": [DOG, CAT]}) == ["dog", "cat"]


def test_owlv2_is_asked_the_whole_vocabulary():
    config, processor = tiny_owlv2()
    texts = []

    def recording(text=None, **kwargs):
        texts.append(text)
        return processor(text=text, **kwargs)

    metric = Presence(detector=Owlv2Detector(Owlv2ForObjectDetection(config), recording), threshold=0.0)
    metric.setup(MetricContext(vocabulary=VOCABULARY))
    images = [Image.fromarray(np.full((48, 40, 3), v, np.uint8)) for v in (0, 200)]
    detections = metric.detector.detect(images, [metric.queries({"objects": [{"name": "bowl"}]})] * 2)
    assert texts == [[[f"a photo of a {q}" for q in VOCABULARY]] * 2]
    assert {d.query for dets in detections for d in dets} <= set(VOCABULARY)
    assert len({d.query for dets in detections for d in dets}) > 1  # boxes go to other classes than the prompt's
    texts.clear()
    metric.score(images, [{"objects": [CAT, DOG]}, {"objects": [{"name": "bowl"}]}])
    assert texts == [[[f"a photo of a {q}" for q in VOCABULARY]] * 2]


class VocabularySpy(Metric):
    """Writes the vocabulary it was given into its convention (kept in run_config.json)."""

    name = "vocabulary_spy"
    columns = {"spy": True}

    def setup(self, context):
        self.convention = ",".join(context.vocabulary)

    def score(self, images, records):
        return [{"spy": 1.0} for _ in images]


def test_runs_and_rescoring_give_the_whole_suites_vocabulary(tiny_model_dir, tmp_path):
    suite = tmp_path / "small.jsonl"
    rows = [{"id": "0", "prompt": "a cat and a dog", "objects": [CAT, DOG]},
            {"id": "1", "prompt": "a mouse and a bowl", "objects": [{"name": "mouse", "query": "computer mouse"},
                                                                     {"name": "bowl"}]}]
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out, spy = tmp_path / "run", f"{__name__}:VocabularySpy"

    def convention():
        return json.loads((out / "run_config.json").read_text())["metrics_described"]["vocabulary_spy"]["convention"]

    assert main(["run", "--suite", str(suite), "--model", str(tiny_model_dir), "--seeds", "0", "--steps", "1",
                 "--limit", "1", "--out", str(out), "--no-progress", "--metrics", spy]) == 0
    assert convention() == "bowl,cat,computer mouse,dog"  # the whole suite's, not the --limit's prompts
    assert main(["score", str(out), "--metrics", spy]) == 0
    assert convention() == "bowl,cat,computer mouse,dog"
    suite.unlink()  # the suite file is gone: the run's records' objects
    assert main(["score", str(out), "--metrics", spy]) == 0
    assert convention() == "cat,dog"


def test_missing_detector_weights_say_how_to_provide_them(tmp_path):
    with pytest.raises(MetricUnavailable, match="--metric-model presence=DIR"):
        get_metric("presence").setup(MetricContext(model_paths={"presence": str(tmp_path / "none")}))
