import warnings

import pandas as pd
import pytest
import torch

import lora_core as lc
from lora_core.cache import cache_key

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
    with pytest.warns(UserWarning, match="unreadable cached base"):
        base, history = lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)
    assert not history.settings.get("from_cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lc.pretrain_base(*data, cache_dir=tmp_path, **SETTINGS)[1].settings["from_cache"]


def test_cache_dir_follows_the_environment(tmp_path, data, monkeypatch):
    monkeypatch.setenv("LORA_CORE_CACHE", str(tmp_path / "env-cache"))
    lc.pretrain_base(*data, **SETTINGS)
    assert list((tmp_path / "env-cache").glob("base-*.safetensors"))
