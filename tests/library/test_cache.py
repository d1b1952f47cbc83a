import os
import warnings

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lora_core as lc
from lora_core.cache import TRAINING_CODE, TRANSFORMER_CODE, cache_key

SETTINGS = dict(epochs=3, batch_size=32, lr=1e-2, seed=0, progress=False)


@pytest.fixture
def data():
    X, y, _ = lc.make_regression(128, 9, 8, seed=0)
    return X, y


def test_second_call_loads_the_same_base_and_history(tmp_path, data):
    base, history = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    assert not history.settings.get("from_cache")
    assert len(list(tmp_path.glob("base-*.safetensors"))) == 1
    again, cached = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    assert cached.settings["from_cache"]
    assert torch.equal(again.weight, base.weight)
    pd.testing.assert_frame_equal(cached.frame, history.frame, check_exact=True)


def test_cached_base_equals_a_fresh_pretraining(tmp_path, data):
    lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    cached, _ = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    fresh, _ = lc.pretrain_base(*data, cache=False, **SETTINGS)
    assert torch.equal(cached.weight, fresh.weight)


@pytest.mark.parametrize("change", ["data", "epochs", "lr", "seed"])
def test_any_change_of_input_gives_a_new_key(data, change):
    X, y = data
    settings = dict(epochs=3, lr=1e-2, seed=0)
    key = cache_key(X, y, settings)
    if change == "data":
        X = X.clone()
        X[5, 3] += 1e-6
    else:
        settings[change] = settings[change] + 1
    assert cache_key(X, y, settings) != key


def test_a_corrupt_cache_file_is_retrained_with_a_warning(tmp_path, data):
    lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    (path,) = tmp_path.glob("base-*.safetensors")
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable cached base") as caught:
        base, history = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    assert caught[0].filename == __file__  # the warning points at the caller
    assert not history.settings.get("from_cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)[1].settings["from_cache"]


def test_cache_dir_follows_the_environment(tmp_path, data, monkeypatch):
    monkeypatch.setenv("LORA_CORE_CACHE", str(tmp_path / "env-cache"))
    lc.pretrain_base(*data, **SETTINGS)
    assert list((tmp_path / "env-cache").glob("base-*.safetensors"))


# ---------------------------------------------------------------------------------------
# Integrity: a checksum in every file; an unwritable cache never fails the run


def _flip_last_tensor_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # the data section ends the file: the header still parses
    path.write_bytes(bytes(raw))


def test_a_file_with_altered_tensor_bytes_fails_its_checksum_and_is_retrained(tmp_path, data):
    base, _ = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    (path,) = tmp_path.glob("base-*.safetensors")
    _flip_last_tensor_byte(path)
    with pytest.warns(UserWarning, match="checksum"):
        again, history = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    assert not history.settings.get("from_cache")
    assert torch.equal(again.weight, base.weight)
    # The retrained model replaced the altered file: the next call loads it without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)[1].settings["from_cache"]


@pytest.mark.parametrize("metadata", [None, {"history": "{}"}, {"history": "{}", "checksum": "0" * 64}])
def test_a_file_without_metadata_or_with_a_bad_checksum_is_retrained(tmp_path, data, metadata):
    lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    (path,) = tmp_path.glob("base-*.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.warns(UserWarning, match="ignoring unreadable cached base"):
        _, history = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    assert not history.settings.get("from_cache")


def test_a_cache_path_that_is_a_file_warns_and_trains_anyway(tmp_path, data, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LORA_CORE_CACHE", str(blocker))
    expected, _ = lc.pretrain_base(*data, cache=False, **SETTINGS)
    with pytest.warns(UserWarning, match="going on without caching") as caught:
        base, history = lc.pretrain_base(*data, **SETTINGS)
    assert caught[0].filename == __file__
    assert torch.equal(base.weight, expected.weight) and len(history.frame) == SETTINGS["epochs"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_warns_and_trains_anyway(tmp_path, data):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.warns(UserWarning, match="going on without caching"):
            base, _ = lc.pretrain_base(*data, cache_dir=folder, **SETTINGS)
        assert base.weight.shape == (8, 9) and not list(folder.iterdir())
    finally:
        folder.chmod(0o700)


# ---------------------------------------------------------------------------------------
# The transformer


TINY = lc.TransformerConfig(vocab_size=6, seq_len=6, d_model=8, n_heads=2, n_layers=1, d_mlp=16)
TINY_SETTINGS = dict(epochs=2, batch_size=16, seed=0, progress=False, device="cpu")


def test_the_pretrained_transformer_is_cached_and_reloaded_bit_for_bit(tmp_path):
    X, y = lc.make_sequences("previous", 64, 6, 6, seed=0)
    model, history = lc.pretrain_transformer(X, y, TINY, cache_dir=tmp_path, **TINY_SETTINGS)
    assert len(list(tmp_path.glob("transformer-*.safetensors"))) == 1
    again, cached = lc.pretrain_transformer(X, y, TINY, cache_dir=tmp_path, **TINY_SETTINGS)
    assert cached.settings["from_cache"] and cached.settings["loss"] == "cross_entropy"
    assert lc.weights_checksum(again) == lc.weights_checksum(model)
    pd.testing.assert_frame_equal(cached.frame, history.frame, check_exact=True)


def test_the_transformer_key_covers_its_sizes_and_its_code(tmp_path):
    X, y = lc.make_sequences("previous", 64, 6, 6, seed=0)
    lc.pretrain_transformer(X, y, TINY, cache_dir=tmp_path, **TINY_SETTINGS)
    wider = lc.TransformerConfig(vocab_size=6, seq_len=6, d_model=8, n_heads=2, n_layers=1, d_mlp=24)
    _, history = lc.pretrain_transformer(X, y, wider, cache_dir=tmp_path, **TINY_SETTINGS)
    assert not history.settings.get("from_cache")
    assert {"models.py", "sequences.py", "training.py"} <= set(TRANSFORMER_CODE)
    settings = {"epochs": 2}
    assert cache_key(X, y, settings, TRAINING_CODE) != cache_key(X, y, settings, TRANSFORMER_CODE)


def test_a_cached_file_that_does_not_fit_the_model_is_retrained_with_a_warning(tmp_path):
    from lora_core.cache import _save

    X, y = lc.make_sequences("previous", 64, 6, 6, seed=0)
    model, history = lc.pretrain_transformer(X, y, TINY, cache_dir=tmp_path, **TINY_SETTINGS)
    (path,) = tmp_path.glob("transformer-*.safetensors")
    _save(path, {"weight": torch.zeros(2, 2)}, history)  # intact, but another model's weights
    with pytest.warns(UserWarning, match="does not fit this model") as caught:
        again, retrained = lc.pretrain_transformer(X, y, TINY, cache_dir=tmp_path, **TINY_SETTINGS)
    assert caught[0].filename == __file__
    assert not retrained.settings.get("from_cache")
    assert lc.weights_checksum(again) == lc.weights_checksum(model)
