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
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--arch", "tiny", "--steps", "4",
                           "--generation-steps", "2", "--rounds", "1", "--compile", "aot_eager",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["step_ratio"]["ratio"] > 0 and "finished" in report
    assert report["step_profile"]["fp32"]["ops"] > 0
    for name in ("fp32", "fp32_repeat", "tf32", "bf16", "bf16_compiled", "bf16_graph", "tf32_graph"):
        assert report[f"finetune_{name}"]["steps"] == 4, name
    # on the CPU every variant is the fp32 run (no autocast, TF32 or CUDA graph there)
    assert report["finetune_fp32_repeat"]["relative_delta_difference"] == 0
    assert report["finetune_bf16"]["max_abs_loss_difference_first_50"] == 0
    assert report["finetune_bf16_compiled"]["against_bf16"]["max_abs_loss_difference_first_50"] < 1e-5
    generation = report["generate"]
    assert generation["images"] == 8 and generation["harness_batch1_max_level_difference_to_default"] == 0
    for name in ("harness_channels_last_batch4", "harness_channels_last_batch8", "harness_compiled_batch4"):
        assert generation[name]["speedup_vs_diffusers_default"] > 0
        # batched images against one at a time: the same images up to a batch's rounding
        assert generation[name]["max_level_difference_to_harness_batch1"] <= 1
    assert generation["attend_excite_batch4_s_per_image"] > 0 and generation["sepen_tt_batch4_s_per_image"] > 0


@pytest.mark.slow
def test_gpu_check_dry_runs_the_sdxl_finetune_on_the_cpu(tmp_path):
    """The SDXL goal's command (`--arch sdxl-base --parts steps,finetune --variants bf16`), on the tiny SDXL."""
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--arch", "sdxl", "--parts",
                           "steps,finetune", "--steps", "3", "--rounds", "1", "--variants", "bf16",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["step_ratio"]["ratio"] > 0 and report["finetune_bf16"]["steps"] == 3
    assert "finetune_fp32" not in report  # only the variants asked for


@pytest.mark.slow
def test_gpu_run_check_dry_runs_on_the_cpu(tmp_path):
    """scripts/gpu_run_check.py (benchmark run against the library, the paper's projection, two ranks) on the tiny
    model: every part reports its figures."""
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_run_check.py"), "--arch", "tiny", "--steps",
                           "2", "--sepen-steps", "3", "--prompts", "2", "--seeds", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["benchmark_run"]["dtype"] == "float32" and report["benchmark_run"]["batch_size"] == 4
    assert report["generation"]["ratio"] > 0 and report["sepen"]["ratio"] > 0
    projection = report["projection"]
    assert projection["images_per_method"] == 276 * 64 and 0 < projection["ratio"]
    assert set(projection["ours_gpu_hours"]) == {"plain", "attend_excite", "sepen", "sepen_tt"}
    assert report["ranks"]["images"] == 4 and report["ranks"]["max_level_difference"] <= 1
    assert "finished" in report
