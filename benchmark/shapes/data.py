"""Training data for the shapes model: seeded scenes rendered on the fly, with held-out object pairs.

A batch is a pure function of (seed, stream, step), so a resumed run sees exactly the batches it would have
seen without the interruption, and worker processes can render batches ahead in any order.

Held-out pairs: the six pairs of objects in `HELDOUT_PAIRS` never appear together in a training caption (nor
image), whatever the other objects of the scene; each object alone, and with every other partner, is trained.
Every colour is in two held-out pairs and every shape in four, so the pairs test composition, not vocabulary.
"""

from __future__ import annotations

import numpy as np

from .captions import mixed_scene
from .geometry import coverage
from .world import render, sample_scene

HELDOUT_PAIRS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("red", "circle"), ("blue", "square")),
    (("orange", "triangle"), ("green", "circle")),
    (("yellow", "square"), ("purple", "triangle")),
    (("green", "square"), ("red", "triangle")),
    (("blue", "circle"), ("yellow", "triangle")),
    (("purple", "circle"), ("orange", "square")),
)

# Streams of the seeded data: different streams never share scenes.
VAE_STREAM, DIFFUSION_STREAM, DECODER_STREAM, CLIP_STREAM = 1, 2, 4, 5  # 3 is evaluate.py's


def has_heldout_pair(labels) -> bool:
    """True when the objects include both members of a held-out pair (in any order, with any others)."""
    present = set(map(tuple, labels))
    return any(a in present and b in present for a, b in HELDOUT_PAIRS)


def object_count(rng: np.random.Generator, count_probs) -> int:
    """1..4 objects, drawn by `count_probs`."""
    return int(rng.choice(len(count_probs), p=np.asarray(count_probs) / np.sum(count_probs))) + 1


def training_scene(rng: np.random.Generator, count_probs=(0.25, 0.25, 0.25, 0.25)):
    """A random scene whose object count follows `count_probs` (for 1..4 objects), free of held-out pairs."""
    n = object_count(rng, count_probs)
    while True:
        scene = sample_scene(rng, n)
        if not has_heldout_pair(scene.labels):
            return scene


def object_masks(scene, side: int, size: int = 64) -> np.ndarray:
    """(objects, side, side) float32: the fraction of each cell of a side x side grid that each object covers."""
    cell = size // side
    return np.stack([coverage(o.shape, o.cx * size, o.cy * size, o.size * size, size, size, supersample=1)
                     .reshape(side, cell, side, cell).mean(axis=(1, 3)) for o in scene.objects]).astype(np.float32)


def training_batch(step: int, seed: int = 0, stream: int = DIFFUSION_STREAM, batch_size: int = 32,
                   count_probs=(0.25, 0.25, 0.25, 0.25), caption_dropout: float = 0.0, mask_side: int = 0,
                   caption_mix: dict[str, float] | None = None):
    """(images uint8 (B, 64, 64, 3), captions) of one training step; a dropped caption is "".

    With `mask_side`, a third item: each scene's `object_masks` at that side, in caption order (the same scenes and
    captions either way). With `caption_mix` ({kind: weight}, `captions.CAPTION_KINDS`), each image's caption kind
    is drawn by weight (`captions.mixed_scene`); without it every caption is the full one.
    """
    rng = np.random.default_rng([seed, stream, step])
    images, captions, masks = [], [], []
    for _ in range(batch_size):
        if caption_mix:
            scene, caption = mixed_scene(rng, caption_mix, count_probs, training_scene)
        else:
            scene = training_scene(rng, count_probs)
            caption = scene.caption
        images.append(render(scene))
        captions.append("" if rng.random() < caption_dropout else caption)
        if mask_side:
            masks.append(object_masks(scene, mask_side))
    return (np.stack(images), captions, masks) if mask_side else (np.stack(images), captions)


class BatchStream:
    """Batches for steps start..stop-1 (`batch_fn(step, **kwargs)`, default `training_batch`), rendered in
    `workers` processes ahead of use (0: in this process)."""

    def __init__(self, start: int, stop: int, workers: int = 0, batch_fn=None, **kwargs):
        import functools

        self.fn = functools.partial(batch_fn or training_batch, **kwargs)
        self.steps = range(start, stop)
        self.pool = None
        self.workers = workers
        if workers > 0:
            import multiprocessing as mp

            self.pool = mp.get_context("fork").Pool(workers)

    def __iter__(self):
        if self.pool is None:
            yield from (self.fn(step) for step in self.steps)
            return
        # At most 2 batches per worker ahead: Pool.imap would render every batch of the run as fast as it can,
        # holding them all in memory and taking the CPU from the training process.
        import collections

        ahead = collections.deque()
        steps = iter(self.steps)
        for step in steps:
            ahead.append(self.pool.apply_async(self.fn, (step,)))
            if len(ahead) >= 2 * self.workers:
                break
        while ahead:
            batch = ahead.popleft().get()
            step = next(steps, None)
            if step is not None:
                ahead.append(self.pool.apply_async(self.fn, (step,)))
            yield batch

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None
