"""The shapes world: scenes of 1-4 coloured, non-overlapping shapes on a plain background, and their captions.

A `Scene` stores geometry in canvas fractions (0..1), so one scene renders at any size. Everything random
comes from a numpy Generator, so a seed fixes the scene. Captions read "a red circle and a blue square".
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from .geometry import SHAPES, coverage

# Six hues that stay apart in hue angle (red 0, orange 26, yellow 52, green 129, blue 223, purple 280
# degrees) and are all strongly saturated (chroma >= 130 of 255), so the detector can tell them from
# each other and from the grey background even under noise.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 120, 20),
    "yellow": (240, 210, 20),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "purple": (150, 50, 200),
}
COLOURS = tuple(PALETTE)
BACKGROUND = (240, 240, 240)  # light grey: neutral (no hue) and lighter than every palette colour

# Object size (side of the bounding square) as a fraction of the canvas: 12-22 px at 64 px, which stays
# recognisable at 64 px while four objects still fit.
MIN_SIZE, MAX_SIZE = 12 / 64, 22 / 64
GAP = 3 / 64     # empty space between bounding squares, so blur never merges two objects
MARGIN = 2 / 64  # empty space between an object and the canvas edge
MAX_OBJECTS = 4


@dataclass(frozen=True)
class SceneObject:
    """One shape; cx, cy (centre) and size (side of the bounding square) are fractions of the canvas."""

    colour: str
    shape: str
    cx: float
    cy: float
    size: float

    @property
    def label(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"

    def bbox(self, canvas: int = 64) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding square in pixels of a `canvas`-px image (x1, y1 exclusive)."""
        h = self.size / 2
        return tuple(v * canvas for v in (self.cx - h, self.cy - h, self.cx + h, self.cy + h))

    def centre(self, canvas: int = 64) -> tuple[float, float]:
        return (self.cx * canvas, self.cy * canvas)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int] = BACKGROUND

    @property
    def caption(self) -> str:
        return caption_for(o.label for o in self.objects)

    @property
    def labels(self) -> list[tuple[str, str]]:
        return [o.label for o in self.objects]


def caption_for(objects: Iterable[tuple[str, str]]) -> str:
    """("red", "circle"), ("blue", "square") -> "a red circle and a blue square"."""
    return " and ".join(f"a {colour} {shape}" for colour, shape in objects)


def caption_objects(caption: str) -> list[tuple[str, str]]:
    """The inverse of `caption_for`: "a red circle and a blue square" -> [("red", "circle"), ("blue", "square")]."""
    objects = []
    for phrase in caption.split(" and "):
        words = phrase.split()
        if len(words) != 3 or words[0] not in ("a", "an"):
            raise ValueError(f"{caption!r} is not a shapes-world caption ('a <colour> <shape> and ...')")
        objects.append((words[1], words[2]))
    return objects


def _check(colour: str, shape: str) -> None:
    if colour not in PALETTE:
        raise ValueError(f"unknown colour {colour!r}: use one of {COLOURS}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {SHAPES}")


def _apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Bounding squares (cx, cy, size) are separated by at least GAP along x or along y."""
    need = (a[2] + b[2]) / 2 + GAP
    return abs(a[0] - b[0]) >= need or abs(a[1] - b[1]) >= need


def scene_from_objects(objects: Sequence[tuple[str, str]], rng: np.random.Generator | int | None = None,
                       max_tries: int = 200) -> Scene:
    """A random non-overlapping layout for the given (colour, shape) list, kept in that order."""
    rng = np.random.default_rng(rng)
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    for colour, shape in objects:
        _check(colour, shape)
    # Rejection sampling: draw sizes, then place each object where it clears the ones already placed;
    # when one does not fit, start over with fresh sizes. Four objects fit easily, so this ends quickly.
    for _ in range(max_tries):
        sizes = rng.uniform(MIN_SIZE, MAX_SIZE, size=len(objects))
        placed: list[tuple[float, float, float]] = []
        for s in sizes:
            lo, hi = MARGIN + s / 2, 1 - MARGIN - s / 2
            for _ in range(50):
                cand = (rng.uniform(lo, hi), rng.uniform(lo, hi), s)
                if all(_apart(cand, p) for p in placed):
                    placed.append(cand)
                    break
            else:
                break
        if len(placed) == len(objects):
            return Scene(tuple(SceneObject(c, sh, float(x), float(y), float(s))
                               for (c, sh), (x, y, s) in zip(objects, placed, strict=False)))
    raise RuntimeError(f"could not place {len(objects)} objects without overlap")


def sample_scene(rng: np.random.Generator | int | None = None, num_objects: int | None = None,
                 colours: Sequence[str] | None = None, shapes: Sequence[str] | None = None) -> Scene:
    """A random scene: `num_objects` (default: uniform 1-4) objects, each an independent colour x shape.

    Colours and shapes are drawn from `colours` / `shapes` (default: all); repeats such as two red circles
    are allowed, as they would be in free-form prompts.
    """
    rng = np.random.default_rng(rng)
    colours = tuple(colours or COLOURS)
    shapes = tuple(shapes or SHAPES)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    labels = [(colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))]) for _ in range(n)]
    return scene_from_objects(labels, rng)


def render(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """The scene as an RGB uint8 array of shape (size, size, 3), with anti-aliased edges."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = scene.background
    for obj in scene.objects:
        alpha = coverage(obj.shape, obj.cx * size, obj.cy * size, obj.size * size, size, size, supersample)
        image += alpha[..., None] * (np.asarray(PALETTE[obj.colour], np.float32) - image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_pil(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a PIL RGB image."""
    return Image.fromarray(render(scene, size), "RGB")
