"""Interleaved timing for ratio benchmarks: baseline and candidate alternate, so drift hits both alike."""

import time


def interleaved(candidate, baseline):
    """A benchmark round (baseline, then candidate, each timed) and the lists their times go to."""
    times = {"candidate": [], "baseline": []}

    def round_():
        for name, fn in (("baseline", baseline), ("candidate", candidate)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    return round_, times
