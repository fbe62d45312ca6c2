import pytest
import torch

from sae.attention import (CaptureAttnProcessor, StopForward, capture_cross_attention, cross_attention_layers,
                           object_maps, sharpened_text_maps, split_guidance)
from sae.finetune import encode_prompts


def unet_inputs(pipe, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(prompts), 4, 32, 32, generator=g)
    return latents, torch.tensor([500] * len(prompts)), encode_prompts(pipe, prompts)


def test_quarter_resolution_layers_are_those_of_sd(tiny_pipe):
    names = cross_attention_layers(tiny_pipe.unet)
    blocks = sorted({n.split(".attentions")[0] for n in names})
    assert blocks == ["down_blocks.2", "up_blocks.1"]
    assert all(".attn2." in n for n in names)
    # at 1/8 only the mid block attends (down_blocks.3 and up_blocks.0 have no attention, as in SD)
    assert cross_attention_layers(tiny_pipe.unet, downscale=8) == [
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    with pytest.raises(ValueError, match="no cross-attention layer at 1/16"):
        cross_attention_layers(tiny_pipe.unet, downscale=16)


def test_maps_are_probabilities_summing_to_one(tiny_pipe):
    latents, t, text = unet_inputs(tiny_pipe, ["a cat and a dog", "a red car"])
    with torch.no_grad(), capture_cross_attention(tiny_pipe.unet) as store:
        tiny_pipe.unet(latents, t, encoder_hidden_states=text)
        maps = store.maps()
    assert maps.shape == (2, 8, 8, 77)
    assert maps.min() >= 0
    assert torch.allclose(maps.sum(-1), torch.ones(2, 8, 8), atol=1e-5)
    assert not torch.allclose(maps[0], maps[1])  # per prompt, not pooled over the batch


def test_maps_match_a_hand_computed_softmax(tiny_pipe):
    unet = tiny_pipe.unet
    name = cross_attention_layers(unet)[0]
    attn = unet.get_submodule(name.removesuffix(".processor"))
    seen = {}
    attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0] if a else kw["hidden_states"],
                                                                  ctx=kw["encoder_hidden_states"]),
                                   with_kwargs=True)
    latents, t, text = unet_inputs(tiny_pipe, ["a cat and a dog"])
    with torch.no_grad(), capture_cross_attention(unet) as store:
        unet(latents, t, encoder_hidden_states=text)
        got = store.by_layer[name]
        q = attn.to_q(seen["x"])
        k = attn.to_k(seen["ctx"])
    heads = attn.heads
    q = q.view(1, -1, heads, q.shape[-1] // heads).transpose(1, 2)
    k = k.view(1, -1, heads, k.shape[-1] // heads).transpose(1, 2)
    expected = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1).mean(1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_capture_leaves_the_output_unchanged_and_restores_processors(tiny_pipe):
    unet = tiny_pipe.unet
    before = dict(unet.attn_processors)
    latents, t, text = unet_inputs(tiny_pipe, ["a cat and a dog"])
    with torch.no_grad():
        reference = unet(latents, t, encoder_hidden_states=text).sample
        with capture_cross_attention(unet):
            captured = unet(latents, t, encoder_hidden_states=text).sample
            during = unet.attn_processors
            assert sum(isinstance(p, CaptureAttnProcessor) for p in during.values()) == 3
            captured_names = cross_attention_layers(unet)
            assert all(during[n] is p for n, p in before.items() if n not in captured_names)  # the others untouched
        after = unet(latents, t, encoder_hidden_states=text).sample
    assert torch.allclose(captured, reference, atol=1e-5)
    assert torch.equal(after, reference)  # switched off: the original processors, bit for bit
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_the_layer_list_is_found_once_per_unet_and_handed_out_as_a_copy(tiny_pipe):
    names = cross_attention_layers(tiny_pipe.unet)
    names.append("not a layer")
    assert cross_attention_layers(tiny_pipe.unet) == names[:-1]
    assert cross_attention_layers(tiny_pipe.unet, 1) != names[:-1]  # another resolution, other layers


def test_guidance_halves_are_kept_apart(tiny_pipe):
    latents, t, text = unet_inputs(tiny_pipe, ["", "a cat and a dog"])
    with torch.no_grad(), capture_cross_attention(tiny_pipe.unet) as store:
        tiny_pipe.unet(latents, t, encoder_hidden_states=text)
        uncond, cond = split_guidance(store.maps())
    assert uncond.shape == cond.shape == (1, 8, 8, 77)
    assert not torch.allclose(uncond, cond)


def test_gradient_flows_to_keys_when_training(tiny_pipe):
    unet = tiny_pipe.unet
    unet.requires_grad_(False)
    name = cross_attention_layers(unet)[0].removesuffix(".processor")
    key = unet.get_submodule(name).to_k.weight
    key.requires_grad_(True)
    latents, t, text = unet_inputs(tiny_pipe, ["a cat and a dog"])
    with capture_cross_attention(unet) as store:
        unet(latents, t, encoder_hidden_states=text)
        maps = object_maps(store.maps(), [[2], [5]])
    assert maps.requires_grad and maps.shape == (1, 2, 8, 8)
    maps[:, 0].max().backward()
    assert key.grad is not None and key.grad.abs().sum() > 0


def test_stop_after_last_skips_the_rest_of_the_unet(tiny_pipe):
    unet = tiny_pipe.unet
    calls = []
    unet.up_blocks[2].register_forward_pre_hook(lambda *a: calls.append("up2"))
    unet.conv_out.register_forward_pre_hook(lambda *a: calls.append("out"))
    latents, t, text = unet_inputs(tiny_pipe, ["a cat and a dog"])
    with torch.no_grad(), capture_cross_attention(unet, stop_after_last=True) as store:
        with pytest.raises(StopForward):
            unet(latents, t, encoder_hidden_states=text)
        assert len(store.by_layer) == 3
    assert calls == []
    with torch.no_grad():
        unet(latents, t, encoder_hidden_states=text)
    assert calls == ["up2", "out"]


def test_object_maps_average_sub_tokens_and_per_item_groups():
    maps = torch.zeros(2, 2, 2, 77)
    maps[..., 3] = 0.2
    maps[..., 4] = 0.4
    maps[..., 7] = 0.1
    shared = object_maps(maps, [[3, 4], [7]])
    assert shared.shape == (2, 2, 2, 2)
    assert torch.allclose(shared[:, 0], torch.full((2, 2, 2), 0.3))
    per_item = object_maps(maps, [[[3], [7]], [[4], [7]]])
    assert torch.allclose(per_item[0, 0], torch.full((2, 2), 0.2))
    assert torch.allclose(per_item[1, 0], torch.full((2, 2), 0.4))


def test_sharpened_text_maps_drop_start_and_last_token_and_keep_positions():
    maps = torch.zeros(1, 1, 1, 6)
    maps[..., 0] = 0.9  # the start token takes most of the pixel
    maps[..., 2] = 0.06
    maps[..., 3] = 0.04
    maps[..., 5] = 0.5  # the last position: dropped too
    sharp = sharpened_text_maps(maps)[0, 0, 0]
    logits = torch.tensor([0.0, 6.0, 4.0, 0.0])  # 100 x the probabilities of positions 1..4
    expected = torch.softmax(logits, dim=0)
    assert sharp[0] == 0 and sharp[5] == 0
    assert torch.allclose(sharp[1:5], expected)
    assert sharp[2] > 0.8  # 6% of the raw pixel becomes its larger share of the text tokens
