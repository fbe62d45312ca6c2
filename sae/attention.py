"""Cross-attention capture as a diffusers attention processor.

`capture_cross_attention(unet)` swaps the processor of the cross-attention layers (`attn2`) at one resolution
(by default 1/4 of the latent side: 16x16 for SD 1.x at 512 px) for `CaptureAttnProcessor`, which computes
the softmax probabilities explicitly and hands them to an `AttentionStore`. Every other layer keeps its own
(fast, memory-efficient) processor, and leaving the context restores the original processors, so capture
costs nothing when it is off. No UNet forward is copied: everything goes through diffusers' own modules.

SD3's MMDiT has no cross-attention: each joint block runs one softmax over image and text keys together.
`capture_transformer_attention(transformer)` records, for every image query, its probabilities on the text keys
divided by their sum (docs/backbones.md, the SD3 plan), by default in every joint block, and PixArt's `attn2` maps
in every block; `capture_attention` picks the capture that fits the denoiser.
"""

from __future__ import annotations

import re
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


class StopForward(Exception):
    """Raised by the store after the last captured layer, to skip the rest of the UNet (training only)."""


def layer_downscale(name: str, num_down_blocks: int, num_up_blocks: int) -> int:
    """Factor by which a `UNet2DConditionModel` layer's feature map is smaller than the latent.

    down_blocks.i run before their downsampler (2**i), the mid block at the bottom, up_blocks.i before
    their upsampler (2**(num_up - 1 - i)).
    """
    if match := re.match(r"down_blocks\.(\d+)\.", name):
        return 2 ** int(match.group(1))
    if name.startswith("mid_block."):
        return 2 ** (num_down_blocks - 1)
    if match := re.match(r"up_blocks\.(\d+)\.", name):
        return 2 ** (num_up_blocks - 1 - int(match.group(1)))
    raise ValueError(f"cannot place attention layer {name!r} in the UNet's resolutions")


_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # unet -> {downscale: names}


def cross_attention_layers(unet, downscale: int = 4) -> list[str]:
    """Processor names of the `attn2` layers whose maps are `downscale` times smaller than the latent (found once
    per UNet: diffusers walks every module to list its processors, which would cost each training step)."""
    known = _LAYERS.setdefault(unet, {})
    if downscale not in known:
        known[downscale] = _find_cross_attention_layers(unet, downscale)
    return list(known[downscale])


def _find_cross_attention_layers(unet, downscale: int) -> list[str]:
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    factors = {name: layer_downscale(name, n_down, n_up) for name in unet.attn_processors if ".attn2." in name}
    names = [name for name, factor in factors.items() if factor == downscale]
    if not names:
        raise ValueError(f"the UNet has no cross-attention layer at 1/{downscale} of the latent side (it has some at "
                         + ", ".join(f"1/{n}" for n in sorted(set(factors.values()))) + ")")
    return names


def _downsampled(size: int, factor: int) -> int:
    while factor > 1:  # stride-2 convolutions with padding 1 round up
        size, factor = (size + 1) // 2, factor // 2
    return size


class AttentionStore:
    """The probability maps of the captured layers during the latest UNet forward.

    `maps()` averages them over heads and layers: shape `(batch, H, W, tokens)`, each pixel's row summing to 1
    over all tokens; with `keep_heads`, over layers only: `(batch, heads, H, W, tokens)`. The batch is the UNet's
    batch: with classifier-free guidance, the unconditional half comes first and the conditional half second (see
    `split_guidance`). Gradients are kept when the forward runs with autograd on.
    """

    def __init__(self, layer_names: list[str], downscale: int, stop_after_last: bool = False,
                 keep_heads: bool = False):
        self.layer_names = list(layer_names)
        self.downscale = downscale
        self.stop_after_last = stop_after_last
        self.keep_heads = keep_heads
        self.latent_hw: tuple[int, int] | None = None
        self.by_layer: dict[str, torch.Tensor] = {}

    @property
    def map_hw(self) -> tuple[int, int]:
        if self.latent_hw is None:
            raise RuntimeError("no UNet forward has run under this capture yet")
        return tuple(_downsampled(s, self.downscale) for s in self.latent_hw)

    def start_forward(self, latent_hw: tuple[int, int]) -> None:
        self.latent_hw = tuple(latent_hw)
        self.by_layer = {}

    def record(self, name: str, probs: torch.Tensor) -> None:
        """`probs`: `(batch, heads, pixels, tokens)`; stored averaged over heads unless `keep_heads`."""
        h, w = self.map_hw
        if probs.shape[2] != h * w:
            raise RuntimeError(f"layer {name} has {probs.shape[2]} pixels, expected {h}x{w}: "
                               "is the latent size divisible by the UNet's downsampling?")
        self.by_layer[name] = probs if self.keep_heads else probs.mean(dim=1)
        if self.stop_after_last and len(self.by_layer) == len(self.layer_names):
            raise StopForward

    def maps(self) -> torch.Tensor:
        if not self.by_layer:
            raise RuntimeError("no cross-attention maps were recorded: run the UNet inside the capture")
        h, w = self.map_hw
        layers = list(self.by_layer.values())
        if len({layer.shape for layer in layers}) > 1:
            raise RuntimeError("the captured layers differ in their number of heads: keep_heads needs equal ones")
        mean = torch.stack(layers).mean(dim=0)
        return mean.reshape(*mean.shape[:-2], h, w, mean.shape[-1])


