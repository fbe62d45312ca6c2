import pytest
import torch
from safetensors.torch import save_file

from sae.checkpoint import (FORMAT, BaseModelMismatchError, CheckpointError, apply_delta, base_fingerprints,
                            load_delta, save_delta)
from sae.finetune import ConceptPair, FinetuneConfig, finetune, trainable_parameters
from sae.models import build_tiny_pipeline, load_pipeline


@pytest.fixture
def trained(tiny_model_dir, tmp_path):
    pipe = load_pipeline(tiny_model_dir)
    result = finetune(pipe, ConceptPair("a cat and a dog", ["cat", "dog"]),
                      FinetuneConfig(steps=2, batch_size=1, learning_rate=1e-2), out_dir=tmp_path,
                      base_model=str(tiny_model_dir), progress=False)
    return pipe, result


def test_checkpoint_holds_only_the_trained_tensors_and_metadata(trained):
    pipe, result = trained
    delta = load_delta(result.checkpoint)
    assert set(delta.tensors) == set(trainable_parameters(pipe.unet, "k"))
    assert delta.concepts == ["cat", "dog"]
    assert delta.config["steps"] == 2 and delta.config["projection"] == "k"
    assert set(delta.base_fingerprint) == {"float16", "bfloat16"}
    assert "torch" in delta.versions and "diffusers" in delta.versions
    for name, tensor in result.tensors.items():
        assert torch.equal(delta.tensors[name], tensor)


def test_round_trip_onto_a_fresh_base(trained, tiny_model_dir):
    pipe, result = trained
    fresh = load_pipeline(tiny_model_dir)
    apply_delta(fresh.unet, result.checkpoint)
    trained_state, fresh_state = pipe.unet.state_dict(), fresh.unet.state_dict()
    assert all(torch.equal(trained_state[n], fresh_state[n]) for n in trained_state)


def test_half_precision_copy_of_the_base_is_accepted(trained, tiny_model_dir):
    _, result = trained
    fresh = load_pipeline(tiny_model_dir, dtype="float16")
    apply_delta(fresh.unet, result.checkpoint)
    name, tensor = next(iter(result.tensors.items()))
    assert torch.equal(fresh.unet.get_parameter(name), tensor.half())


def test_other_base_weights_are_refused(trained):
    _, result = trained
    other = build_tiny_pipeline(seed=1)
    before = {n: t.clone() for n, t in other.unet.state_dict().items()}
    with pytest.raises(BaseModelMismatchError, match="trained on base model"):
        apply_delta(other.unet, result.checkpoint)
    assert all(torch.equal(before[n], t) for n, t in other.unet.state_dict().items())  # nothing was copied


def test_checkpoint_applied_twice_is_refused(trained, tiny_model_dir):
    _, result = trained
    fresh = load_pipeline(tiny_model_dir)
    apply_delta(fresh.unet, result.checkpoint)
    with pytest.raises(BaseModelMismatchError):
        apply_delta(fresh.unet, result.checkpoint)


def test_fingerprint_sees_a_single_changed_weight(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    first = base_fingerprints(pipe.unet)
    with torch.no_grad():
        pipe.unet.conv_out.weight[0, 0, 0, 0] += 0.5
    assert base_fingerprints(pipe.unet) != first


def test_unreadable_and_foreign_files_are_refused(tmp_path, tiny_model_dir):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_delta(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a SepEn checkpoint"):
        load_delta(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_delta(tmp_path / "missing.safetensors")


def test_tensors_of_another_architecture_are_refused(tmp_path, tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    path = save_delta(tmp_path / "d.safetensors", {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight":
                                                   torch.zeros(3, 3)},
                      base_model="x", base_fingerprint=base_fingerprints(pipe.unet))
    assert load_delta(path).tensors and FORMAT == "sae-delta/1"
    with pytest.raises(CheckpointError, match="another architecture"):
        apply_delta(pipe.unet, path)


def test_digest_is_of_the_content_not_of_the_file_bytes(tmp_path):
    tensors = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b.weight": torch.ones(2)}
    metadata = dict(base_model="m", base_fingerprint={"float16": "x"}, concepts=["cat", "dog"], config={"steps": 1})
    first = load_delta(save_delta(tmp_path / "1.safetensors", tensors, **metadata))
    # the same content written again: the file may differ (safetensors orders metadata freely), the digest not
    again = load_delta(save_delta(tmp_path / "2.safetensors", dict(reversed(tensors.items())), **metadata))
    assert first.digest() == again.digest()
    changed = {**tensors, "b.weight": torch.tensor([1.0, 1.0 + 2**-20])}
    assert load_delta(save_delta(tmp_path / "3.safetensors", changed, **metadata)).digest() != first.digest()
    other_base = {**metadata, "base_fingerprint": {"float16": "y"}}
    assert load_delta(save_delta(tmp_path / "4.safetensors", tensors, **other_base)).digest() != first.digest()
