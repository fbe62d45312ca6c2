"""An exact detector for the shapes world: which (colour, shape) objects an image shows.

Pipeline: smooth away pixel noise -> label each pixel with the nearest palette hue (or background) ->
connected components per colour -> drop specks -> fit each ideal shape (same area, same centroid) to the
blob and keep the best fit if the blob's outline strays little from it; blobs that fit no shape are
"unknown".
Squares are judged axis-aligned as the world draws them; triangles may point up, down, left or right.
Thresholds were set on seeded renders, clean and through `corrupt` (see selfcheck.py and the tests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from .geometry import AREA_FRACTION, PERIMETER, TRIANGLE_CENTROID_OFFSET, coverage
from .world import PALETTE

UNKNOWN = "unknown"

# --- thresholds; pixel amounts are for a 64 px image and scale with the image size ---
SMOOTH_SIGMA = 1.0   # Gaussian pre-blur (px): divides independent pixel noise by ~3.5, keeps 12 px shapes
MIN_CHROMA = 50      # chroma (max-min of RGB, 0-255) after white balance: the palette's weakest colour
                     # (green) has 130, so this keeps pixels at least ~40% covered by a shape
MIN_VALUE = 60       # darker pixels have unreliable hue; no palette colour is that dark
MAX_HUE_DISTANCE = 30.0  # degrees from the nearest palette hue; farther ones (lime, cyan) are no colour
MIN_AREA = 30        # px; the smallest world object (a 12 px triangle) has 72; anything under 30 is a speck
# How far (px) a blob's outline may stray, on average, from its best-fitting ideal shape. Clean renders
# stray <= 0.42 px (pixel staircase); through `corrupt` 99% stray <= ~0.6 px. Stars, propellers, lumpy
# blobs, L shapes, half discs, crescents, dumbbells, bars and lines stray >= 0.95 px (mostly > 1.4 px);
# only small blunt three-lobed blobs (~16 px), which look like rounded triangles, come as close as ~0.6 px.
MAX_OFFSET = 0.7
# Longest over shortest axis of the blob. Circles and squares are 1.0 (up to 1.31 when corrupted); the
# world's triangle is 1.15 (up to 1.5 when a small one loses its apex). A small (~14 px) 1.5:1 oval
# strays only ~0.6 px from a same-area circle, so elongation is what rejects it.
MAX_ELONGATION = {"circle": 1.35, "square": 1.35, "triangle": 1.6}


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str                             # "circle", "square", "triangle" or "unknown" (fits none)
    bbox: tuple[int, int, int, int]        # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive
    area: int                              # pixels in the blob
    score: float                           # IoU of the blob with its best-fitting ideal shape, 0-1

    @property
    def label(self) -> tuple[str, str]:
        return (self.colour, self.shape)


def to_array(image) -> np.ndarray:
    """A PIL image or an HxWx3 RGB array as float32 in 0-255; float arrays whose max is <= 1 count as 0-1."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
        return arr.astype(np.float32) * 255.0
    return arr.astype(np.float32)


def hue_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees 0-360), chroma (max-min) and value (max) of RGB values in 0-255, last axis = channel."""
    rgb = np.asarray(rgb, np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value, chroma = rgb.max(-1), rgb.max(-1) - rgb.min(-1)
    c = np.where(chroma > 0, chroma, 1.0)
    hue = np.select([value == r, value == g], [((g - b) / c) % 6, (b - r) / c + 2], (r - g) / c + 4)
    return hue * 60.0, chroma, value


COLOUR_NAMES = tuple(PALETTE)
PALETTE_HUES = hue_chroma(np.array(list(PALETTE.values()), np.float32))[0]


def colour_labels(image) -> np.ndarray:
    """Per pixel: index into COLOUR_NAMES of its palette colour, or -1 for background / no palette colour."""
    img = to_array(image)
    scale = min(img.shape[:2]) / 64.0
    img = ndimage.gaussian_filter(img, (SMOOTH_SIGMA * scale, SMOOTH_SIGMA * scale, 0))
    # The background is whatever fills the image border (objects never cover much of it). Scaling the
    # channels so that it becomes neutral grey removes a colour cast; otherwise the anti-aliased edge of
    # a red shape on a yellowish background turns orange.
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    background = np.maximum(np.median(border, axis=0), 1.0)
    img = img * (background.mean() / background)
    hue, chroma, value = hue_chroma(img)
    diff = np.abs(hue[..., None] - PALETTE_HUES)
    diff = np.minimum(diff, 360.0 - diff)  # hue is an angle
    coloured = (chroma >= MIN_CHROMA) & (value >= MIN_VALUE) & (diff.min(-1) <= MAX_HUE_DISTANCE)
    # Majority vote over a 5x5 neighbourhood: a few edge pixels whose hue strays to the neighbouring
    # palette colour join the colour of the object they belong to instead of splitting it.
    nearest = diff.argmin(-1)
    votes = [ndimage.uniform_filter(((nearest == k) & coloured).astype(np.float32), 5)
             for k in range(len(COLOUR_NAMES))]
    return np.where(coloured, np.argmax(votes, axis=0), -1)


# Ideal shapes fitted to each blob: (name reported, geometry shape, rotation in degrees). Besides the
# world's three upright shapes, a triangle pointing another way is still "a triangle" to a person, while
# a square standing on a corner is "a diamond": it is fitted only so that it is not taken for a circle.
TEMPLATES = (
    ("circle", "circle", 0), ("square", "square", 0),
    ("triangle", "triangle", 0), ("triangle", "triangle", 90), ("triangle", "triangle", 180),
    ("triangle", "triangle", 270), (UNKNOWN, "square", 45),
)


def elongation(mask: np.ndarray) -> float:
    """Ratio of the blob's longest to shortest axis (sqrt of the covariance eigenvalue ratio); 1 = round."""
    ys, xs = np.nonzero(mask)
    eig = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(np.float64)) + np.eye(2) / 12.0)
    return float(np.sqrt(eig[1] / eig[0]))


