"""A model's domain: which prompt suites, run defaults and metric instruments fit it.

A domain is a `Domain` object in a module of its own, registered here by name and imported only when first
asked for: the natural domain (Stable-Diffusion-class models) in `benchmark.natural`, the shapes world in
`benchmark.shapes.domain`. Nothing else in the harness names a domain; it asks `get_domain(name)`.

A model folder declares its domain in `benchmark_domain.json` ({"domain": "shapes"}); without one it is natural.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .registry import Registry

DOMAIN_FILE = "benchmark_domain.json"
NATURAL = "natural"  # a model folder without a domain file
# name -> module holding its `DOMAIN`; the default `--model` is the first domain's shipped model that has one
# the built-in domains (the first is the embedded default) and those of installed packages (entry points
# "benchmark.domains", each naming a `Domain`)
DOMAINS = Registry("domain", "benchmark.domains",
                   {"shapes": "benchmark.shapes.domain:DOMAIN", NATURAL: "benchmark.natural:DOMAIN"})


@dataclass(frozen=True)
class PaperRecipe:
    """How `benchmark paper` runs on a domain's models."""

    main_suite: str
    published: bool = False  # print the paper's published rows beside the measured ones
    out_name: str | None = None  # results/paper/<out_name>; None: the model's folder name
    # trains the large-scale checkpoint when none is given: (model, out_dir, run_defaults, progress) -> file
    train_large_checkpoint: Callable | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    title: str  # one line for `ls suites`
    suites_dir: Path
    run_defaults: dict  # what `benchmark run` uses when a flag is not given
    release_sampling: bool  # sample each method as its own release does (`Method.release_sampling`)
    paper: PaperRecipe
    method_options: dict = field(default_factory=dict)  # method -> its options' values in this domain
    suite_descriptions: dict = field(default_factory=dict)
    instruments: dict = field(default_factory=dict)  # metric -> factory(MetricContext): the domain's own model
    unavailable: dict = field(default_factory=dict)  # metric -> why it cannot run in this domain
    default_model: Path | None = None  # a model shipped with the domain
    # suite name -> run defaults that differ for that suite (GenEval's: its seeds and its metric)
    suite_defaults: dict = field(default_factory=dict)
    # (SuiteObject) -> why the domain's instruments cannot draw or find it, or None: checked when a suite loads
    object_problem: Callable | None = None
    write_suites: Callable | None = None  # (out_dir) -> suites: regenerates its suite files (`build_suites`)

    def defaults_for(self, suite: str) -> dict:
        """`run_defaults` with the suite's own: a suite named by its name, or a suite file whose every line carries
        GenEval clauses (it is judged as GenEval's suite is)."""
        kind = suite
        if suite not in self.suite_defaults and "geneval" in self.suite_defaults and _all_lines_carry(suite, "geneval"):
            kind = "geneval"
        return {**self.run_defaults, **self.suite_defaults.get(kind, {})}


def _all_lines_carry(suite: str, key: str) -> bool:
    """Whether `suite` is a JSONL file whose every line carries `key` (False when it cannot be read: loading the
    suite names what is wrong)."""
    path = Path(suite)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return False
    return bool(rows) and all(isinstance(row, dict) and key in row for row in rows)


def register_domain(domain: str | Domain, module: str | None = None) -> None:
    """Add a domain: by name and the module holding its `DOMAIN` (imported when first asked for), or a `Domain`
    object itself. A name is registered once."""
    if isinstance(domain, str):
        DOMAINS.register(domain, f"{module}:DOMAIN")
    else:
        DOMAINS.register(domain.name, domain)


def unregister_domain(name: str) -> None:
    DOMAINS.unregister(name)


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}: known are {', '.join(DOMAINS)}")
    return DOMAINS[name]


def domains() -> list[Domain]:
    return DOMAINS.values()


def default_model() -> Path:
    """The embedded default `--model`: the first registered domain's shipped model."""
    return next(d.default_model for d in domains() if d.default_model is not None)


def model_domain(model: str | Path) -> str:
    path = Path(model) / DOMAIN_FILE
    if path.is_file():
        return json.loads(path.read_text()).get("domain", NATURAL)
    return NATURAL


def prompts_dir(domain: str) -> Path:
    return get_domain(domain).suites_dir
