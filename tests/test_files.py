import os

import pytest

from sae.files import atomic_path, temp_path, write_atomic


def test_write_atomic_writes_text_and_bytes_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, "{}\n")
    assert path.read_text() == "{}\n"
    write_atomic(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failure_mid_write_keeps_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="cut short"), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("cut short")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_path_replaces_on_success_with_a_hidden_temporary_beside_it(tmp_path):
    path = tmp_path / "stats.npz"
    with atomic_path(path, unique=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".stats.npz.") and tmp.name.endswith(".tmp")
        assert str(os.getpid()) in tmp.name
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert temp_path(path) == tmp_path / ".stats.npz.tmp"  # the name a killed write leaves, and the next reuses
    assert os.listdir(tmp_path) == ["stats.npz"]
