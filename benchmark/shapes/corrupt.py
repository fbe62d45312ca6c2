"""Degrade a clean render the way a generated image is degraded, to test that the detector copes.

A diffusion model's image is never a clean render: colours drift, edges wobble, the background is not flat
and every pixel carries some noise. `corrupt` applies each of these in a mild, seeded form.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A smooth random field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def corrupt(image: np.ndarray, rng: np.random.Generator | int | None = None, noise: float = 12.0,
            blur: float = 0.8, warp: float = 0.5, background: float = 10.0,
            colour_shift: float = 8.0) -> np.ndarray:
    """A degraded copy of an RGB uint8 image; all amounts are in pixels or 0-255 levels, scaled to 64 px.

    warp: standard deviation of a smooth displacement field (edge noise: wobbly outlines).
    blur: Gaussian blur with sigma drawn uniformly from [0, blur].
    background: standard deviation of a smooth brightness variation across the image.
    colour_shift: standard deviation of a per-image offset of each channel.
    noise: standard deviation of independent Gaussian noise per pixel and channel.
    """
    rng = np.random.default_rng(rng)
    img = np.asarray(image, np.float32)
    h, w = img.shape[:2]
    scale = h / 64.0
    if warp > 0:
        rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
        dy = warp * scale * _smooth_field(rng, (h, w), 3 * scale)
        dx = warp * scale * _smooth_field(rng, (h, w), 3 * scale)
        img = np.stack([ndimage.map_coordinates(img[..., c], [rows + dy, cols + dx], order=1, mode="nearest")
                        for c in range(3)], axis=-1)
    if blur > 0:
        sigma = rng.uniform(0, blur) * scale
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    if background > 0:
        img += background * _smooth_field(rng, (h, w), 8 * scale)[..., None]
    if colour_shift > 0:
        img += colour_shift * rng.standard_normal(3).astype(np.float32)
    if noise > 0:
        img += noise * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
