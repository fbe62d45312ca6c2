"""A run folder knows what it holds: each image's record carries a hash of its suite line and of its pixels, so a
suite with other prompts under the same ids, another suite, or an image that is not what its path says is never
counted as this run's; a suite given by path is scored by its own clauses."""

import json

import pytest
from PIL import Image, PngImagePlugin

from benchmark.cli import main
from benchmark.records import DAMAGED_SUFFIX, RECORD_KEY, image_path, read_jsonl, read_record

from test_refusals import run_argv


def suite_file(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pngs(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def pixels(out):
    """Each image's pixels and record but its timing."""
    result = {}
    for path in sorted(out.rglob("*.png")):
        with Image.open(path) as image:
            result[str(path.relative_to(out))] = (image.convert("RGB").tobytes(),
                                                  {k: v for k, v in read_record(path).items() if k != "seconds"})
    return result


def test_other_prompts_under_the_same_ids_are_refused_and_the_images_kept(tiny_model_dir, small_suite, tmp_path,
                                                                           capsys, no_relaunch):
    out = tmp_path / "run"
    mine = suite_file(tmp_path / "small.jsonl", [json.loads(line) for line in small_suite.read_text().splitlines()])
    assert main(run_argv(tiny_model_dir, mine, out)) == 0
    before = pngs(out)
    rows = [json.loads(line) for line in mine.read_text().splitlines()]
    rows[0]["prompt"] = "a dog and a cat"
    rows[0]["objects"] = rows[0]["objects"][::-1]
    suite_file(mine, rows)
    capsys.readouterr()
    for processes in ("1", "2"):
        assert main(run_argv(tiny_model_dir, mine, out)[:-1] + [processes]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "t/0" in err[0] and "another suite line" in err[0] and "--out" in err[0], err
    assert pngs(out) == before


def test_another_suite_into_a_run_folder_is_refused(tiny_model_dir, small_suite, tmp_path, capsys, no_relaunch):
    out = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, small_suite, out)) == 0
    other = suite_file(tmp_path / "other.jsonl", [{"id": "o/0", "prompt": "a frog and a bowl",
                                                  "objects": [{"name": "frog"}, {"name": "bowl"}]}])
    capsys.readouterr()
    assert main(run_argv(tiny_model_dir, other, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "suite small" in err[0] and "other" in err[0] and "--out" in err[0], err
    assert not (out / "images" / "plain" / "o_0").exists()


def test_records_carry_their_suite_line_hash_clauses_and_pixel_hash(tiny_model_dir, tmp_path):
    clauses = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    suite = suite_file(tmp_path / "mine.jsonl", [{"id": "m/0", "prompt": "a cat and a dog", "geneval": clauses,
                                                  "objects": [{"name": "cat"}, {"name": "dog"}]}])
    out = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, suite, out)) == 0
    path = image_path(out, "plain", "m/0", 0)
    record = read_record(path)
    assert record["geneval"] == clauses and len(record["line_sha256"]) == 64
    import hashlib

    with Image.open(path) as image:
        assert record["pixels_sha256"] == hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


@pytest.mark.parametrize("damage", ["another seed", "another prompt", "pixels", "middle bytes"])
def test_an_image_that_is_not_what_its_path_says_is_set_aside_and_made_again(tiny_model_dir, small_suite, tmp_path,
                                                                              capsys, damage):
    out = tmp_path / "run"
    argv = run_argv(tiny_model_dir, small_suite, out, "--seeds", "0-1", "--limit", "2")
    assert main(argv) == 0
    before = pixels(out)
    victim = image_path(out, "plain", "t/0", 1)
    if damage == "another seed":
        victim.write_bytes(image_path(out, "plain", "t/0", 0).read_bytes())
    elif damage == "another prompt":
        victim.write_bytes(image_path(out, "plain", "t/1", 1).read_bytes())
    elif damage == "pixels":  # a picture edited in a program that keeps its text chunks
        with Image.open(victim) as image:
            text, edited = image.text[RECORD_KEY], image.convert("RGB")
        edited.putpixel((0, 0), tuple(255 - v for v in edited.getpixel((0, 0))))
        info = PngImagePlugin.PngInfo()
        info.add_text(RECORD_KEY, text)
        edited.save(victim, pnginfo=info)
    else:  # damage inside the file: it still ends in IEND
        data = bytearray(victim.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(16)
        victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: {victim}" in err and "moved aside" in err, err
    assert victim.with_name(victim.name + DAMAGED_SUFFIX).exists()
    assert pixels(out) == before  # made again in this run, the same pixels
    assert len(read_jsonl(out / "samples.jsonl")) == 4


def test_a_suite_by_path_is_scored_by_its_own_clauses_and_gets_the_geneval_metric(tmp_path, capsys):
    """Its lines name the built-in GenEval suite and its ids, but ask for other shapes: its own clauses judge."""
    from benchmark.domains import prompts_dir

    rows = [json.loads(line) for line in (prompts_dir("shapes") / "geneval.jsonl").read_text().splitlines()[:1]]
    assert rows[0]["geneval"]["include"] == [{"class": "circle", "count": 1}]
    rows[0]["geneval"]["include"] = [{"class": "square", "count": 2}]
    suite = suite_file(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "run"
    assert main(["run", "--suite", str(suite), "--methods", "plain", "--steps", "2",
                 "--out", str(out), "--no-progress", "--no-html"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["metrics"] == ["geneval"] and config["seeds"] == [0, 1, 2, 3]
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 4 and all("square" in row["geneval_reason"] for row in rows), rows


@pytest.mark.parametrize("line, named", [
    ({"id": "x/0", "prompt": "a dragon", "objects": [{"name": "dragon"}]}, "'dragon'"),
    ({"id": "x/0", "prompt": "a magenta circle", "objects": [{"name": "circle", "attribute": "magenta"}]},
     "'magenta'"),
])
def test_an_object_the_world_does_not_know_is_refused_at_load_with_its_line(tmp_path, capsys, no_relaunch, line,
                                                                              named):
    suite = suite_file(tmp_path / "mine.jsonl", [{"id": "x/9", "prompt": "a red circle",
                                                  "objects": [{"name": "circle", "attribute": "red"}]}, line])
    out = tmp_path / "run"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--no-progress", "--processes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{suite}:2:" in err[0] and named in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("category", [["a", "b"], {"a": 1}, None, 3])
def test_a_category_that_is_not_a_string_is_refused_at_load(tiny_model_dir, tmp_path, capsys, no_relaunch, category):
    suite = suite_file(tmp_path / "mine.jsonl", [{"id": "c/0", "prompt": "a cat and a dog", "category": category,
                                                  "objects": [{"name": "cat"}, {"name": "dog"}]}])
    assert main(run_argv(tiny_model_dir, suite, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{suite}:1:" in err[0] and "category" in err[0], err


def test_score_lines_of_another_shape_are_named_skipped_and_scored_again(tiny_model_dir, small_suite, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    assert main(run_argv(tiny_model_dir, small_suite, out, "--metrics", "fake_metrics:MeanBrightness")) == 0
    scores = out / "scores" / "brightness.jsonl"
    whole = scores.read_text()
    scores.write_text('[1, 2]\n{"method": "plain"}\n{"method": "plain", "prompt_id": "t/0", "seed": 0, "values": 3}\n'
                      + whole)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {scores}: skipped 3 line(s) that are not score lines ({{method, prompt_id, seed, "
                   "values}); their images are scored again by the next run or score"], err
    assert all("brightness" in row for row in read_jsonl(out / "samples.jsonl"))


def test_an_image_whose_record_lacks_its_seed_is_set_aside_by_report_and_made_again_by_run(tiny_model_dir, small_suite,
                                                                                          tmp_path, capsys):
    out = tmp_path / "run"
    argv = run_argv(tiny_model_dir, small_suite, out)
    assert main(argv) == 0
    victim = image_path(out, "plain", "t/0", 0)
    with Image.open(victim) as image:
        record, picture = read_record(victim), image.convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, json.dumps({k: v for k, v in record.items() if k != "seed"}))
    picture.save(victim, pnginfo=info)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "holds no whole record (method, prompt_id, seed)" in capsys.readouterr().err
    assert main(argv) == 0
    assert read_record(victim)["seed"] == 0


def test_a_model_folder_without_its_tokenizer_is_one_line_before_any_process_starts(tiny_model_dir, small_suite,
                                                                                    tmp_path, capsys, no_relaunch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.rmtree(model / "tokenizer")
    out = tmp_path / "run"
    assert main(run_argv(model, small_suite, out)[:-1] + ["2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {model}: the pipeline folder has no tokenizer/ (model_index.json names it); download the "
                   "model again (`hf download ID --local-dir DIR`)"], err
    assert not out.exists()


def test_report_and_trace_delete_only_the_files_they_made(tiny_model_dir, small_suite, tmp_path):
    from benchmark.records import MANIFEST_NAME

    out = tmp_path / "run"
    argv = [a for a in run_argv(tiny_model_dir, small_suite, out, "--attention-prompts", "1") if a != "--no-html"]
    assert main(argv) == 0
    made = (out / MANIFEST_NAME).read_text().splitlines()
    assert "report/index.html" in made and "attention/t_0.png" in made and "attention/t_0.json" in made
    mine = {"report/notes.html": "<p>mine</p>", "report/attention/sketch.png": "mine", "attention/mine.json": "{}"}
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(["trace", str(out), "--prompts", "0"]) == 0  # clears the traces: the run's, not the user's
    assert not (out / "attention" / "t_0.png").exists() and not (out / "report" / "attention" / "t_0.png").exists()
    assert main(["report", str(out), "--html"]) == 0
    assert {name: (out / name).read_text() for name in mine} == mine
    assert (out / "report" / "index.html").is_file()
    assert "attention/t_0.png" not in (out / MANIFEST_NAME).read_text().splitlines()


def test_a_damaged_set_metric_file_is_named_left_out_and_made_again(tmp_path, capsys):
    from benchmark.records import read_derived_json
    from benchmark.report import read_set_scores

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "fid.sets.json").write_text('{"fingerprint": "abc", "groups": [')  # cut short
    assert read_set_scores(tmp_path) == ({}, {})
    assert read_derived_json(scores / "fid.sets.json") is None  # so score_sets computes it again
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"warning: {scores / 'fid.sets.json'} is damaged: left out, and made again by the next run or "
                      "score")
