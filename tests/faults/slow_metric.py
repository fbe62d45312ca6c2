"""A test metric that takes a while per batch, as a real one does: a kill can land while an image waits for its
score (tests/faults/test_kill_sweep.py, scripts/fault_sweep.py)."""

import time

from fake_metrics import MeanBrightness


class SlowBrightness(MeanBrightness):
    def score(self, images, records):
        time.sleep(0.2)  # wall time, not CPU: the window between an image and its score line
        return super().score(images, records)
