"""One registry for methods, metrics and domains: lazy entries, one entry per name, and the entry points of
installed packages (faked here: `importlib.metadata.entry_points` answers as it would for an installed plugin
package whose pyproject declares them)."""

import json
from importlib.metadata import EntryPoint

import pytest

import benchmark.registry
from benchmark.cli import main
from benchmark.domains import DOMAINS
from benchmark.methods import METHODS
from benchmark.metrics import METRICS
from benchmark.registry import Registry


def test_a_lazy_entry_is_imported_when_first_asked_for():
    registry = Registry("thing", "benchmark.no-such-group", {"dumps": "json:dumps", "missing": "json:nothing"})
    assert registry._entries["dumps"] == "json:dumps"  # not imported yet
    assert registry["dumps"] is json.dumps and list(registry) == ["dumps", "missing"]
    with pytest.raises(ValueError, match="cannot load thing 'missing' from json:nothing"):
        registry["missing"]


def test_a_name_is_registered_once():
    registry = Registry("thing", "benchmark.no-such-group", {"a": "json:dumps"})
    registry.register("a", "json:dumps")  # the same entry again: nothing happens
    with pytest.raises(ValueError, match="a thing named 'a' is already registered \\(json:dumps\\)"):
        registry.register("a", "json:loads")
    with pytest.raises(ValueError, match="a method named 'plain' is already registered"):
        METHODS.register("plain", object())


@pytest.fixture
def installed(monkeypatch):
    """Pretend a package declaring these entry points is installed; the registries read them afresh."""
    def install(*points):
        monkeypatch.setattr(benchmark.registry.metadata, "entry_points",
                            lambda group: [p for p in points if p.group == group])
        for registry in (METHODS, METRICS, DOMAINS):
            monkeypatch.setattr(registry, "_entries", dict(registry._entries))
            monkeypatch.setattr(registry, "_plugins_read", False)
    return install


def test_an_installed_package_adds_a_metric_and_a_method_by_name(installed, tiny_model_dir, small_suite, tmp_path,
                                                                 capsys):
    installed(EntryPoint("bright", "fake_metrics:MeanBrightness", "benchmark.metrics"),
              EntryPoint("dimmed", "test_method_plugin:Dimmed", "benchmark.methods"))
    assert main(["ls", "metrics"]) == 0 and main(["ls", "methods"]) == 0
    listed = capsys.readouterr().out
    assert "\nbright " in listed and "\ndimmed " in listed
    out = tmp_path / "run"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "plain,dimmed",
                 "--metrics", "bright", "--limit", "1", "--seeds", "0", "--steps", "2", "--out", str(out),
                 "--no-progress", "--no-html", "--option", "dimmed.factor=0.5"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in rows) == ["dimmed", "plain"] and all("brightness" in r for r in rows)
    dimmed, plain = (next(r["brightness"] for r in rows if r["method"] == m) for m in ("dimmed", "plain"))
    assert dimmed == pytest.approx(plain * 0.5, abs=1.0)


def test_an_installed_package_cannot_take_a_builtin_name(installed):
    installed(EntryPoint("plain", "test_method_plugin:Dimmed", "benchmark.methods"))
    with pytest.raises(ValueError, match="registers a method named 'plain', which is taken"):
        "plain" in METHODS  # noqa: B015 (reading the registry is what reads the entry points)


def test_an_installed_methods_options_are_flags_and_its_metric_adds_a_report_section(installed, tiny_model_dir,
                                                                                     small_suite, tmp_path, capsys):
    """A method with two options and a metric with its own report section, each one new file of a package."""
    installed(EntryPoint("bright_share", "plugin_metric:BrightShare", "benchmark.metrics"),
              EntryPoint("dimmed", "test_method_plugin:Dimmed", "benchmark.methods"))
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--dimmed-factor FACTOR what the base images are multiplied by (default: 0.5)" in shown
    assert "--dimmed-channels {rgb,r,g,b} which colour channels are dimmed (default: rgb)" in shown
    out = tmp_path / "run"
    assert main(["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", "plain,dimmed",
                 "--metrics", "bright_share", "--limit", "1", "--seeds", "0,1", "--steps", "2", "--out", str(out),
                 "--no-progress", "--attention-prompts", "0", "--dimmed-factor", "0.25", "--dimmed-channels", "r"]) == 0
    printed = capsys.readouterr().out
    config = json.loads((out / "run_config.json").read_text())
    assert config["options"]["dimmed"] == {"factor": 0.25, "channels": "r"}
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    share = {m: sum(r["bright"] for r in rows if r["method"] == m) / 2 for m in ("plain", "dimmed")}
    results = json.loads((out / "results.json").read_text())
    assert results["bright_share"] == {"methods": share}  # its section's values, computed from the rows
    assert "## Bright images (plugin section)" in (out / "summary.md").read_text()
    assert "## Bright images (plugin section)" in printed  # the command prints it after the tables
    page = (out / "report" / "index.html").read_text()
    assert "Bright images (plugin section)" in page and "share of bright images" in page