class CaptureAttnProcessor:
    """Cross-attention with explicit softmax probabilities, recorded into an `AttentionStore`.

    Follows diffusers' `AttnProcessor` step by step (it is the reference computation of `Attention`).
    """

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                     else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (batch*heads, pixels, tokens)
        self.store.record(self.name, probs.view(batch, attn.heads, *probs.shape[1:]))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def capture_cross_attention(unet, downscale: int = 4, stop_after_last: bool = False, keep_heads: bool = False):
    """Capture the cross-attention maps at 1/`downscale` of the latent side while the context is open.

    With `stop_after_last`, the UNet forward ends (with `StopForward`) right after the last captured layer:
    training needs nothing beyond it. `keep_heads` keeps every head's maps. Yields the `AttentionStore`.
    """
    names = cross_attention_layers(unet, downscale)
    store = AttentionStore(names, downscale, stop_after_last, keep_heads)
    with _capturing(unet, store, CaptureAttnProcessor, "sample"):
        yield store


@contextmanager
def _capturing(model, store: AttentionStore, processor, input_name: str):
    """`model`'s layers named in `store` with capturing processors, and each forward announced to the store (the
    latent's grid), while the context is open; the original processors come back after."""
    # the captured layers' processors are swapped one by one (set_attn_processor would walk every module)
    layers = {name: model.get_submodule(name.removesuffix(".processor")) for name in store.layer_names}
    original = {name: layer.processor for name, layer in layers.items()}

    def on_forward(module, args, kwargs):
        sample = args[0] if args else kwargs[input_name]
        store.start_forward(sample.shape[-2:])

    for name, layer in layers.items():
        layer.set_processor(processor(store, name))
    hook = model.register_forward_pre_hook(on_forward, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()
        for name, layer in layers.items():
            layer.set_processor(original[name])


def is_joint_transformer(model) -> bool:
    """Whether `model` is SD3's MMDiT (joint attention over image and text tokens)."""
    from diffusers import SD3Transformer2DModel

    return isinstance(model, SD3Transformer2DModel)


def transformer_attention_layers(transformer, blocks=None) -> list[str]:
    """Processor names of the text attention of a transformer's blocks `blocks` (indices; default: every block, the
    plan's first choice): SD3's joint attention (`transformer_blocks.i.attn`) or PixArt's cross-attention
    (`transformer_blocks.i.attn2`)."""
    count = len(transformer.transformer_blocks)
    chosen = range(count) if blocks is None else sorted(set(int(b) for b in blocks))
    if not chosen or not all(0 <= b < count for b in chosen):
        raise ValueError(f"blocks {list(blocks)} do not fit the transformer's {count} blocks (0 to {count - 1})")
    layer = "attn" if is_joint_transformer(transformer) else "attn2"
    return [f"transformer_blocks.{b}.{layer}.processor" for b in chosen]


class CaptureJointAttnProcessor:
    """SD3's joint attention with the text maps of its image queries recorded into an `AttentionStore`.

    Follows diffusers' `JointAttnProcessor2_0` step by step for the output. The map of a text token is each image
    query's probability on its key divided by the query's total probability on the text keys: the softmax's
    normaliser cancels in that ratio, so it is the softmax of the image queries' scores over the text keys alone,
    and the full (image + text) attention matrix is never made. The store sees `(batch, heads, pixels, text
    tokens)`, each pixel's row summing to one, as a UNet's cross-attention maps do.
    """

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 *args, **kwargs):
        if encoder_hidden_states is None:
            raise RuntimeError(f"layer {self.name} got no text tokens: only joint attention layers are captured")
        residual = hidden_states
        batch = hidden_states.shape[0]
        head_dim = attn.to_k.out_features // attn.heads

        def split(x):  # (batch, tokens, heads * dim) -> (batch, heads, tokens, dim)
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), \
            split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_query = split(attn.add_q_proj(encoder_hidden_states))
        text_key = split(attn.add_k_proj(encoder_hidden_states))
        text_value = split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_query = attn.norm_added_q(text_query)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)

        # recorded before the output, so that StopForward after the last layer skips it
        self.store.record(self.name, ((query @ text_key.transpose(-1, -2)) * attn.scale).softmax(dim=-1))

        query = torch.cat([query, text_query], dim=2)
        key = torch.cat([key, text_key], dim=2)
        value = torch.cat([value, text_value], dim=2)
        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states, encoder_hidden_states = hidden_states[:, :residual.shape[1]], \
            hidden_states[:, residual.shape[1]:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states


def is_cross_attention_transformer(model) -> bool:
    """Whether `model` is a DiT whose blocks cross-attend to the text (PixArt's), all at one resolution."""
    from diffusers import PixArtTransformer2DModel

    return isinstance(model, PixArtTransformer2DModel)


def is_transformer(model) -> bool:
    """Whether `model` is a transformer whose text maps are at its patch grid in every block (SD3's, PixArt's)."""
    return is_joint_transformer(model) or is_cross_attention_transformer(model)


@contextmanager
def capture_transformer_attention(transformer, blocks=None, stop_after_last: bool = False, keep_heads: bool = False):
    """Capture a transformer's text maps in the blocks `blocks` (default: all; the store averages them) while the
    context is open: SD3's from its joint attention (`CaptureJointAttnProcessor`), PixArt's from its cross-attention
    over T5's tokens (`attn2`; the padding is masked, so its columns are zero). The maps are at the patch grid
    (1/patch_size of the latent side: 64x64 for SD3 at 1024 px); SD3's last axis is CLIP's 77 positions
    (`find_token_indices` on `pipe.tokenizer`), then T5's. `stop_after_last` and `keep_heads` as in
    `capture_cross_attention`. Yields the `AttentionStore`."""
    names = transformer_attention_layers(transformer, blocks)
    store = AttentionStore(names, transformer.config.patch_size, stop_after_last, keep_heads)
    processor = CaptureJointAttnProcessor if is_joint_transformer(transformer) else CaptureAttnProcessor
    with _capturing(transformer, store, processor, "hidden_states"):
        yield store


def capture_attention(model, map_downscale: int = 4, stop_after_last: bool = False, keep_heads: bool = False,
                      joint_blocks=None):
    """The text maps of a denoiser: a UNet's cross-attention at 1/`map_downscale` of the latent side, SD3's joint
    attention or PixArt's cross-attention in the blocks `joint_blocks` (default: all; their maps are at the patch
    grid whatever `map_downscale`)."""
    if is_transformer(model):
        return capture_transformer_attention(model, joint_blocks, stop_after_last, keep_heads)
    if joint_blocks is not None:
        raise ValueError("joint_blocks chooses a transformer's blocks; a UNet's maps are chosen by map_downscale")
    return capture_cross_attention(model, map_downscale, stop_after_last, keep_heads)


def split_guidance(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unconditional, conditional) halves of maps captured under classifier-free guidance."""
    uncond, cond = maps.chunk(2, dim=0)
    return uncond, cond


def sharpened_text_maps(maps: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """Attend-and-Excite's maps: drop the start and last token, `softmax(scale * p)` over the rest.

    Token positions are kept (the dropped columns are zeros), so object token indices stay valid. Unlike the
    raw probabilities, where the start token takes most of each pixel, each pixel's text tokens share all of it.
    """
    return torch.nn.functional.pad(torch.softmax(maps[..., 1:-1] * scale, dim=-1), (1, 1))


# Which token maps the SepEn losses read: the raw probabilities (the method) or A&E's sharpened text maps.
MAP_KINDS = {"probs": lambda maps: maps, "sharpened": sharpened_text_maps}


def object_maps(maps: torch.Tensor, token_groups) -> torch.Tensor:
    """Per-object maps `(batch, K, H, W)` from token maps `(batch, H, W, tokens)`.

    `token_groups[k]` lists the token positions of object k (a word split into sub-tokens, or a phrase such as
    "red car"); its map is the mean of those tokens' maps. Either one list of groups shared by the whole batch
    or one list per batch element (prompts of different wording).
    """
    per_item = bool(token_groups) and isinstance(token_groups[0][0], (list, tuple))
    if not per_item:
        # one view per token rather than indexing with a list, which copies the list to the device (not
        # allowed while a CUDA graph is being captured); the same numbers
        return torch.stack([torch.stack([maps[..., i] for i in group], -1).mean(-1) for group in token_groups], 1)
    if len(token_groups) != maps.shape[0]:
        raise ValueError(f"{len(token_groups)} token-group lists for a batch of {maps.shape[0]}")
    return torch.stack([object_maps(maps[i:i + 1], groups)[0] for i, groups in enumerate(token_groups)])
