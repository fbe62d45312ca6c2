"""A method of one's own, with an option, defined here only and named on the command line as module:Class: it
runs, the run folder records its option, a rerun resumes, and another value of the option is refused."""

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from benchmark.cli import main
from benchmark.methods import Method
from sae.options import option

SPEC = "test_method_plugin:Dimmed"  # pytest puts this file's folder on sys.path (as tests/ for fake_metrics)


@dataclass
class DimmedOptions:  # each field with help is also a flag: --dimmed-factor, --dimmed-channels
    factor: float = option(0.5, "what the base images are multiplied by")
    channels: str = option("rgb", "which colour channels are dimmed", choices=("rgb", "r", "g", "b"))


class Dimmed(Method):
    name = "dimmed"
    description = "the base pipeline's images times a factor"
    Options = DimmedOptions

    def generate(self, context, item, seeds):
        images = context.plain_images(item, seeds, self.sampling)
        keep = np.array([c not in self.options.channels for c in "rgb"] if self.options.channels != "rgb"
                        else [False] * 3)
        return [Image.fromarray(np.where(keep, np.asarray(im, dtype=float),
                                         np.asarray(im, dtype=float) * self.options.factor).round().astype(np.uint8))
                for im in images]


def test_a_method_from_a_module_runs_records_its_option_and_resumes(tiny_model_dir, small_suite, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--suite", str(small_suite), "--model", str(tiny_model_dir), "--methods", f"plain,{SPEC}",
            "--limit", "1", "--seeds", "0,1", "--steps", "2", "--out", str(out), "--no-progress", "--no-html"]
    assert main(args + ["--option", f"{SPEC}.factor=0.25"]) == 0
    for seed in (0, 1):
        plain = np.asarray(Image.open(out / "images" / "plain" / "t_0" / f"{seed:04d}.png"), dtype=float)
        dimmed = np.asarray(Image.open(out / "images" / "dimmed" / "t_0" / f"{seed:04d}.png"), dtype=float)
        assert np.abs(dimmed - (plain * 0.25).round()).max() <= 1  # one 8-bit level: another batch's rounding
    config = json.loads((out / "run_config.json").read_text())
    assert config["options"][SPEC] == {"factor": 0.25, "channels": "rgb"} == config["method_keys"][SPEC]
    assert config["notes"][SPEC] == "factor=0.25"  # the options that differ from their defaults
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["dimmed", "dimmed", "plain", "plain"]

    stamps = sorted(p.stat().st_mtime_ns for p in (out / "images").rglob("*.png"))
    (out / "images" / "dimmed" / "t_0" / "0001.png").unlink()
    assert main(args + ["--option", f"{SPEC}.factor=0.25"]) == 0  # resumed: only the missing image is made
    assert len(list((out / "images").rglob("*.png"))) == 4
    assert sorted(p.stat().st_mtime_ns for p in (out / "images").rglob("*.png"))[:3] == stamps[:3]

    capsys.readouterr()
    assert main(args + ["--option", f"{SPEC}.factor=0.5"]) == 2  # other images: refused, in one line
    assert "other method_keys" in capsys.readouterr().err
    assert main(args + ["--option", f"{SPEC}.strength=2"]) == 2  # no such option
    assert "has no option strength" in capsys.readouterr().err
