"""The world CLIP: its loss, and the shipped model telling the world's objects and bindings apart."""

import math

import numpy as np
import pytest
import torch

from benchmark.shapes.geometry import SHAPES
from benchmark.shapes.world import COLOURS, caption_for, render, scene_from_objects
from benchmark.shapes.world_clip import SHIPPED, _to_model_input, clip_batch, contrastive_loss, load, train


def test_loss_is_clips_symmetric_cross_entropy_and_repeated_captions_share_the_target():
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # captions 0 and 1 are the same caption
    loss = contrastive_loss(image, text, torch.tensor(10.0)).item()
    logits = (10 * image @ text.T).tolist()

    def ce(row, target):
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    columns = [list(c) for c in zip(*logits)]
    expected = (sum(ce(logits[i], i) for i in range(3)) + sum(ce(columns[i], i) for i in range(3))) / 6
    assert loss == pytest.approx(expected, rel=1e-5)
    # the same as targets split evenly over the repeated caption (soft targets): no special case needed
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor(logits)
    by_soft = (-(soft * t.log_softmax(1)).sum(1).mean() - (soft * t.T.log_softmax(1)).sum(1).mean()) / 2
    assert loss == pytest.approx(by_soft.item(), rel=1e-5)


def test_batches_are_seeded_and_caption_their_scene():
    images, captions = clip_batch(3, batch_size=8)
    again, captions_again = clip_batch(3, batch_size=8)
    assert np.array_equal(images, again) and captions == captions_again
    assert images.shape == (8, 64, 64, 3) and all(c.startswith("a ") for c in captions)


def test_shipped_model_knows_every_object_and_its_binding():
    model, preprocess, tokenizer = load(SHIPPED)
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    rng = np.random.default_rng(7)
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokenizer([caption_for([o]) for o in objects])), dim=-1)
        images = np.stack([render(scene_from_objects([o], rng)) for o in objects])
        # the shipped preprocess (PIL, what the clip metric uses) and the training path agree
        from PIL import Image

        via_pil = torch.stack([preprocess(Image.fromarray(i)) for i in images])
        assert torch.allclose(via_pil, _to_model_input(images, "cpu"), atol=0.02)
        image = torch.nn.functional.normalize(model.encode_image(via_pil), dim=-1)
        assert (image @ text.T).argmax(1).tolist() == list(range(len(objects)))
        # binding: "a red circle and a blue square" beats the colours swapped
        pair = render(scene_from_objects([("red", "circle"), ("blue", "square")], rng))[None]
        e = torch.nn.functional.normalize(model.encode_image(_to_model_input(pair, "cpu")), dim=-1)
        t = torch.nn.functional.normalize(model.encode_text(tokenizer(
            ["a red circle and a blue square", "a blue circle and a red square"])), dim=-1)
        scores = (e @ t.T)[0]
        assert scores[0] > scores[1]


def test_training_runs_and_writes_a_loadable_model(tmp_path):
    report = train(tmp_path / "run", steps=2, batch=8, export=tmp_path / "shipped")
    assert report["steps"] == 2 and 0 <= report["single_object"] <= 1
    model, _, _ = load(tmp_path / "shipped")
    assert next(model.parameters()).dtype == torch.float32  # stored in fp16, loaded as fp32


def test_a_caption_mix_draws_scenes_its_captions_are_true_of():
    from benchmark.geneval.rules import relation
    from benchmark.shapes.captions import NUMBER_WORDS
    from benchmark.shapes.detector import detect

    images, captions = clip_batch(5, batch_size=12, caption_mix={"count": 1.0})
    words = {word: n for n, word in NUMBER_WORDS.items()}
    for image, caption in zip(images, captions):
        number, colour, shape = caption.split()
        found = detect(image)
        assert len(found) == words[number] and {(o.colour, o.shape) for o in found} == {(colour, shape[:-1])}
    images, captions = clip_batch(5, batch_size=12, caption_mix={"relation": 1.0})
    for image, caption in zip(images, captions):
        first, second = detect(image)  # two objects, named in the caption with what lies between them
        for a, b in ((first, second), (second, first)):
            named_a, named_b = caption_for([(a.colour, a.shape)]), caption_for([(b.colour, b.shape)])
            if caption.startswith(named_a + " ") and caption.endswith(" " + named_b):
                assert relation(a.bbox, b.bbox) == {caption[len(named_a) + 1:-len(named_b) - 1]}
                break
        else:
            pytest.fail(f"{caption!r} does not name the detected objects")


def test_locked_image_training_keeps_the_image_tower_and_so_the_fid_features(tmp_path):
    from safetensors.torch import load_file

    report = train(tmp_path / "run", steps=2, batch=8, lr=1e-2, caption_mix="count=1", init=SHIPPED, lock_image=True)
    assert report["lock_image"] and report["caption_mix"] == "count=1"
    before, after = load_file(SHIPPED / "open_clip_model.safetensors"), load_file(tmp_path / "run" /
                                                                                  "open_clip_model.safetensors")
    image_tower = [k for k in before if k.startswith("visual.")]
    assert image_tower and all(torch.equal(before[k].float(), after[k]) for k in image_tower)
    assert any(not torch.equal(before[k].float(), after[k]) for k in before if k.startswith("transformer."))
