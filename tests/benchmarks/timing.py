"""Ratio benchmarks: candidate and baseline timed in alternation inside one pytest-benchmark run.

Each benchmark runs in two tiers (`TIERS`): the whole suite (`-m "not perf"`, what CI runs) guards only against a
gross regression, a ratio 1.5x past its goal, in a few rounds, so that timing noise on a shared machine cannot turn
CI red; `pytest -m perf` checks the goal itself, in as many rounds as its precision needs.
"""

import gc
import itertools
import statistics
import time

import pytest
import torch


GUARD = 1.5
# the guard runs in the whole suite (slow tier), with fewer rounds: a 1.5x margin needs no 3% precision
TIERS = [pytest.param(False, id="guard", marks=pytest.mark.slow),
         pytest.param(True, id="goal", marks=pytest.mark.perf)]


def rounds(strict: bool, goal_rounds: int, guard_rounds: int = 5) -> int:
    """Paired rounds for the tier: the goal's precision needs `goal_rounds`, the gross-regression guard far fewer."""
    return goal_rounds if strict else min(goal_rounds, guard_rounds)


def assert_within(value: float, goal: float, strict: bool, higher_is_better: bool = False) -> None:
    """`value` meets the goal (strict) or is no worse than 1.5x past it (the default tier)."""
    if higher_is_better:
        bound = goal if strict else goal / GUARD
        assert value >= bound, f"{value:.3f} < {bound:.3f} ({'goal' if strict else 'gross-regression guard'})"
    else:
        bound = goal if strict else goal * GUARD
        assert value <= bound, f"{value:.3f} > {bound:.3f} ({'goal' if strict else 'gross-regression guard'})"


def measure_ratio(benchmark, candidate, baseline, rounds: int,
                  threads: int | None = None) -> tuple[float, float, float]:
    """(best candidate seconds, best baseline seconds, ratio): the median over rounds of each round's own ratio.

    Each benchmark round runs both back to back, the baseline first in even rounds and the candidate first in odd
    ones, each after a garbage collection and with the collector off while it runs. On our shared 2-core CPU the
    best of 5 calls of one and the same pipeline call differed by up to 8% between two loops, so a ratio of the two
    sides' best times can miss a 3% goal by noise alone; paired rounds share the machine's state of the moment,
    and their median ignores the odd disturbed round. Times and ratio land in `extra_info`.

    `threads` runs both sides at that many torch threads: with two threads on our two vCPUs one busy neighbour
    stalls every parallel op, and paired ratios of one and the same call spread twice as wide (sd 0.05-0.09 against
    0.03 with one thread), too wide for a goal a few percent from 1.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure_ratio(benchmark, candidate, baseline, rounds)
    finally:
        torch.set_num_threads(previous_threads)


def _measure_ratio(benchmark, candidate, baseline, rounds: int) -> tuple[float, float, float]:
    for _ in range(2):  # warm-up: kernels, allocator
        candidate(), baseline()
    times = {"candidate": [], "baseline": []}
    order = itertools.cycle([(("baseline", baseline), ("candidate", candidate)),
                             (("candidate", candidate), ("baseline", baseline))])

    def round_():
        for name, fn in next(order):
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            finally:
                gc.enable()

    benchmark.pedantic(round_, rounds=rounds, iterations=1)
    if benchmark.stats is None:
        pytest.skip("benchmarks disabled: no timing to compare")
    best_candidate, best_baseline = min(times["candidate"]), min(times["baseline"])
    ratio = statistics.median(c / b for c, b in zip(times["candidate"], times["baseline"]))
    benchmark.extra_info.update(candidate_s=best_candidate, baseline_s=best_baseline, ratio=ratio)
    return best_candidate, best_baseline, ratio
