"""Speed switches for GPUs that leave the results as they are (within stated tolerances).

- `frozen_weights_in(module, dtype, keep)`: for mixed-precision training, the frozen linear and convolution
  weights cast once for the whole run instead of by autocast at every layer call (autocast re-casts weights
  that need no gradient on every forward); autocast computes the same numbers from them, and the original
  tensors are put back, untouched, when the context ends.
- `compile_blocks(unet)`: `torch.compile` of the UNet's repeated blocks (resnets and transformer blocks), not of
  the whole UNet: attention capture raises `StopForward` and records maps from inside the blocks, which a
  whole-model graph cannot hold; block by block, the captured layers fall back to eager and the rest is fused.
- `for_inference(pipe)`: channels-last memory for the UNet and the VAE (what cuDNN's half-precision
  convolutions are fastest with) and, optionally, the compiled blocks.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def has_bf16(device) -> bool:
    """Whether `device` computes in bf16 natively: a GPU of compute capability 8 (Ampere) or later. torch's own
    `is_bf16_supported` also says yes where bf16 is only emulated (V100, T4): slow there, or refused."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


@contextmanager
def frozen_weights_in(module: torch.nn.Module, dtype: torch.dtype | None, keep=()):
    """The weights and biases of `module`'s linear and convolution layers that are not in `keep` hold `dtype`
    copies while the context is open: the layers autocast runs in `dtype`, so under autocast the results are
    the same (normalisation layers, which autocast runs in fp32, keep theirs). The originals are put back as
    they were (the same tensors). `dtype=None` changes nothing.
    """
    if dtype is None:
        yield module
        return
    keep_ids = {id(p) for p in keep}
    originals = {}
    for layer in module.modules():
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        for param in layer.parameters(recurse=False):
            if id(param) not in keep_ids and param.is_floating_point() and param.dtype != dtype:
                originals[param] = param.data
                param.data = param.data.to(dtype)
    try:
        yield module
    finally:
        for param, data in originals.items():
            param.data = data


def repeated_blocks(unet) -> list[torch.nn.Module]:
    """The UNet's resnet and transformer blocks: the units `compile_blocks` compiles."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    return [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, BasicTransformerBlock))]


def compile_blocks(unet, **compile_kwargs) -> int:
    """`torch.compile` each resnet and transformer block of `unet` in place; returns how many.

    Blocks of one class and shape share their compiled code, so a UNet costs a handful of compilations, paid
    at the first forward (and backward) of each shape. `compile_kwargs` go to `torch.compile` (e.g.
    `backend="aot_eager"` to check equality without a compiler, `mode="max-autotune-no-cudagraphs"`).
    """
    blocks = repeated_blocks(unet)
    # one compiled variant per block shape: SD's UNet has more than dynamo's default limit of 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in blocks:
        block.compile(**compile_kwargs)
    return len(blocks)


def for_inference(pipe, channels_last: bool = True, compile: bool = False, **compile_kwargs):
    """The pipeline set up for fast sampling: channels-last UNet and VAE, optionally compiled blocks."""
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        compile_blocks(pipe.unet, **compile_kwargs)
    return pipe
