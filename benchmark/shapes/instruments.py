"""The shapes world's instruments for the benchmark's metrics (domain "shapes"): the exact detector for
`presence` and as `geneval`'s judge, the world CLIP for `clip`, and the world CLIP's image tower against rendered
scenes for `fid`. BLIP has no counterpart here (`benchmark.shapes.domain` says so). `INSTRUMENTS` is the domain's
table.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..geneval.rules import register_class_list
from .geometry import SHAPES
from .suites import GENEVAL_CLASSES

register_class_list(GENEVAL_CLASSES, SHAPES)  # what the `geneval` suite's clauses name

REFERENCE_IMAGES = 1024  # rendered scenes for FID, 1-4 objects, uniform
REFERENCE_SEED = 7


class ExactDetector:
    """`presence`'s detector interface over the world's exact detector: a query is "colour shape", or a bare shape
    (found in any colour)."""

    @staticmethod
    def query_of(obj: dict) -> str:
        """The world's meaning of a suite object: its `query` ("yellow square" for "squares"), else its word; its
        colour comes from `attribute` whether or not the query says it (a suite line may leave `query` out)."""
        query, colour = obj.get("query") or obj["name"], obj.get("attribute")
        return f"{colour} {query}" if colour and not query.startswith(f"{colour} ") else query

    def detect(self, images, queries):
        from benchmark.metrics.presence import Detection

        from .detector import detect

        result = []
        for image, wanted in zip(images, queries, strict=True):
            found = detect(np.asarray(image.convert("RGB")))
            result.append([Detection(query=query, score=1.0, box=tuple(map(float, d.bbox)))
                           for d in found for query in (f"{d.colour} {d.shape}", d.shape) if query in wanted])
        return result


def object_problem(obj) -> str | None:
    """Why the world cannot draw or detect a suite object (a shape or colour it does not have), or None: such an
    object could only ever be scored missing."""
    from .world import COLOURS

    *colours, shape = ExactDetector.query_of(vars(obj)).split()
    if shape not in SHAPES:
        return (f"object {obj.name!r}: the shapes world draws only {', '.join(SHAPES)} (a word that differs, like "
                "\"squares\", needs a `query` naming the shape: \"yellow square\")")
    if len(colours) > 1 or (colours and colours[0] not in COLOURS):
        return f"object {obj.name!r}: colour {' '.join(colours)!r} is not one of the world's ({', '.join(COLOURS)})"
    return None


def _presence(context):
    return ExactDetector(), ("the shapes world's exact detector (benchmark/shapes/detector.py: palette colour "
                             "segmentation, shape fit by IoU; >= 99% right on rendered scenes); an object is found "
                             "when a blob of its colour fits its shape; count-aware")


class ExactGenEvalDetector:
    """GenEval's detector interface over the world's exact detector: per image {shape: [Detected]}, each blob's box
    (pixels, far edge exclusive), score 1.0 and its palette colour, so that no colour classifier is needed."""

    def detect(self, images):
        from benchmark.geneval.rules import Detected

        from .detector import detect

        found = []
        for image in images:
            per_class: dict[str, list] = {}
            for d in detect(np.asarray(image.convert("RGB"))):  # reading order; blobs that fit no shape are left out
                per_class.setdefault(d.shape, []).append(Detected(tuple(map(float, d.bbox)), 1.0, colour=d.colour))
            found.append(per_class)
        return found


def _geneval(context):
    from benchmark.metrics.geneval import Judge

    return Judge("shapes-exact", ExactGenEvalDetector(), None,
                 "GenEval's rules with the shapes world's exact detector (benchmark/shapes/detector.py): classes = "
                 "the three shapes, every blob that fits one a detection of score 1.0 with its box; colour = the "
                 "blob's palette colour (exact, no CLIP)")


@functools.cache
def world_clip_name() -> str:
    """The shipped world CLIP named with its weights' digest: a retrained CLIP is another instrument, so FID's
    cached reference statistics (keyed by this name) and the recorded conventions change with it."""
    import hashlib

    from .world_clip import SHIPPED

    digest = hashlib.sha256((SHIPPED / "open_clip_model.safetensors").read_bytes()).hexdigest()[:12]
    return f"benchmark/shapes/clip, weights sha256 {digest}"


@functools.cache
def _world_clip(device: str):
    """The shipped world CLIP, loaded once per device: `clip` and `fid` share it (neither changes it)."""
    from .world_clip import SHIPPED, load

    return load(SHIPPED, device=device)


def _clip(context):
    model, preprocess, tokenizer = _world_clip(context.device)
    return model, preprocess, tokenizer, (
        f"the shapes world's CLIP ({world_clip_name()}, open_clip config shapes-clip, trained on rendered scenes); "
        "bare captions, no templates; cosine; min-object splits the prompt on ' and ' and takes the per-image "
        "minimum; clip_full_tm = max(100 * cos, 0)")


def _fid_extractor(context):
    from benchmark.metrics.fid import OpenClipFeatures

    model, preprocess, _ = _world_clip(context.device)
    return OpenClipFeatures(model, preprocess, f"shapes-clip image tower ({world_clip_name()})", context.device)


def reference_folder(root: Path | None = None, n: int = REFERENCE_IMAGES, seed: int = REFERENCE_SEED) -> Path:
    """A folder of `n` rendered scenes (written once, atomically, then reused)."""
    import os
    import shutil

    from .world import render_pil, sample_scene

    root = Path(root or Path.home() / ".cache" / "sae" / "shapes_reference")
    folder = root / f"scenes_{n}_seed{seed}"
    if (folder / "done").is_file():
        return folder
    tmp = root / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng([seed, 99])
    for i in range(n):
        render_pil(sample_scene(rng)).save(tmp / f"{i:05d}.png")
    (tmp / "done").write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _fid_reference(context):
    cache = context.model_paths.get("fid.cache")
    return reference_folder(Path(cache) / "shapes_reference" if cache else None)


def _fid(context):
    from benchmark.metrics.fid import FidInstrument

    return FidInstrument(extractor=_fid_extractor, reference=_fid_reference)


# metric -> factory(MetricContext): what each metric measures with in this world
INSTRUMENTS = {"presence": _presence, "clip": _clip, "fid": _fid, "geneval": _geneval}
