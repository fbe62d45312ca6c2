"""Metrics defined in the tests, to exercise the metric registry through `module:Class` names."""

import numpy as np

from benchmark.geneval.rules import CLASSES, Detected
from benchmark.metrics import Metric, MetricUnavailable
from benchmark.metrics.geneval import GenEval, Judge


class MeanBrightness(Metric):
    name = "brightness"
    description = "mean pixel value in [0, 1] (a test metric)"
    columns = {"brightness": True, "red_share": True}
    convention = "mean over pixels and channels of the 8-bit image / 255"

    def score(self, images, records):
        out = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
            out.append({"brightness": float(pixels.mean()),
                        "red_share": float(pixels[..., 0].sum() / max(pixels.sum(), 1e-9))})
        return out


class NeedsWeights(Metric):
    name = "needs_weights"
    columns = {"never": True}

    def setup(self, context):
        raise MetricUnavailable("no weights for needs_weights: pass --metric-model needs_weights=PATH")



class BrightDetector:
    """A bright image (mean level over 127) shows one confident object of every class filling it; a dark one
    nothing."""

    def detect(self, images):
        found = []
        for image in images:
            box = (0.0, 0.0, float(image.width), float(image.height))
            bright = np.asarray(image.convert("L")).mean() > 127
            found.append({name: [Detected(box, 0.95)] for name in CLASSES} if bright else {})
        return found


class AllRed:
    def classify(self, crops, names):
        return ["red"] * len(crops)


class StubGenEval(GenEval):
    """The `geneval` metric (GenEval's rules, the suite's clauses) with a stub judge: `BrightDetector`, every
    object red."""

    def __init__(self):
        super().__init__(Judge("stub", BrightDetector(), AllRed(), "bright images hold every class, in red"))
