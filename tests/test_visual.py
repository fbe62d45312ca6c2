"""Traced object maps over denoising, their losses, and `python -m sae train --report`."""

import re

import pytest
import torch

from sae.attention import capture_cross_attention, object_maps
from sae.cli import main
from sae.finetune import encode_prompts
from sae.losses import enhance_loss, separate_loss
from sae.tokens import find_token_indices
from sae.visual import evenly_spaced, map_losses, read_losses, sample_with_maps, trace_object_maps


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(50, 5) == [0, 12, 24, 37, 49]
    assert evenly_spaced(3, 5) == [0, 1, 2]
    assert evenly_spaced(0) == []


def test_map_losses_are_the_library_losses():
    maps = torch.rand(3, 4, 4)
    got = map_losses(maps)
    assert got["sep"] == pytest.approx(float(separate_loss(maps)))
    assert got["en"] == pytest.approx(float(enhance_loss(maps)))
    assert map_losses(maps[:1])["sep"] is None


def test_trace_keeps_the_conditional_half_of_each_forward(tiny_pipe):
    prompt = "a cat and a dog"
    groups = find_token_indices(tiny_pipe.tokenizer, prompt, ["cat", "dog"])
    text = torch.cat([encode_prompts(tiny_pipe, [""]), encode_prompts(tiny_pipe, [prompt])])
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with capture_cross_attention(tiny_pipe.unet) as store:
            tiny_pipe.unet(latents, 500, encoder_hidden_states=text)
            expected = object_maps(store.maps()[1:], groups)
        with trace_object_maps(tiny_pipe.unet, groups) as trace:
            tiny_pipe.unet(latents, 500, encoder_hidden_states=text)
            tiny_pipe.unet(latents, 250, encoder_hidden_states=text)
    assert len(trace) == 2 and trace.timesteps == [500, 250]
    assert trace[0].shape == (1, 2, 8, 8)
    torch.testing.assert_close(trace[0], expected)


def _table(html, label, loss):
    row = re.search(rf"<tr><th>{label}</th><th>{loss}</th>(.*?)</tr>", html).group(1)
    return [float(v) for v in re.findall(r"<td>([-0-9.]+)</td>", row)]


@pytest.mark.slow
def test_train_report_has_curves_and_maps_before_and_after(tiny_model_dir, tmp_path, capsys):
    from sae.models import load_pipeline

    out = tmp_path / "pair"
    assert main(["train", "--model", str(tiny_model_dir), "--prompt", "a cat and a dog", "--objects", "cat,dog",
                 "--out", str(out), "--steps", "4", "--batch-size", "1", "--lr", "0.05", "--report",
                 "--report-steps", "2", "--no-progress", "--device", "cpu"]) == 0
    assert f"wrote {out / 'report' / 'index.html'}" in capsys.readouterr().out
    for name in ("losses.png", "maps.png"):
        assert (out / "report" / name).stat().st_size > 1000
    assert [s for s, _ in read_losses(out / "losses.csv")["sep"]] == [0, 1, 2, 3]
    page = (out / "report" / "index.html").read_text()
    assert '<img src="losses.png"' in page and '<img src="maps.png"' in page
    # "before" is the base model's maps: recomputed here on a fresh pipeline
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    groups = find_token_indices(pipe.tokenizer, "a cat and a dog", ["cat", "dog"])
    _, maps, _ = sample_with_maps(pipe, "a cat and a dog", groups, 0, 2, 6.0)
    want = [map_losses(m) for m in maps[evenly_spaced(len(maps))]]
    assert _table(page, "before", "Separate") == pytest.approx([w["sep"] for w in want], abs=1e-4)
    assert _table(page, "before", "Enhance") == pytest.approx([w["en"] for w in want], abs=1e-4)
    assert _table(page, "after", "Separate") != pytest.approx(_table(page, "before", "Separate"), abs=1e-4)
