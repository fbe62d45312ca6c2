"""`python -m benchmark run` killed by a real SIGKILL at named points (scripts/fault_sweep.py: after 1, 3 and 7
images, while an image waits for its score, while the tables and while the HTML report are written), then the same
command run to completion: the folder ends as an uninterrupted run's, with one image, one record and one score per
(method, prompt, seed)."""

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after 1 image", "after 3 images", "after 7 images", "while scoring",
                                   "writing the tables", "writing the HTML report"])
def test_a_kill_then_the_same_command_ends_as_an_uninterrupted_run(point, sweep, uninterrupted, tmp_path):
    html = point in sweep.HTML_POINTS
    out = tmp_path / "run"
    argv = sweep.command(uninterrupted["model"], uninterrupted["suite"], out, uninterrupted["cache"], html=html)
    condition, landed = sweep.KILL_POINTS[point]
    seen = sweep.kill_when(argv, out, condition)
    assert seen is not None, "the run ended before the kill"
    assert landed(seen), f"the kill landed elsewhere: {seen}"
    sweep.finish(argv)
    assert sweep.problems(out, uninterrupted["out"], html=html) == []


@pytest.mark.slow  # the uninterrupted run
def test_the_checks_see_a_missing_score_a_duplicate_and_other_tables(sweep, uninterrupted, tmp_path):
    """The sweep's checks are not blind: a copy of the uninterrupted run with one score line doubled, one removed,
    one image's record doubled in samples.jsonl and a table changed is found out on each count."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted["out"], out)
    assert sweep.problems(out, uninterrupted["out"]) == []
    scores = next((out / "scores").glob("*.jsonl"))
    lines = scores.read_text().splitlines(keepends=True)
    scores.write_text("".join(lines[1:] + lines[-1:]))
    samples = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(samples + samples[:1]))
    (out / "summary.csv").write_text((out / "summary.csv").read_text().replace("plain", "plian", 1))
    found = "\n".join(sweep.problems(out, uninterrupted["out"]))
    assert "scores/" in found and "missing [(" in found and "twice [(" in found
    assert "listed twice" in found and "summary.csv differs" in found
