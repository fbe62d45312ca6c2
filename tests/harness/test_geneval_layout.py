"""`benchmark score DIR --layout geneval`: GenEval's own image folders imported into a run folder and scored; a
folder in another layout refused on one line."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.records import read_record

SUITE_FILE = Path(__file__).resolve().parents[2] / "prompts" / "geneval.jsonl"
SUITE = {row["id"]: row for row in map(json.loads, SUITE_FILE.read_text().splitlines())}
# folder name -> its prompt (any digits: GenEval pads to 5), sample names
FOLDERS = {"00000": ("geneval/00000", ["00000.png", "00001.png"]), "80": ("geneval/00080", ["0.png", "1.png"]),
           "000267": ("geneval/00267", ["00000.png", "00001.png"])}


def metadata(prompt_id):
    row = SUITE[prompt_id]
    return {"tag": row["category"], **{k: v for k, v in row["geneval"].items() if k != "tag"}, "prompt": row["prompt"]}


def make_geneval_folder(root):
    """3 prompts x 2 samples as GenEval's generation script lays them out: sample 0 bright, sample 1 dark (random
    pixels in both)."""
    rng = np.random.default_rng(0)
    for name, (prompt_id, samples) in FOLDERS.items():
        (root / name / "samples").mkdir(parents=True)
        (root / name / "metadata.jsonl").write_text(json.dumps(metadata(prompt_id)) + "\n")
        for n, sample in enumerate(samples):
            low, high = (160, 256) if n == 0 else (0, 96)
            Image.fromarray(rng.integers(low, high, (16, 16, 3), dtype=np.uint8)).save(root / name / "samples" / sample)
    (root / "00000" / "grid.png").write_bytes(b"")  # GenEval's optional grid: not a sample
    return root


def test_geneval_folders_become_a_scored_run_folder(tmp_path, capsys):
    source = make_geneval_folder(tmp_path / "geneval_out")
    assert main(["score", str(source), "--layout", "geneval", "--metrics", "fake_metrics:StubGenEval",
                 "--device", "cpu"]) == 0
    run = tmp_path / "geneval_out_scored"
    images = sorted(run.glob("images/*/*/*.png"))
    assert [p.relative_to(run).as_posix() for p in images] == [
        f"images/external/{pid.replace('/', '_')}/{seed:04d}.png" for pid in sorted(v[0] for v in FOLDERS.values())
        for seed in (0, 1)]
    for name, (prompt_id, samples) in FOLDERS.items():
        for seed, sample in enumerate(samples):
            target = run / "images" / "external" / prompt_id.replace("/", "_") / f"{seed:04d}.png"
            record = read_record(target)
            assert record["method"] == "external" and record["prompt_id"] == prompt_id and record["seed"] == seed
            assert record["category"] == SUITE[prompt_id]["category"] and record["prompt"] == SUITE[prompt_id]["prompt"]
            with Image.open(source / name / "samples" / sample) as original, Image.open(target) as copied:
                assert np.array_equal(np.asarray(original), np.asarray(copied))  # pixels unchanged
    # the stub judge: the bright sample holds every (red) object, the dark one none
    samples = pd.read_json(run / "samples.jsonl", lines=True)
    assert samples.set_index(["prompt_id", "seed"])["geneval_correct"].to_dict() == {
        (pid, seed): float(seed == 0) for pid, _ in FOLDERS.values() for seed in (0, 1)}
    assert set(samples[samples["seed"] == 1]["geneval_reason"]) == {
        "expected bench>=1, found 0", "expected bench>=1, found 0; expected sports ball>=1, found 0",
        "expected bicycle>=1, found 0"}
    summary_md = (run / "summary.md").read_text()
    assert "## GenEval tasks" in summary_md and "GenEval-compatible (judge=stub)" in summary_md
    tasks = json.loads((run / "results.json").read_text())["geneval"]["geneval"]["methods"]["external"]
    assert {t: v["score"] for t, v in tasks["tasks"].items()} == {"single_object": 0.5, "two_object": 0.5,
                                                                   "colors": 0.5}
    assert (tasks["overall"]["tasks"], tasks["prompts_with_correct"], tasks["prompts"]) == (3, 3, 3)
    assert "(3 of 6 tasks)" in summary_md
    assert "imported 6 new images" in capsys.readouterr().err


def test_importing_again_adds_only_what_is_missing_and_methods_side_by_side(tmp_path, capsys):
    source = make_geneval_folder(tmp_path / "geneval_out")
    out = tmp_path / "run"
    args = ["score", str(source), "--layout", "geneval", "--out", str(out), "--metrics",
            "fake_metrics:MeanBrightness", "--device", "cpu"]
    assert main(args) == 0
    first = (out / "images" / "external" / "geneval_00000" / "0000.png").stat().st_mtime_ns
    Image.new("RGB", (16, 16), (255, 255, 255)).save(source / "80" / "samples" / "2.png")  # the folder grew
    capsys.readouterr()
    assert main(args) == 0
    assert "imported 1 new images" in capsys.readouterr().err
    assert (out / "images" / "external" / "geneval_00000" / "0000.png").stat().st_mtime_ns == first
    summary = pd.read_csv(out / "summary.csv")
    assert summary[summary["category"] == "all"]["images"].tolist() == [7]
    assert summary["brightness_n"].max() == 7  # the new image is scored too
    other = make_geneval_folder(tmp_path / "other_out")
    assert main(["score", str(other), "--layout", "geneval", "--out", str(out), "--method-name", "plain",
                 "--metrics", "fake_metrics:MeanBrightness", "--device", "cpu"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["methods"] == ["external", "plain"] and config["seeds"] == [0, 1, 2]
    assert set(config["sources"]) == {"external", "plain"}
    paired = pd.read_csv(out / "paired.csv")  # `plain` is the baseline: the same prompts and seeds pair
    assert paired[paired["category"] == "all"]["pairs"].tolist() == [6]
    capsys.readouterr()
    assert main(args + ["--method-name", "plain"]) == 2  # plain came from the other folder
    assert "holds method 'plain' imported from" in capsys.readouterr().err


def refusal(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


@pytest.mark.parametrize("damage, problem", [
    (lambda root: [p.unlink() for p in (root / "80").glob("*.jsonl")], "80/metadata.jsonl is missing"),
    (lambda root: (root / "80" / "metadata.jsonl").write_text("{not json\n"), "is not one JSON line"),
    (lambda root: (root / "80" / "metadata.jsonl").write_text(json.dumps({**metadata("geneval/00080"),
                                                                          "prompt": "a photo of a cat"})),
     "folder 80 holds 'a photo of a cat', but geneval/00080 is 'a photo of a bench and a sports ball'"),
    (lambda root: (root / "00080").mkdir(), "are the same folder number 80"),
    (lambda root: (root / "00000" / "samples" / "best.png").write_bytes(b""), "holds best.png, not a numbered"),
    (lambda root: (root / "99999" / "samples").mkdir(parents=True) or (root / "99999" / "metadata.jsonl").write_text(
        json.dumps({"prompt": "x"})), "folder 99999 names no GenEval prompt"),
    (lambda root: (root / "00000" / "samples" / "00000.png").write_bytes(b"not a png"), "cannot be read"),
])
def test_a_folder_in_another_layout_is_refused_on_one_line(tmp_path, capsys, damage, problem):
    source = make_geneval_folder(tmp_path / "geneval_out")
    damage(source)
    err = refusal(capsys, ["score", str(source), "--layout", "geneval", "--metrics", "fake_metrics:MeanBrightness"])
    assert problem in err and "GenEval's layout" in err


def test_empty_missing_and_run_folders_are_refused_with_the_remedy(tmp_path, capsys, report_run):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    err = refusal(capsys, ["score", str(tmp_path / "empty"), "--layout", "geneval"])
    assert "no <index>/ prompt folders" in err and "pass the folder GenEval's generation script wrote" in err
    assert "no such folder" in refusal(capsys, ["score", str(tmp_path / "none"), "--layout", "geneval"])
    run = report_run(tmp_path / "run")
    assert "score it without --layout geneval" in refusal(capsys, ["score", str(run), "--layout", "geneval"])
    source = make_geneval_folder(tmp_path / "geneval_out")
    assert "not one imported from GenEval's layout" in refusal(
        capsys, ["score", str(source), "--layout", "geneval", "--out", str(run)])
    assert "--out and --method-name are for --layout geneval" in refusal(
        capsys, ["score", str(run), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "empty_scored").exists() and not (tmp_path / "geneval_out_scored").exists()
