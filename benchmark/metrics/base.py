"""What a metric is: `Metric` (per-image columns), `SetMetric` (one value per group of images), the context a
metric may use, and the hooks by which a metric adds its own tables to a run's report (`ReportSection`) and checks
the suite lines it reads (`Metric.check_prompts`). The registry of metrics is the package's (`benchmark.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class MetricUnavailable(RuntimeError):
    """The metric cannot run here (e.g. its weights are missing); the message says how to provide them."""


@dataclass
class MetricContext:
    """What a metric may use: the run's device, model paths given by the user, the pipeline's domain, and the
    suite's object vocabulary (every distinct detector query of the whole suite; empty: each prompt's own)."""

    device: str = "cpu"
    model_paths: dict = field(default_factory=dict)  # metric name -> local path or hub id
    domain: str = "natural"
    vocabulary: list[str] = field(default_factory=list)
    suite: str = ""  # the run's suite, its name or file (GenEval clauses of records that do not carry them)


@dataclass(frozen=True)
class ReportSection:
    """A table a metric adds to a run's report beyond the per-image means (GenEval's task table, say). `values`
    builds, from the run's sample rows, the conventions of its metrics and the method order, what `results.json`
    keeps under `key` (None: the run carries nothing of it); `markdown(values)` is its part of `summary.md` and of
    the command's output; `tables(values)` its tables in the HTML report, as (title, note, header, rows) of plain
    text (the report escapes them). The pages read `results.json`, never a run's memory."""

    key: str
    values: Callable[[list[dict], dict, list[str] | None], dict | None]
    markdown: Callable[[dict], str]
    tables: Callable[[dict], list[tuple[str, str, list[str], list[list[str]]]]]


class Metric:
    name = ""
    description = ""
    columns: dict[str, bool] = {}  # column -> higher is better
    convention = ""
    version = "1"
    # its own tables in the run's report; metrics that share one (GenEval's judges) share the object
    report_section: ReportSection | None = None

    @classmethod
    def check_prompts(cls, prompts: list) -> None:
        """Raise ValueError naming the line when a suite prompt lacks or garbles what this metric reads from it
        (e.g. GenEval's clauses); called before a run loads anything."""

    def setup(self, context: MetricContext) -> None:
        """Load models once; raise `MetricUnavailable` with a remedy when they cannot be had."""

    def score(self, images: list, records: list[dict]) -> list[dict[str, float]]:
        """One dict of column values per image."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"description": self.description, "columns": self.columns, "convention": self.convention,
                "version": self.version}


class SetMetric(Metric):
    """A metric of a set of images: one value per method x suite category (and per method over all of its
    images), not per image. The harness feeds `update` batches of images as they are generated or read back
    from the run folder; `embed` turns each image into a state (e.g. a feature vector) kept by record key, and
    `compute` gives the columns of one group from its images' states. The values of every group are stored
    in `scores/<name>.sets.json` and the tables show them as one column (no interval)."""

    def embed(self, images: list, records: list[dict]) -> list:
        """One state per image (batched)."""
        raise NotImplementedError

    def compute(self, states: list) -> dict[str, float]:
        """The columns of one group of images, from their states."""
        raise NotImplementedError

    @property
    def states(self) -> dict:
        if "_states" not in self.__dict__:
            self._states = {}
        return self._states

    def update(self, images: list, records: list[dict]) -> None:
        from ..records import record_key

        for record, state in zip(records, self.embed(images, records), strict=True):
            self.states[record_key(record)] = state

    def reset(self) -> None:
        self.states.clear()

    def score(self, images, records):
        raise TypeError(f"{self.name} is a set metric: feed it with update() and read it with compute()")


def domain_model(metric: str, context: MetricContext):
    """The domain's own instrument for this metric (its `Domain.instruments` factory), or None: then the metric
    loads its usual model. A model the user named on the command line wins."""
    from ..domains import get_domain

    if metric in context.model_paths:
        return None
    return get_domain(context.domain).instruments.get(metric)


def check_available(metric: str, context: MetricContext) -> None:
    """Raise `MetricUnavailable` when the domain has no counterpart for this metric."""
    from ..domains import get_domain

    reason = get_domain(context.domain).unavailable.get(metric)
    if reason:
        raise MetricUnavailable(f"not available for this model: {reason} (the column is left out, never "
                                "reported as zero)")


def object_vocabulary(items) -> list[str]:
    """Sorted distinct queries (`query`, else `name`) of the objects of suite prompts or records."""
    queries = set()
    for item in items:
        for obj in item["objects"] if isinstance(item, dict) else item.objects:
            obj = obj if isinstance(obj, dict) else obj.__dict__
            queries.add(obj.get("query") or obj["name"])
    return sorted(queries)


def suite_vocabulary(suite: str, domain: str, fallback=tuple) -> list[str]:
    """The object vocabulary of a whole suite of the domain, or of the records `fallback()` gives when the suite
    cannot be read (a run folder whose suite file has moved)."""
    from ..domains import prompts_dir
    from ..suites import load_suite

    try:
        return object_vocabulary(load_suite(suite, prompts_dir(domain)))
    except (OSError, ValueError):  # SuiteError is a ValueError
        return object_vocabulary(fallback())


