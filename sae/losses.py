"""The Separate and Enhance losses on per-object attention maps, and the optional norm loss.

Maps are tensors `(..., K, H, W)` of K object maps with values in [0, 1] (cross-attention probabilities);
each loss returns a tensor of shape `(...)`, so a batch of prompts gives one loss per prompt.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAIR_REDUCTIONS = ("max", "mean")


def separate_loss(maps: torch.Tensor, pair_reduction: str = "max") -> torch.Tensor:
    """Separate: the soft intersection-over-union of object maps, at its worst pixel.

    For two maps: `max over pixels of M1 * M2 / (M1 + M2)`, as the release writes it (no epsilon). The
    denominator is zero only where both maps are (a probability that underflowed), and there the ratio is 0:
    it is clamped at float's smallest normal number, which changes no other value. For K >= 3 the paper's
    product of all K maps vanishes, so the loss is taken over every pair (i < j) and reduced with
    `pair_reduction`: "max" (default: the most overlapping pair, in the spirit of the max over pixels) or "mean"
    (all pairs). No smoothing.
    """
    if maps.dim() < 3 or maps.shape[-3] < 2:
        raise ValueError(f"separate_loss needs maps (..., K, H, W) with K >= 2, got shape {tuple(maps.shape)}")
    if pair_reduction not in PAIR_REDUCTIONS:
        raise ValueError(f"pair_reduction must be one of {PAIR_REDUCTIONS}, got {pair_reduction!r}")
    first, second = torch.triu_indices(maps.shape[-3], maps.shape[-3], offset=1, device=maps.device)
    a, b = maps[..., first, :, :], maps[..., second, :, :]
    per_pair = (a * b / (a + b).clamp_min(torch.finfo(maps.dtype).tiny)).amax(dim=(-2, -1))  # (..., pairs)
    return per_pair.amax(dim=-1) if pair_reduction == "max" else per_pair.mean(dim=-1)


# Enhance's smoothing kernels (size 3, sigma 0.5). "release": the normalised `exp(-((x - mean) / (2 sigma))^2)`
# that the SepEn release and Attend-and-Excite build, 1-D weights [0.212, 0.576, 0.212] (a textbook Gaussian of
# sigma * sqrt(2)); "textbook": the normalised `exp(-x^2 / (2 sigma^2))`, [0.107, 0.787, 0.107].
SMOOTHING_KERNELS = ("release", "textbook")


def smoothing_sigma(kernel: str = "release", sigma: float = 0.5) -> float:
    """The textbook Gaussian sigma that gives `kernel`'s weights."""
    if kernel not in SMOOTHING_KERNELS:
        raise ValueError(f"smoothing kernel must be one of {SMOOTHING_KERNELS}, got {kernel!r}")
    return sigma * math.sqrt(2) if kernel == "release" else sigma


def gaussian_smooth(maps: torch.Tensor, kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """Gaussian smoothing (normalised `exp(-x^2 / (2 sigma^2))`) of the last two dims, reflect padding.

    Written here because torchvision's `gaussian_blur` does not take arbitrary leading dimensions.
    """
    x = torch.arange(kernel_size, dtype=maps.dtype, device=maps.device) - (kernel_size - 1) / 2
    kernel_1d = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    kernel = torch.outer(kernel_1d, kernel_1d)[None, None]
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    pad = kernel_size // 2
    flat = F.pad(maps.reshape(-1, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(flat, kernel).reshape(*lead, h, w)


def enhance_peaks(maps: torch.Tensor, kernel: str = "release") -> torch.Tensor:
    """Each object's smoothed peak, `max over pixels of smooth(M_k)`: shape `(..., K)`."""
    if maps.dim() < 3 or maps.shape[-3] < 1:
        raise ValueError(f"enhance_loss needs maps (..., K, H, W) with K >= 1, got shape {tuple(maps.shape)}")
    return gaussian_smooth(maps, sigma=smoothing_sigma(kernel)).amax(dim=(-2, -1))


def enhance_loss(maps: torch.Tensor, kernel: str = "release") -> torch.Tensor:
    """Enhance: `1 - min over objects of (max over pixels of smooth(M_k))`: raises the weakest object's peak."""
    return 1 - enhance_peaks(maps, kernel).amin(dim=-1)


def norm_loss(prediction: torch.Tensor, frozen_prediction: torch.Tensor) -> torch.Tensor:
    """MSE between the finetuned UNet's noise prediction and the frozen base's on the same inputs."""
    return F.mse_loss(prediction.float(), frozen_prediction.float().detach())

