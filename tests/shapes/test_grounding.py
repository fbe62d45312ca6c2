"""The attention-grounding loss for training the shapes model: masks, token positions, values by hand, gradients."""

import math

import numpy as np
import pytest
import torch

from benchmark.shapes.data import object_masks, training_batch
from benchmark.shapes.grounding import CaptionTokens, grounding_loss
from benchmark.shapes.world import Scene, SceneObject, caption_for, caption_objects
from sae.models import clip_tokenizer


def test_caption_objects_inverts_caption_for():
    objects = [("red", "circle"), ("blue", "square"), ("red", "triangle")]
    assert caption_objects(caption_for(objects)) == objects
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        caption_objects("a big red circle")


def test_object_masks_are_each_objects_cell_coverage():
    # a 16 px square centred at (20, 36) px covers x 12..28, y 28..44: at 8 px cells, columns 1.5..3.5 and rows
    # 3.5..5.5, i.e. 1 full cell, 4 half cells and 4 quarter cells (area 16*16/64 = 4 cells)
    square = SceneObject("red", "square", 20 / 64, 36 / 64, 16 / 64)
    circle = SceneObject("blue", "circle", 48 / 64, 12 / 64, 12 / 64)
    masks = object_masks(Scene((square, circle)), 8)
    assert masks.shape == (2, 8, 8)
    np.testing.assert_allclose(masks[0].sum(), 4.0, atol=1e-6)
    assert masks[0][4, 2] == 1.0 and masks[0][3, 2] == 0.5 and masks[0][3, 1] == 0.25 and masks[0][0, 0] == 0.0
    np.testing.assert_allclose(masks[1].sum(), math.pi * 6 ** 2 / 64, rtol=0.03)  # a circle of radius 6 px
    assert masks[1][:, :4].sum() == 0  # the circle lies in the right half


def test_masks_leave_the_batch_unchanged_and_follow_caption_order():
    images, captions = training_batch(3, batch_size=4)
    images_m, captions_m, masks = training_batch(3, batch_size=4, mask_side=8)
    assert (images == images_m).all() and captions == captions_m
    for caption, mask in zip(captions, masks):
        assert len(mask) == len(caption_objects(caption))


def test_caption_tokens_are_the_colour_and_shape_words():
    tokens = CaptionTokens(clip_tokenizer(77))
    # <start> a red circle and a red square <end>: positions 2, 3 belong to object 0 and 6, 7 to object 1
    assert tokens("a red circle and a red square") == [(2, 0), (3, 0), (6, 1), (7, 1)]


def _maps(side=4, tokens=10):
    return torch.full((2, side, side, tokens), 1.0 / tokens)


def test_loss_by_hand():
    tokens = CaptionTokens(clip_tokenizer(77))
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, :2, :2] = 1.0  # the object covers 4 of 16 cells
    maps = _maps()
    # uniform maps (0.1 everywhere): a quarter of each word's attention is on its object, and the cross-entropy of
    # p = 0.1 against the mask is -(4 log 0.1 + 12 log 0.9) / 16
    expected = (1 - 0.25) ** 2 - (4 * math.log(0.1) + 12 * math.log(0.9)) / 16
    loss = grounding_loss(maps, ["a red circle", ""], [mask, None], tokens)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # all of the words' attention on the object, with probability 1 there: both terms ~0
    maps[0, :, :, 2:4] = 0.0
    maps[0, :2, :2, 2:4] = 1.0
    assert grounding_loss(maps, ["a red circle", ""], [mask, None], tokens).item() < 1e-4


def test_gradient_reaches_only_the_object_words_of_kept_captions():
    tokens = CaptionTokens(clip_tokenizer(77))
    maps = _maps().requires_grad_(True)
    mask = np.ones((1, 4, 4), np.float32) * 0.5
    grounding_loss(maps, ["a red circle", ""], [mask, None], tokens).backward()
    touched = maps.grad.abs().sum(dim=(1, 2))
    assert touched[0, 2] > 0 and touched[0, 3] > 0  # "red", "circle" of the kept caption
    assert touched[0, [0, 1, 4, 5]].sum() == 0 and touched[1].sum() == 0  # other tokens, the dropped caption


def test_mask_size_must_match_the_maps():
    tokens = CaptionTokens(clip_tokenizer(77))
    with pytest.raises(ValueError, match="masks are"):
        grounding_loss(_maps(), ["a red circle", ""], [np.zeros((1, 8, 8), np.float32), None], tokens)


def test_without_the_pixel_term_only_where_counts_not_how_much():
    tokens = CaptionTokens(clip_tokenizer(77))
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, :2, :2] = 1.0
    faint, strong = _maps(), _maps()
    for maps, mass in ((faint, 0.01), (strong, 0.5)):  # all of the words' attention on the object, faint or strong
        maps[0, :, :, 2:4] = 0.0
        maps[0, :2, :2, 2:4] = mass
    token_only = [grounding_loss(m, ["a red circle", ""], [mask, None], tokens, pixel_weight=0).item()
                  for m in (faint, strong)]
    assert token_only == pytest.approx([0.0, 0.0], abs=1e-6)
    both = [grounding_loss(m, ["a red circle", ""], [mask, None], tokens).item() for m in (faint, strong)]
    assert both[0] > both[1] > 0  # the pixel term asks for probability 1 on the object
