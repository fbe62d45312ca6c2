"""A small CLIP for the shapes world: the `clip` metric's model and the world's FID feature extractor.

    python -m benchmark.shapes.world_clip --out /tmp/world_clip                      # CPU
    python -m benchmark.shapes.world_clip --out /tmp/world_clip --device cuda --workers 6
    python -m benchmark.shapes.world_clip --out DIR --export benchmark/shapes/clip   # also ship it

An ordinary open_clip model (a ViT on 64 px images and a text transformer using open_clip's own tokenizer), its
architecture an open_clip model config (`CONFIG`, registered as `shapes-clip`), trained contrastively on rendered
scenes: open_clip has the model, the loss and the transforms, but no training loop that renders data on the fly,
so the loop is here (a few lines). A caption is the scene's full caption with its objects in random order (70%)
or one of its objects alone ("a red circle", 30%), so that the per-object phrases of the min-object score are in
the model's distribution. The loss is open_clip's `ClipLoss`; captions that repeat within a batch need nothing
special: their text embeddings are identical, so its cross-entropies already share the target between them.

With `--caption-mix` the captions also follow GenEval's grammar as the diffusion model's do (`captions.py`: counts,
relations, colourless names); `--init DIR --lock-image` then trains the text tower of a trained model only, so
that the image tower, whose features are the world's `fid`, is unchanged bit for bit and FID's reference with it:

    python -m benchmark.shapes.world_clip --out /tmp/clip_geneval --init benchmark/shapes/clip --lock-image \
        --caption-mix full=0.55,colourless=0.15,count=0.15,relation=0.15 --steps 1000 --batch 128 --lr 5e-4

`zero_shot_accuracy` reports what the model tells apart: single objects, colour binding in pairs, and the
grammar's counts, relations and colourless names against their alternatives.

The shipped folder holds `shapes-clip.json` (the config) and `open_clip_model.safetensors` (fp16).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sae.files import atomic_path

from .data import CLIP_STREAM, BatchStream, object_count
from .captions import draw_kind, parse_mix, scene_of_kind
from .world import Scene, caption_for, render, sample_scene

MODEL_NAME = "shapes-clip"
SHIPPED = Path(__file__).resolve().parent / "clip"
CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


def register() -> None:
    """Make `shapes-clip` a model name open_clip knows (its config is not among open_clip's own)."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    if MODEL_NAME not in _MODEL_CONFIGS:
        _MODEL_CONFIGS[MODEL_NAME] = json.loads(json.dumps(CONFIG))
    assert MODEL_NAME in open_clip.list_models()


def load(path: str | Path = SHIPPED, device: str = "cpu"):
    """(model, preprocess, tokenizer) of a trained world CLIP folder (or its safetensors file)."""
    import open_clip

    register()
    path = Path(path)
    weights = path / "open_clip_model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"no world CLIP weights at {weights}: train them with "
                                f"`python -m benchmark.shapes.world_clip --out DIR --export {SHIPPED}`")
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights), device=device)
    return model.float().eval(), preprocess, open_clip.get_tokenizer(MODEL_NAME)


def clip_batch(step: int, seed: int = 0, stream: int = CLIP_STREAM, batch_size: int = 256,
               caption_mix: dict[str, float] | None = None):
    """(images uint8 (B, 64, 64, 3), captions) of one CLIP training step (see the module docstring); with
    `caption_mix`, each image's caption kind is drawn by weight as the diffusion model's (`captions.py`), the
    `full` kind being the captions above."""
    rng = np.random.default_rng([seed, stream, step])
    images, captions = [], []
    for _ in range(batch_size):
        kind = draw_kind(rng, caption_mix) if caption_mix else "full"
        if kind != "full":
            scene, caption = scene_of_kind(rng, kind, UNIFORM_COUNTS, any_scene)
            images.append(render(scene))
            captions.append(caption)
            continue
        scene = sample_scene(rng)
        images.append(render(scene))
        labels = scene.labels
        if rng.random() < 0.3:
            captions.append(caption_for([labels[rng.integers(len(labels))]]))
        else:
            captions.append(caption_for([labels[i] for i in rng.permutation(len(labels))]))
    return np.stack(images), captions


UNIFORM_COUNTS = (0.25, 0.25, 0.25, 0.25)


def any_scene(rng: np.random.Generator, count_probs) -> Scene:
    """A scene of 1-4 objects drawn by `count_probs`, held-out pairs included: the CLIP is an instrument and judges
    every pair."""
    return sample_scene(rng, object_count(rng, count_probs))


def _to_model_input(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> what open_clip's preprocess makes of them (64 px: no resize; CLIP's mean/std)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_loss(image_features, text_features, logit_scale) -> torch.Tensor:
    """CLIP's symmetric cross-entropy (open_clip's ClipLoss) on normalised features."""
    from open_clip.loss import ClipLoss

    return ClipLoss()(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), logit_scale)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, device, n: int = 256, seed: int = 12345) -> dict:
    """Single objects: the right one of the 18 phrases; pairs: the right caption against the same pair with the
    colours swapped (what a bag-of-words model cannot tell apart)."""
    from .geometry import SHAPES
    from .world import COLOURS, scene_from_objects

    rng = np.random.default_rng(seed)
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    text = F.normalize(model.encode_text(tokenizer([caption_for([o]) for o in objects]).to(device)), dim=-1)
    labels = [objects[i] for i in rng.integers(len(objects), size=n)]
    images = np.stack([render(scene_from_objects([o], rng)) for o in labels])
    img = F.normalize(model.encode_image(_to_model_input(images, device)), dim=-1)
    single = float(np.mean([objects[int(i)] == o for i, o in zip((img @ text.T).argmax(1), labels, strict=False)]))
    right = 0
    pairs = 0
    for _ in range(n):
        (c1, s1), (c2, s2) = [objects[i] for i in rng.choice(len(objects), 2, replace=False)]
        if c1 == c2 or s1 == s2:
            continue
        image = render(scene_from_objects([(c1, s1), (c2, s2)], rng))[None]
        e = F.normalize(model.encode_image(_to_model_input(image, device)), dim=-1)
        t = F.normalize(model.encode_text(tokenizer([caption_for([(c1, s1), (c2, s2)]),
                                                     caption_for([(c2, s1), (c1, s2)])]).to(device)), dim=-1)
        scores = (e @ t.T)[0]
        right += int(scores[0] > scores[1])
        pairs += 1
    return {"single_object": single, "pair_binding": right / max(1, pairs),
            **grammar_accuracy(model, tokenizer, device, n, seed)}


