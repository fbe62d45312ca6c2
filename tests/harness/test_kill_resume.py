"""A run killed part-way by a real signal, then resumed, ends exactly as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parents[1]


def command(model, suite, out):
    return [sys.executable, "-m", "benchmark", "run", "--suite", str(suite), "--model", str(model),
            "--methods", "plain", "--seeds", "0-5", "--steps", "6", "--batch-size", "2", "--out", str(out),
            "--metrics", "fake_metrics:MeanBrightness", "--no-progress"]


def environment():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1"}


def images(run_dir):
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (run_dir / "images").rglob("*.png")}


@pytest.mark.slow
def test_kill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, small_suite, tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(tiny_model_dir, small_suite, killed), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if len(images(killed)) >= 3 if (killed / "images").exists() else False:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = images(killed)
    assert 3 <= len(before) < 12
    assert not (killed / "summary.csv").exists()

    done = subprocess.run(command(tiny_model_dir, small_suite, killed), env=environment(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = images(killed)
    assert len(after) == 2 * 6
    assert all(after[p] == stamp for p, stamp in before.items())  # nothing written before was made again
    samples = (killed / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 12 and len(set(samples)) == 12

    straight = tmp_path / "straight"
    done = subprocess.run(command(tiny_model_dir, small_suite, straight), env=environment(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (killed / "summary.csv").read_text() == (straight / "summary.csv").read_text()
    for path in (straight / "images").rglob("*.png"):  # pixels, not bytes: records hold timings
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(killed / path.relative_to(straight))))
