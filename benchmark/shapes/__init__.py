"""The shapes world: coloured geometric shapes on a plain background, with captions and an exact detector.

    scene = sample_scene(seed)            # 1-4 non-overlapping objects
    image = render(scene, size=64)        # RGB uint8 array; render_pil for a PIL image
    scene.caption                         # "a red circle and a blue square"
    detect(image)                         # [Detection(colour, shape, bbox, area, score), ...]
    presence(image, [("red", "circle")])  # found / missed / extra, count-aware
"""

from .corrupt import corrupt
from .detector import UNKNOWN, Detection, detect, match, presence
from .geometry import SHAPES
from .viz import draw_detections, grid
from .world import (BACKGROUND, COLOURS, PALETTE, Scene, SceneObject, caption_for, render, render_pil,
                    sample_scene, scene_from_objects)

__all__ = [
    "BACKGROUND", "COLOURS", "PALETTE", "SHAPES", "UNKNOWN", "Detection", "Scene", "SceneObject",
    "caption_for", "corrupt", "detect", "draw_detections", "grid", "match", "presence", "render",
    "render_pil", "sample_scene", "scene_from_objects",
]