@torch.no_grad()
def grammar_accuracy(model, tokenizer, device, n: int = 256, seed: int = 12345) -> dict:
    """GenEval's grammar (`captions.py`): the right caption among its alternatives, on the training mix's own
    scenes and captions.
    count: "three yellow squares" against two and four (chance 1/3); relation: "a red circle left of a blue
    square" against right of, above, below (chance 1/4); colourless: "a circle" against the other two shapes
    (chance 1/3)."""
    from benchmark.geneval.rules import RELATIONS, relation

    from .captions import NUMBER_WORDS, count_caption, relation_text
    from .data import training_scene
    from .geometry import SHAPES
    from .world import COLOURS, scene_from_objects

    def right_of(image, captions) -> bool:  # the first caption is the true one
        e = F.normalize(model.encode_image(_to_model_input(image[None], device)), dim=-1)
        t = F.normalize(model.encode_text(tokenizer(captions).to(device)), dim=-1)
        return bool((e @ t.T)[0].argmax() == 0)

    rng = np.random.default_rng([seed, 1])
    right = {"count": 0, "relation": 0, "colourless": 0}
    for _ in range(n):
        scene, caption = scene_of_kind(rng, "count", UNIFORM_COUNTS, training_scene)
        (colour, shape), count = scene.labels[0], len(scene.objects)
        others = [count_caption(colour, shape, c) for c in NUMBER_WORDS if c != count]
        right["count"] += right_of(render(scene), [caption, *others])
        scene, caption = scene_of_kind(rng, "relation", UNIFORM_COUNTS, training_scene)
        first, second = scene.objects
        where = relation(first.bbox(), second.bbox()).pop()  # the one relation its caption names
        others = [relation_text(first.label, w, second.label) for w in RELATIONS if w != where]
        right["relation"] += right_of(render(scene), [caption, *others])
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(3)]
        image = render(scene_from_objects([(colour, shape)], rng))
        right["colourless"] += right_of(image, [f"a {s}" for s in [shape, *(s for s in SHAPES if s != shape)]])
    return {kind: hits / n for kind, hits in right.items()}


def train(out: Path, steps: int = 3000, batch: int = 256, lr: float = 1e-3, warmup: int = 200, seed: int = 0,
          device: str = "cpu", workers: int = 0, export: Path | None = None, caption_mix: str = "",
          init: Path | None = None, lock_image: bool = False) -> dict:
    """Train (seeded; from scratch, or from the weights at `init`), save `out/open_clip_model.safetensors` and a
    report; optionally export fp16. `lock_image` freezes the image tower (open_clip's `lock_image_tower`), so that
    the `fid` features, which are that tower's, stay exactly what they were."""
    import open_clip
    from safetensors.torch import save_file

    register()
    mix = parse_mix(caption_mix) if caption_mix else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if init is not None:
        model = load(init, device)[0]
    else:
        model = open_clip.create_model(MODEL_NAME, device=device)
    if lock_image:
        model.lock_image_tower()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    stream = BatchStream(0, steps, workers, batch_fn=clip_batch, seed=seed, batch_size=batch, caption_mix=mix)
    t0 = time.time()
    log = []
    model.train()
    try:
        for step, (images, captions) in enumerate(tqdm(stream, total=steps, desc="world clip", dynamic_ncols=True)):
            factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr * factor
            image_features = model.encode_image(_to_model_input(images, device))
            text_features = model.encode_text(tokenizer(captions).to(device))
            loss = contrastive_loss(image_features, text_features, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if step % 50 == 0:
                log.append((step, loss.item()))
    finally:
        stream.close()
    model.eval()
    report = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "caption_mix": caption_mix,
              "init": str(init) if init else None, "lock_image": lock_image, "seconds": round(time.time() - t0, 1),
              "final_loss": log[-1][1] if log else None, **zero_shot_accuracy(model, tokenizer, device)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / "train_report.json").write_text(json.dumps({**report, "loss_curve": log}, indent=1))
    if export is not None:
        export = Path(export)
        export.mkdir(parents=True, exist_ok=True)
        with atomic_path(export / "open_clip_model.safetensors") as tmp:
            save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(tmp))
        (export / f"{MODEL_NAME}.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
        (export / "train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (0: inline)")
    p.add_argument("--export", type=Path, default=None, help="also write the fp16 weights and config here")
    p.add_argument("--caption-mix", default="", metavar="KIND=W,...",
                   help="caption kinds by weight, as the diffusion model's `train.py --caption-mix` (full = the "
                        "captions above); default: full captions only")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (a folder or safetensors file)")
    p.add_argument("--lock-image", action="store_true",
                   help="train the text tower only (the image tower, and so the fid features, unchanged)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = train(args.out, args.steps, args.batch, args.lr, seed=args.seed, device=args.device,
                   workers=args.workers, export=args.export, caption_mix=args.caption_mix, init=args.init,
                   lock_image=args.lock_image)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
