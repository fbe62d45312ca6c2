"""Metrics, registered by name. Each declares its columns (with higher-is-better), its convention and its
models; it loads them once per run (`setup`) and scores images in batches (`score`), torchmetrics-style.
A `SetMetric` (FID) gives one value per method and suite category instead of one per image. A metric may add its
own tables to the report (`ReportSection`) and check the suite lines it reads (`Metric.check_prompts`).

A metric can also be named as `module:Class` on the command line (a metric of your own, or of the tests), or
registered by an installed package (entry points "benchmark.metrics").
"""

from __future__ import annotations

from ..registry import Registry
from .base import (Metric, MetricContext, MetricUnavailable, ReportSection, SetMetric, check_available,
                   domain_model, object_vocabulary, suite_vocabulary)

__all__ = ["METRICS", "Metric", "MetricContext", "MetricUnavailable", "ReportSection", "SetMetric",
           "check_available", "domain_model", "get_metric", "object_vocabulary", "register_metric",
           "report_sections", "suite_vocabulary"]

# the metrics of this package (imported when first asked for) and those of installed packages
METRICS = Registry("metric", "benchmark.metrics", {
    "presence": "benchmark.metrics.presence:Presence",
    "clip": "benchmark.metrics.clip:ClipScore",
    "blip": "benchmark.metrics.blip:BlipScore",
    "fid": "benchmark.metrics.fid:Fid",
    "geneval": "benchmark.metrics.geneval:GenEval",
    "geneval_owlv2": "benchmark.metrics.geneval:GenEvalOwlv2",
})


def register_metric(cls: type[Metric]) -> type[Metric]:
    return METRICS.add(cls)


def metric_class(spec: str) -> type[Metric]:
    """A registered name, or `package.module:ClassName`."""
    if spec in METRICS:
        return METRICS[spec]
    if ":" in spec:
        from ..plugins import load_class

        return load_class(spec, "metric")
    raise ValueError(f"unknown metric {spec!r}: choose from {', '.join(METRICS) or '(none registered)'} "
                     "(`python -m benchmark ls metrics`) or name one as module:Class")


def get_metric(spec: str) -> Metric:
    return metric_class(spec)()


def report_sections(names) -> list[ReportSection]:
    """The report sections of the named metrics (each once; names that are not metrics are skipped)."""
    sections = []
    for name in names:
        try:
            section = metric_class(name).report_section
        except ValueError:  # a metric of a package no longer installed: its columns still show
            continue
        if section is not None and section not in sections:
            sections.append(section)
    return sections
