"""SepEn checkpoints: a safetensors file of the trained tensors only, with metadata, loaded onto a base UNet.

The file holds the finetuned values of the trained projections (e.g. every `attn2.to_k.weight`: 9.6M weights,
38 MB in fp32 for SD 1.x) under their UNet parameter names, and string metadata: the base model's id or path,
a fingerprint of its weights, the concepts, the training config and the library versions. Loading reads
tensors and JSON only (safetensors never unpickles), and refuses a base whose fingerprint differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .files import atomic_path

FORMAT = "sae-delta/1"
# Each UNet tensor contributes at most this many leading values to the fingerprint: enough to tell models
# apart, and cheap on SD's 860M weights.
FINGERPRINT_SAMPLE = 65536


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


class BaseModelMismatchError(CheckpointError):
    """The checkpoint was trained on other base weights than the pipeline's."""


def weights_fingerprint(unet, dtype: torch.dtype = torch.float16) -> str:
    """sha256 over a fixed sample of every UNet weight, rounded to `dtype`.

    Rounding to fp16 makes the fingerprint of an fp32 model equal to that of its fp16 copy; bf16 models get a
    fingerprint of their own (see `base_fingerprints`).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        sample = tensor.detach().flatten()[:FINGERPRINT_SAMPLE].to("cpu", dtype)
        digest.update(name.encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def base_fingerprints(unet) -> dict[str, str]:
    return {"float16": weights_fingerprint(unet, torch.float16),
            "bfloat16": weights_fingerprint(unet, torch.bfloat16)}


def fingerprint_key(unet) -> str:
    """Which of a checkpoint's base fingerprints applies to this UNet's dtype."""
    return "bfloat16" if unet.dtype == torch.bfloat16 else "float16"


def library_versions() -> dict[str, str]:
    import diffusers
    import safetensors
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__}


@dataclass
class Delta:
    """The trained tensors of a checkpoint and its metadata."""

    tensors: dict[str, torch.Tensor]
    base_model: str
    base_fingerprint: dict[str, str]
    concepts: list
    config: dict
    versions: dict

    @property
    def parameter_names(self) -> list[str]:
        return sorted(self.tensors)

    def digest(self) -> str:
        """sha256 of what the checkpoint means: its tensors (names, dtypes, shapes, bytes), base, concepts and
        config. Not of the file: safetensors writes the metadata in another order each time, so equal checkpoints
        can differ in bytes."""
        h = hashlib.sha256()
        for name in self.parameter_names:
            tensor = self.tensors[name].contiguous()
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        h.update(json.dumps([self.base_model, self.base_fingerprint, self.concepts, self.config], sort_keys=True,
                            default=str).encode())
        return h.hexdigest()


def save_delta(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, base_model: str,
               base_fingerprint: dict[str, str], concepts=(), config: dict | None = None) -> Path:
    """Write the trained tensors and metadata atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "base_model": str(base_model),
                "base_fingerprint": json.dumps(base_fingerprint), "concepts": json.dumps(list(concepts)),
                "config": json.dumps(config or {}, default=str), "versions": json.dumps(library_versions())}
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    bad = [name for name, t in cpu.items() if not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"refusing to save {path}: tensor {bad[0]} holds NaN or infinite values")
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)
    return path


def load_delta(path: str | os.PathLike) -> Delta:
    path = Path(path)
    if path.is_dir():
        inside = path / "sepen.safetensors"
        hint = f" (it holds {inside})" if inside.is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a folder{hint}: pass the .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: not a safetensors file ({err}); "
                              "pass a .safetensors file written by `python -m sae train`") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a SepEn checkpoint "
                              f"(format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        delta = Delta(tensors=tensors, base_model=metadata["base_model"],
                      base_fingerprint=json.loads(metadata["base_fingerprint"]),
                      concepts=json.loads(metadata["concepts"]), config=json.loads(metadata["config"]),
                      versions=json.loads(metadata["versions"]))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: its metadata is incomplete or damaged ({type(err).__name__}: {err}); "
                              "train it again with `python -m sae train`") from None
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} holds NaN or infinite values (a diverged training); "
                              "train it again with a lower learning rate")
    return delta


def check_base_model(unet, delta: Delta) -> None:
    """Raise `BaseModelMismatchError` unless `unet` holds the base weights the checkpoint was trained on."""
    key = fingerprint_key(unet)
    found = weights_fingerprint(unet, torch.bfloat16 if key == "bfloat16" else torch.float16)
    require_same_base(delta, found, key)


def require_same_base(delta: Delta, found: str, key: str = "float16") -> None:
    """Raise `BaseModelMismatchError` unless `found` is the checkpoint's base fingerprint for `key`."""
    expected = delta.base_fingerprint.get(key)
    if found != expected:
        raise BaseModelMismatchError(
            f"checkpoint was trained on base model {delta.base_model!r} (weights fingerprint "
            f"{str(expected)[:12]}), but this model's weights differ (fingerprint {found[:12]}): load that "
            "base model (and no other checkpoint on top of it)")


def check_fits(unet, delta: Delta) -> None:
    """Raise `CheckpointError` unless every tensor of the checkpoint is a parameter of `unet` of the same shape."""
    params = dict(unet.named_parameters())
    missing = [name for name in delta.tensors if name not in params]
    if missing:
        raise CheckpointError(f"checkpoint tensors not in this model's denoiser (e.g. {missing[0]}): "
                              "it was trained on another architecture")
    for name, tensor in delta.tensors.items():
        if params[name].shape != tensor.shape:
            raise CheckpointError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model's is "
                                  f"{tuple(params[name].shape)}: it was trained on another architecture")


def apply_delta(unet, delta: Delta | str | os.PathLike, check_base: bool = True) -> Delta:
    """Copy a checkpoint's tensors into `unet` (in place), after checking that it is the right base."""
    if not isinstance(delta, Delta):
        delta = load_delta(delta)
    check_fits(unet, delta)
    params = dict(unet.named_parameters())
    if check_base:
        check_base_model(unet, delta)
    with torch.no_grad():
        for name, tensor in delta.tensors.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    return delta
