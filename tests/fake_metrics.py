"""A metric defined in the tests, to exercise the metric registry through `module:Class` names."""

import numpy as np

from benchmark.metrics import Metric, MetricUnavailable


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
