import pytest
import torch

from sae.attention import cross_attention_layers
from sae.finetune import trainable_parameters
from sae.models import ARCHITECTURES, ModelNotFoundError, load_pipeline, resolve_dtype


def test_folder_without_a_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_dtype_names():
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype(None) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


def test_sd14_architecture_has_sd14_shapes():
    from diffusers import UNet2DConditionModel

    unet_config = ARCHITECTURES["sd14"]()[0]
    with torch.device("meta"):  # shapes only: no 3.4 GB of random weights on the CPU
        unet = UNet2DConditionModel(**unet_config)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    keys = trainable_parameters(unet, "k")
    assert len(keys) == 16 and sum(p.numel() for p in keys.values()) == 9_584_640  # method.md: ~9.6M
    quarter = cross_attention_layers(unet)
    assert len(quarter) == 5  # down_blocks.2 attentions 0-1, up_blocks.1 attentions 0-2


@pytest.mark.parametrize("version, keyword", [("0.42.1", "dtype"), ("0.40.0", "dtype"), ("0.39.0", "torch_dtype"),
                                              ("0.30.0", "torch_dtype")])
def test_the_dtype_keyword_follows_the_diffusers_release(monkeypatch, version, keyword):
    """Releases before 0.40 ignore `dtype=` and load fp32 without a word (seen with 0.36: the pipeline came back
    in fp32); later ones deprecate `torch_dtype=`."""
    import diffusers

    import sae.models

    monkeypatch.setattr(diffusers, "__version__", version)
    assert sae.models.dtype_keyword() == keyword


def test_the_dtype_reaches_every_component_of_the_pipeline(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir, dtype="fp16")
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float16
