"""The round-off rule (docs/run_folder.md): an image scored in another batch (after a kill, or by another process)
gets its scores to within `ROUND_OFF` relative of an uninterrupted run's; float32 kernels batched otherwise round
otherwise, so equality holds only to that. Checked on the shapes world's own instruments."""

import numpy as np
import pytest

from benchmark.metrics import MetricContext, get_metric
from benchmark.shapes.world import render_pil, scene_from_objects

ROUND_OFF = 1e-6  # relative; measured: about 1e-7 for CLIP scores, 2e-8 for FID


@pytest.fixture(scope="module")
def scenes():
    images = [render_pil(scene_from_objects([("red", "circle"), ("blue", "square")], seed)) for seed in range(8)]
    records = [{"prompt": "a red circle and a blue square", "method": "plain", "prompt_id": f"p/{i}", "seed": i,
                "category": "two", "objects": [{"name": "circle", "attribute": "red"},
                                               {"name": "square", "attribute": "blue"}]} for i in range(8)]
    return images, records


def close(a, b):
    return abs(a - b) <= ROUND_OFF * max(abs(a), abs(b))


def test_clip_scores_of_an_image_agree_in_any_batch_to_round_off(scenes):
    images, records = scenes
    metric = get_metric("clip")
    metric.setup(MetricContext(domain="shapes"))
    whole = metric.score(images, records)
    alone = [metric.score([image], [record])[0] for image, record in zip(images, records)]
    halves = metric.score(images[:3], records[:3]) + metric.score(images[3:], records[3:])
    for row in (alone, halves):
        for a, b in zip(whole, row):
            assert a.keys() == b.keys() and all(close(a[k], b[k]) for k in a), (a, b)


@pytest.mark.slow
def test_fid_of_a_set_agrees_in_any_batching_to_round_off(scenes, tmp_path):
    images, records = scenes
    metric = get_metric("fid")
    metric.setup(MetricContext(domain="shapes", model_paths={"fid.cache": str(tmp_path)}))
    whole = metric.embed(images, records)
    alone = [metric.embed([image], [record])[0] for image, record in zip(images, records)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(whole, alone)) < 1e-4  # features, float32
    assert close(metric.compute(whole)["fid"], metric.compute(alone)["fid"])
