"""Metrics, registered by name. Each declares its columns (with higher-is-better), its convention and its
models; it loads them once per run (`setup`) and scores images in batches (`score`), torchmetrics-style.

A metric can also be named as `module:Class` on the command line (a metric of your own, or of the tests).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


class MetricUnavailable(RuntimeError):
    """The metric cannot run here (e.g. its weights are missing); the message says how to provide them."""


@dataclass
class MetricContext:
    """What a metric may use: the run's device, model paths given by the user, the pipeline's domain."""

    device: str = "cpu"
    model_paths: dict = field(default_factory=dict)  # metric name -> local path or hub id
    domain: str = "natural"


class Metric:
    name = ""
    description = ""
    columns: dict[str, bool] = {}  # column -> higher is better
    convention = ""
    version = "1"

    def setup(self, context: MetricContext) -> None:
        """Load models once; raise `MetricUnavailable` with a remedy when they cannot be had."""

    def score(self, images: list, records: list[dict]) -> list[dict[str, float]]:
        """One dict of column values per image."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"description": self.description, "columns": self.columns, "convention": self.convention,
                "version": self.version}


METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    METRICS[cls.name] = cls
    return cls


def get_metric(spec: str) -> Metric:
    """A registered name, or `package.module:ClassName`."""
    if spec in METRICS:
        return METRICS[spec]()
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import metric {spec!r}: {err}") from err
        return cls()
    raise ValueError(f"unknown metric {spec!r}: choose from {', '.join(METRICS) or '(none registered)'} "
                     "(`python -m benchmark ls metrics`) or name one as module:Class")


# the metrics register themselves on import
from . import clip, presence  # noqa: E402,F401
