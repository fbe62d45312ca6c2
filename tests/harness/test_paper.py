"""`benchmark paper`: both tables from run folders, the published numbers beside them, one command."""

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.paper import PUBLISHED_MAIN, large_table, main_table


def write_summary(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    return folder


def test_main_table_takes_the_all_rows_and_shows_the_paper_beside(tmp_path):
    run = write_summary(tmp_path / "main", [
        {"method": "plain", "category": "animal_animal", "presence_all_mean": 0.9, "fid": 1.0},
        {"method": "plain", "category": "all", "presence_all_mean": 0.25, "clip_full_mean": 0.3125, "fid": 40.5},
        {"method": "sepen", "category": "all", "presence_all_mean": 0.5, "clip_full_mean": 0.375, "fid": None},
        {"method": "sepen_tt", "category": "all", "presence_all_mean": 0.625, "fid": 41.0}])
    table = main_table(run, published=True)
    lines = table.splitlines()
    assert lines[2] == "| base model (plain) | 40.50 | n/a | 0.250 | 0.312 | n/a |"
    assert lines[3].startswith("| paper (unverified)") and f"{PUBLISHED_MAIN['plain']['fid']:.2f}" in lines[3]
    assert lines[4] == "| + Separate-and-Enhance (finetuned) | n/a | n/a | 0.500 | 0.375 | n/a |"
    assert lines[6] == "| + Separate-and-Enhance (test-time) | 41.00 | n/a | 0.625 | n/a | n/a |"
    assert lines[7] == "| paper (unverified): + Separate-and-Enhance (test-time) | 41.74 | 0.834 | 0.441 | n/a | n/a |"
    assert "paper" not in main_table(run, published=False)


def test_large_table_has_one_column_per_split(tmp_path):
    run = write_summary(tmp_path / "large", [
        {"method": m, "category": c, "presence_all_mean": v}
        for m, base in (("plain", 0.1), ("sepen", 0.2))
        for c, v in (("seen_seen", base), ("seen_unseen", base + 0.01), ("unseen_unseen", base + 0.02),
                     ("all", base + 0.03))])
    lines = large_table(run, published=False).splitlines()
    assert lines[0] == "| method | seen-seen | seen-unseen | unseen-unseen | all |"
    assert lines[3] == "| + Separate-and-Enhance (finetuned) | 0.200 | 0.210 | 0.220 | 0.230 |"


@pytest.mark.slow
def test_paper_on_a_shapes_model_prints_both_tables(tmp_path, capsys, monkeypatch):
    from benchmark.domains import get_domain
    from benchmark.shapes import domain
    from benchmark.shapes.model import build_pipeline
    from benchmark.shapes.train import save_pipeline

    # the tables' assembly is tested, not the images: 4 denoising steps, both SepEn recipes two training steps
    world = get_domain("shapes")
    monkeypatch.setitem(world.run_defaults, "steps", 4)
    monkeypatch.setattr(domain, "LARGE_STEPS", 2)
    for method in ("sepen", "sepen+ae"):
        monkeypatch.setitem(world.method_options[method], "steps", 2)

    pipe = build_pipeline()
    model = save_pipeline(tmp_path / "model", pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet)
    out = tmp_path / "paper"
    assert main(["paper", "--model", str(model), "--num-seeds", "1", "--limit", "1", "--out", str(out),
                 "--no-progress", "--metric-model", f"fid.cache={tmp_path / 'cache'}"]) == 0
    printed = capsys.readouterr().out
    assert "## Main comparison: `two_object`" in printed and "## Large scale" in printed
    assert (out / "paper.md").read_text() == printed
    main_methods = pd.read_csv(out / "main" / "summary.csv")["method"].drop_duplicates().tolist()
    assert main_methods == ["plain", "attend_excite", "sepen", "sepen_tt"]
    assert "| + Separate-and-Enhance (test-time) |" in printed
    large = pd.read_csv(out / "large" / "summary.csv")
    assert set(large["category"]) == {"seen_seen", "seen_unseen", "unseen_unseen", "all"}
    assert (out / "large_checkpoint" / "sepen.safetensors").is_file()
    assert len((out / "large_checkpoint" / "losses.csv").read_text().splitlines()) == 1 + 2  # header, two steps
    # GenEval's six tasks, one prompt each, judged exactly by the world's detector
    assert "## GenEval's six tasks: 1 seeds, first 1 prompts of each task" in printed
    assert "\n### GenEval tasks\n" in printed and "\n## GenEval tasks" not in printed  # subsections of it
    geneval = pd.read_csv(out / "geneval" / "summary.csv")
    assert set(geneval["category"]) == {"single_object", "two_object", "counting", "colors", "position",
                                        "color_attr", "all"}
    assert "GenEval-compatible (judge=shapes-exact)" in printed


def test_the_papers_tables_mark_methods_that_are_experiments_on_the_model(tmp_path):
    import json

    from benchmark.paper import method_name

    (tmp_path / "run_config.json").write_text(json.dumps({"methods": ["plain", "sepen"],
                                                          "experimental": {"sepen": "sd3"}}))
    name = method_name(tmp_path)
    assert name("sepen") == "+ Separate-and-Enhance (finetuned) (experimental on sd3)"
    assert name("plain") == "base model (plain)" and name("mine") == "mine"
