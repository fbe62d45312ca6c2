"""scripts/same_weights.py: the check behind "the training command reproduces the shipped weights bit for bit"."""

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "same_weights.py"


def pipeline_folder(path: Path, bias: torch.Tensor, config: str = "{}") -> Path:
    (path / "unet").mkdir(parents=True)
    save_file({"weight": torch.arange(6, dtype=torch.float16).reshape(2, 3), "bias": bias},
              path / "unet" / "diffusion_pytorch_model.safetensors")
    (path / "unet" / "config.json").write_text(config)
    return path


def compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True, timeout=120)


def test_identical_weights_pass_and_other_files_are_named(tmp_path):
    a = pipeline_folder(tmp_path / "a", torch.zeros(2, dtype=torch.float16))
    b = pipeline_folder(tmp_path / "b", torch.zeros(2, dtype=torch.float16), config='{"_name_or_path": "x"}')
    done = compare(a, b)
    assert done.returncode == 0
    assert "weights: 2/2 tensors bit-identical" in done.stdout
    assert "unet/config.json: differs (not weights)" in done.stdout


def test_one_changed_value_or_dtype_fails(tmp_path):
    a = pipeline_folder(tmp_path / "a", torch.zeros(2, dtype=torch.float16))
    changed = pipeline_folder(tmp_path / "b", torch.tensor([0.0, 1e-3], dtype=torch.float16))
    done = compare(a, changed)
    assert done.returncode == 1 and "weights: 1/2 tensors bit-identical" in done.stdout
    recast = pipeline_folder(tmp_path / "c", torch.zeros(2, dtype=torch.float32))
    assert compare(a, recast).returncode == 1
