"""Measure the detector on seeded clean and corrupted renders, and save a sheet of examples to look at.

    python -m benchmark.shapes.selfcheck --n 1000 --png /tmp/shapes_check.png
"""

from __future__ import annotations

import argparse
from collections import Counter

from .corrupt import corrupt
from .detector import detect
from .viz import grid
from .world import render, sample_scene


def accuracy(n: int = 400, seed: int = 0, noisy: bool = False, size: int = 64, **corrupt_args) -> float:
    """Fraction of n random 1-4 object scenes whose detected (colour, shape) multiset equals the truth.

    Scene i uses seed `seed + i`; its corruption uses seed `seed + i + 10**6`.
    """
    right = 0
    for i in range(n):
        scene = sample_scene(seed + i)
        image = render(scene, size)
        if noisy:
            image = corrupt(image, seed + i + 10**6, **corrupt_args)
        right += Counter(d.label for d in detect(image)) == Counter(scene.labels)
    return right / n


def example_sheet(n: int = 16, seed: int = 0, size: int = 64):
    """n clean renders (first two rows) followed by their corrupted versions, with detections drawn."""
    scenes = [sample_scene(seed + i) for i in range(n)]
    clean = [render(s, size) for s in scenes]
    noisy = [corrupt(img, seed + i + 10**6) for i, img in enumerate(clean)]
    titles = [s.caption.replace(" and ", ", ") for s in scenes]
    return grid(clean + noisy, ncols=8, titles=titles + titles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--png", default=None, help="also save an example sheet here")
    args = parser.parse_args()
    print(f"clean: {accuracy(args.n, args.seed, size=args.size):.4f}")
    print(f"noisy: {accuracy(args.n, args.seed, noisy=True, size=args.size):.4f}")
    if args.png:
        example_sheet(seed=args.seed, size=args.size).save(args.png)
        print(f"saved {args.png}")


if __name__ == "__main__":
    main()
