"""Ratio benchmarks: candidate and baseline timed in alternation inside one pytest-benchmark run."""

import time

import pytest


def measure_ratio(benchmark, candidate, baseline, rounds: int) -> tuple[float, float, float]:
    """(best candidate seconds, best baseline seconds, their ratio); alternating keeps drift out of the ratio.

    Each benchmark round runs the baseline, then the candidate; both times land in `extra_info`.
    """
    candidate(), baseline()  # warm-up
    times = {"candidate": [], "baseline": []}

    def round_():
        for name, fn in (("baseline", baseline), ("candidate", candidate)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(round_, rounds=rounds, iterations=1)
    if benchmark.stats is None:
        pytest.skip("benchmarks disabled: no timing to compare")
    best_candidate, best_baseline = min(times["candidate"]), min(times["baseline"])
    ratio = best_candidate / best_baseline
    benchmark.extra_info.update(candidate_s=best_candidate, baseline_s=best_baseline, ratio=ratio)
    return best_candidate, best_baseline, ratio
