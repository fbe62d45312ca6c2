"""The ideal shapes of the shapes world: one point-in-shape test each, and pixel coverage.

Every shape is axis-aligned and described by the centre (cx, cy) and side `s` of its bounding square:
a circle of diameter s, a square of side s, and an upright triangle (apex at top centre, base along the
bottom edge, so base = height = s). The renderer draws with `coverage`; the detector fits the same
`coverage` templates to the blobs it finds, so both sides agree on what each shape is.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle")

# Area of each shape as a fraction of its bounding square (s * s).
AREA_FRACTION = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}

# Outline length of each shape as a multiple of s (the triangle's two slanted sides are sqrt(5)/2 * s each).
PERIMETER = {"circle": np.pi, "square": 4.0, "triangle": 1.0 + np.sqrt(5.0)}

# Height of the triangle's centroid below the centre of its bounding square, as a fraction of s:
# the centroid sits 2/3 of the height below the apex, i.e. at -s/2 + 2s/3 = s/6.
TRIANGLE_CENTROID_OFFSET = 1.0 / 6.0


def inside(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, s: float,
           rotation: float = 0.0) -> np.ndarray:
    """Which points (x, y) (image coordinates, y down) lie inside `shape` centred at (cx, cy) with size s.

    `rotation` (degrees, clockwise on screen) turns the shape about (cx, cy); the world never rotates, the
    detector uses it to recognise rotated look-alikes (a diamond, a triangle pointing down).
    """
    h = s / 2.0
    dx, dy = x - cx, y - cy
    if rotation:
        # rotate the points the opposite way, then test against the upright shape
        a = np.deg2rad(rotation)
        dx, dy = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        t = (dy + h) / s  # 0 at the apex, 1 at the base; the half-width grows linearly from 0 to s/2
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= h * t)
    raise ValueError(f"unknown shape {shape!r}: use one of {SHAPES}")


def coverage(shape: str, cx: float, cy: float, s: float, height: int, width: int,
             supersample: int = 4, window: tuple[int, int, int, int] | None = None,
             rotation: float = 0.0) -> np.ndarray:
    """Fraction of each pixel covered by the shape, float32 in [0, 1].

    Pixel (row i, col j) is the unit square [j, j+1) x [i, i+1); it is sampled on a supersample x supersample
    grid, which gives anti-aliased edges. `window` = (x0, y0, x1, y1) restricts the output to that crop.
    `rotation` is as in `inside`.
    """
    x0, y0, x1, y1 = window if window is not None else (0, 0, width, height)
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).ravel()
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).ravel()
    hit = inside(shape, xs[None, :], ys[:, None], cx, cy, s, rotation)
    # (rows*ss, cols*ss) -> (rows, ss, cols, ss) -> mean over the sub-samples of each pixel
    hit = hit.reshape(y1 - y0, supersample, x1 - x0, supersample)
    return hit.mean(axis=(1, 3), dtype=np.float32)
