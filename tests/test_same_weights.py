"""scripts/same_weights.py: the check behind "the training command reproduces the shipped weights bit for bit"."""

import importlib.util
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


def load_script():
    spec = importlib.util.spec_from_file_location("same_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(a: Path, b: Path, capsys) -> tuple[int, str]:
    """The script's exit code and what it printed (called in-process: the check, not the process, is tested)."""
    code = load_script().main([str(a), str(b)])
    return code, capsys.readouterr().out


def test_identical_weights_pass_and_other_files_are_named(tmp_path, capsys):
    a = pipeline_folder(tmp_path / "a", torch.zeros(2, dtype=torch.float16))
    b = pipeline_folder(tmp_path / "b", torch.zeros(2, dtype=torch.float16), config='{"_name_or_path": "x"}')
    code, printed = compare(a, b, capsys)
    assert code == 0
    assert "weights: 2/2 tensors bit-identical" in printed
    assert "unet/config.json: differs (not weights)" in printed


def test_one_changed_value_or_dtype_fails(tmp_path, capsys):
    a = pipeline_folder(tmp_path / "a", torch.zeros(2, dtype=torch.float16))
    changed = pipeline_folder(tmp_path / "b", torch.tensor([0.0, 1e-3], dtype=torch.float16))
    code, printed = compare(a, changed, capsys)
    assert code == 1 and "weights: 1/2 tensors bit-identical" in printed
    recast = pipeline_folder(tmp_path / "c", torch.zeros(2, dtype=torch.float32))
    assert compare(a, recast, capsys)[0] == 1
