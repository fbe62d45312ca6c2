"""CI's regression check on the shipped shapes model, through the benchmark itself (`benchmark run`):

- single-object presence stays at or above the bar;
- SepEn (per-pair finetuning, the shapes defaults) beats `plain` on all-objects-present over the `ci` suite's
  prompts of two to four objects. It does not yet on the shipped model, so that check is an expected failure
  that reports itself (XPASS) once a model or method change makes it pass;
- the paper's test-time variant (`sepen_tt`: the same losses as latent updates) beats `plain` there (0.469 vs
  0.344 on the shipped model).

Seeded and run on the CPU, so the numbers are the same on every run of the same code: a failure means the code
or the model changed, not luck. The full measurement (more seeds, every suite) is in results/shapes/.
"""

import pandas as pd
import pytest

from benchmark.domains import RUN_DEFAULTS, SHAPES, SHAPES_MODEL, sepen_settings
from benchmark.generate import RunConfig, run

DEFAULTS = RUN_DEFAULTS[SHAPES]
SINGLE_OBJECT_BAR = 0.90  # issue 5's quality bar
MULTI = ["seen_pair", "heldout_pair", "three_objects", "four_objects"]  # the `ci` suite's prompts of 2-4 objects


def shapes_run(tmp_path, suite, methods, seeds):
    return run(RunConfig(suite=suite, model=str(SHAPES_MODEL), methods=methods, seeds=seeds,
                         steps=DEFAULTS["steps"], guidance=DEFAULTS["guidance"], batch_size=4, out=tmp_path / suite,
                         device="cpu", metrics=["presence"], checkpoint_cache=tmp_path / "checkpoints",
                         sepen=sepen_settings(DEFAULTS),
                         progress=False))


def success(out, method, categories=None):
    rows = pd.read_json(out / "samples.jsonl", lines=True)
    rows = rows[rows["method"] == method]
    if categories is not None:
        rows = rows[rows["category"].isin(categories)]
    return rows["presence_all"].mean(), len(rows)


@pytest.mark.slow
def test_shipped_model_keeps_single_object_presence_at_the_bar(tmp_path):
    out = shapes_run(tmp_path, "single_object", ["plain"], [100, 101])
    rate, n = success(out, "plain")
    assert n == 36
    assert rate >= SINGLE_OBJECT_BAR, f"single-object presence {rate:.3f} < {SINGLE_OBJECT_BAR}"


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    """The `ci` suite, seeds 100-103, with plain and both SepEn variants: one run shared by the checks below."""
    return shapes_run(tmp_path_factory.mktemp("regression"), "ci", ["plain", "sepen", "sepen_tt"],
                      [100, 101, 102, 103])


def beats_plain(out, method):
    plain, n = success(out, "plain", MULTI)
    rate, _ = success(out, method, MULTI)
    assert n == 32
    assert rate > plain, f"{method} {rate:.3f} <= plain {plain:.3f} on all-objects-present"


@pytest.mark.slow
@pytest.mark.xfail(reason="on the shipped model SepEn does not beat plain yet: 0.281 vs 0.344 here, and no learning "
                          "rate helped on the tuning set (results/shapes/sepen_lr_sweep.md); issue 5 stays open",
                   strict=False)
def test_sepen_beats_plain_on_all_objects_present(ci_run):
    beats_plain(ci_run, "sepen")


@pytest.mark.slow
def test_sepen_test_time_variant_beats_plain_on_all_objects_present(ci_run):
    beats_plain(ci_run, "sepen_tt")
