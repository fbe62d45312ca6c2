"""scripts/gpu_check.py dry-run on the CPU (tiny model, a few steps): every part runs and reports its figures, so
the script a GPU session runs cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_runs_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--arch", "tiny", "--steps", "2",
                           "--generation-steps", "2", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["ratio"] > 0
    assert report["finetune_no"]["steps"] == 2 and report["finetune_bf16"]["steps"] == 2
    comparison = report["bf16_vs_fp32"]
    assert comparison["speed_ratio_bf16_over_fp32"] > 0 and comparison["max_relative_key_difference"] >= 0
    generation = report["generate_float32"]
    assert generation["images"] == 4 and generation["speedup_vs_diffusers_default"] > 0
    # the harness's batched images against diffusers' one-at-a-time call: the same images up to batch rounding
    assert generation["max_level_difference_to_default"] <= 1