def fit_shape(mask: np.ndarray, scale: float = 1.0) -> tuple[str, float]:
    """Best-fitting shape of a binary blob (cropped to its bounding box) and its IoU; "unknown" if none fits.

    Each ideal shape is placed with the blob's area and centroid (robust to stray edge pixels, unlike
    the bounding box) and compared on soft (anti-aliased) coverage. The fit is judged by the mismatched
    area per unit of outline, i.e. how far (px) the blob's outline strays from the ideal one on average:
    unlike IoU, this does not get harsher for small shapes, where a pixel of wobble is a larger share.
    """
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    my, mx = ys.mean() + 0.5, xs.mean() + 0.5  # pixel centres sit at +0.5
    h, w = mask.shape
    best, best_iou, best_offset = UNKNOWN, 0.0, np.inf
    for name, shape, rotation in TEMPLATES:
        s = np.sqrt(area / AREA_FRACTION[shape])  # the template has the blob's area...
        cx, cy = mx, my
        if shape == "triangle":  # ...and its centroid, which sits s/6 from the box centre towards the base
            a = np.deg2rad(rotation)
            shift = s * TRIANGLE_CENTROID_OFFSET
            cx, cy = mx + np.sin(a) * shift, my - np.cos(a) * shift
        # Only the overlap needs the template, and it lies inside the blob's box. With equal areas,
        # the mismatched area (blob minus template plus template minus blob) is 2 * (area - overlap).
        overlap = float(coverage(shape, cx, cy, s, h, w, rotation=rotation)[mask].sum())
        offset = 2.0 * (area - overlap) / (PERIMETER[shape] * s)
        if offset < best_offset:
            best, best_iou, best_offset = name, overlap / (2.0 * area - overlap), offset
    good = (best != UNKNOWN and best_offset <= MAX_OFFSET * scale
            and elongation(mask) <= MAX_ELONGATION[best])
    return (best if good else UNKNOWN), best_iou


def detect(image, keep_unknown: bool = False) -> list[Detection]:
    """Every palette-coloured shape in the image, in reading order (top to bottom, left to right).

    Blobs smaller than MIN_AREA are ignored as specks; larger blobs that fit no shape are returned as
    shape "unknown" only when keep_unknown is set.
    """
    labels = colour_labels(image)
    scale = min(labels.shape) / 64.0
    min_area = MIN_AREA * scale * scale
    found = []
    for index, colour in enumerate(COLOUR_NAMES):
        components, _ = ndimage.label(labels == index)
        for k, box in enumerate(ndimage.find_objects(components), start=1):
            mask = ndimage.binary_fill_holes(components[box] == k)
            area = int(mask.sum())
            if area < min_area:
                continue
            shape, score = fit_shape(mask, scale)
            if shape == UNKNOWN and not keep_unknown:
                continue
            bbox = (box[1].start, box[0].start, box[1].stop, box[0].stop)
            found.append(Detection(colour, shape, bbox, area, round(score, 4)))
    return sorted(found, key=lambda d: (d.bbox[1], d.bbox[0]))


def match(detections: Iterable[Detection], objects: Sequence[tuple[str, str]]) -> dict:
    """Count-aware comparison of detections with the wanted (colour, shape) objects.

    Returns found (wanted and detected), missed (wanted, not detected), extra (detected, not wanted),
    unknown (number of blobs that fit no shape), and all_found / exact (all found; and nothing else).
    Two wanted red circles need two detected red circles; a third one is an extra.
    """
    detections = list(detections)
    seen = Counter(d.label for d in detections if d.shape != UNKNOWN)
    wanted = Counter(tuple(o) for o in objects)
    found, missed, extra = wanted & seen, wanted - seen, seen - wanted
    return {
        "found": sorted(found.elements()),
        "missed": sorted(missed.elements()),
        "extra": sorted(extra.elements()),
        "unknown": sum(d.shape == UNKNOWN for d in detections),
        "all_found": not missed,
        "exact": not missed and not extra,
    }


def presence(image, objects: Sequence[tuple[str, str]]) -> dict:
    """Which wanted (colour, shape) objects the image shows; see `match` for the keys."""
    return match(detect(image, keep_unknown=True), objects)
