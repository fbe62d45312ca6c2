import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

from benchmark.metrics import MetricContext, MetricUnavailable, get_metric
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


def test_owlv2_detector_runs_on_a_tiny_random_model():
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = Owlv2Config(text_config=small, vision_config={**small, "image_size": 64, "patch_size": 16},
                         projection_dim=32)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=clip_tokenizer(16))
    detector = Owlv2Detector(Owlv2ForObjectDetection(config), processor)
    images = [Image.fromarray(np.full((48, 40, 3), v, np.uint8)) for v in (0, 200)]
    detections = detector.detect(images, [["cat", "dog"], ["bowl"]])
    assert len(detections) == 2 and len(detections[0]) == 16  # one best query per predicted box (4x4 patches)
    assert {d.query for d in detections[1]} == {"bowl"}  # padded query slots never leak into an image
    assert all(0 <= d.score <= 1 for dets in detections for d in dets)
    scores = Presence(detector=detector, threshold=0.0).score(images, [{"objects": [CAT, DOG]},
                                                                      {"objects": [{"name": "bowl"}]}])
    assert scores[1]["presence_all"] == 1.0  # threshold 0: every query counts as found


def test_missing_detector_weights_say_how_to_provide_them(tmp_path):
    with pytest.raises(MetricUnavailable, match="--metric-model presence=DIR"):
        get_metric("presence").setup(MetricContext(model_paths={"presence": str(tmp_path / "none")}))
