"""cached_regression: make_regression's data from the disk cache, the same bit for bit."""

import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lora_core as lc
from lora_core import cache
from lora_core.cache import DATA_CODE, PACKAGE_DIR

ARGS = dict(n=40, d_in=7, d_out=5, seed=3)


def _assert_same(got, expected):
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and torch.equal(g, e)


def test_a_second_call_loads_the_first_calls_tensors_bit_for_bit(tmp_path, monkeypatch):
    first = lc.cached_regression(**ARGS, cache_dir=tmp_path)
    _assert_same(first, lc.make_regression(**ARGS))
    assert len(list(tmp_path.glob("data-*.safetensors"))) == 1

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cached data should have been loaded, not drawn again")

    monkeypatch.setattr(cache, "make_regression", no_drawing)
    _assert_same(lc.cached_regression(**ARGS, cache_dir=tmp_path), first)


def test_training_on_the_loaded_data_gives_the_same_numbers_as_on_the_drawn_data(tmp_path):
    # Same bits are not enough: MKL rounds differently when a tensor's memory is unaligned.
    def fine_tune(draw):
        X, y, theta = draw(n=512, d_in=65, d_out=64, seed=0)
        base, _ = lc.pretrain_base(X, y, epochs=5, progress=False, cache=False, device="cpu")
        X2, y2, _ = draw(n=512, d_in=65, d_out=64, seed=1, theta=lc.shift_theta(theta, "ones")[0])
        lc.seed_everything(0)
        lora = lc.LoRALinear(base, r=1)
        history = lc.train(lora, X2, y2, epochs=5, eval_every=1, progress=False, device="cpu")
        return history.frame[["train_loss", "eval_loss"]].to_numpy().tolist()

    def cached(**kwargs):
        return lc.cached_regression(**kwargs, cache_dir=tmp_path)

    drawn = fine_tune(lc.make_regression)
    fine_tune(cached)  # draws and stores
    assert fine_tune(cached) == drawn  # loads


def test_a_given_theta_is_cached_apart_and_gives_make_regressions_data(tmp_path):
    _, _, theta = lc.cached_regression(**ARGS, cache_dir=tmp_path)
    theta2, _ = lc.shift_theta(theta, "ones")
    for _ in range(2):  # drawn, then loaded
        got = lc.cached_regression(**{**ARGS, "seed": 4}, theta=theta2, cache_dir=tmp_path)
        _assert_same(got, lc.make_regression(**{**ARGS, "seed": 4}, theta=theta2))
    assert len(list(tmp_path.glob("data-*.safetensors"))) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"n": 41},
        {"d_in": 8},
        {"d_out": 6},
        {"seed": 4},
        {"dtype": torch.float64},
        {"theta": "given"},
        {"theta": "one entry changed"},
    ],
    ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items()),
)
def test_every_argument_is_in_the_key(tmp_path, change):
    theta = lc.make_regression(**ARGS)[2]
    before = {**ARGS, "theta": theta.clone()} if "one entry" in str(change.get("theta")) else dict(ARGS)
    after = {**before, **change}
    if change.get("theta") == "given":
        after["theta"] = theta
    elif "theta" in change:
        after["theta"] = theta.clone()
        after["theta"][2, 1] += 1e-3
    lc.cached_regression(**before, cache_dir=tmp_path)
    got = lc.cached_regression(**after, cache_dir=tmp_path)
    _assert_same(got, lc.make_regression(**after))
    assert len(list(tmp_path.glob("data-*.safetensors"))) == 2


def test_the_key_covers_the_code_that_draws_the_data(tmp_path):
    # Traced, not listed by hand: every lora_core file that runs while drawing.
    ran = set()

    def tracer(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(PACKAGE_DIR):
            ran.add(path.relative_to(PACKAGE_DIR).as_posix())

    sys.setprofile(tracer)
    try:
        lc.make_regression(**ARGS)
    finally:
        sys.setprofile(None)
    assert "tasks.py" in ran
    assert ran - {"validation.py"} <= set(DATA_CODE)


@pytest.mark.parametrize("damage", ["garbage", "altered bytes", "other tensors"])
def test_a_damaged_file_warns_and_the_data_is_drawn_and_stored_again(tmp_path, damage):
    expected = lc.cached_regression(**ARGS, cache_dir=tmp_path)
    (path,) = tmp_path.glob("data-*.safetensors")
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "altered bytes":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF  # the last byte of a tensor
        path.write_bytes(bytes(raw))
    else:  # intact, checksummed, but not this data's shapes
        tensors = {"X": torch.zeros(2, 2), "y": torch.zeros(2, 2), "theta": torch.zeros(2, 2)}
        save_file(tensors, str(path), metadata={"checksum": cache.tensors_checksum(tensors)})
    with pytest.warns(UserWarning, match="unreadable cached data") as caught:
        got = lc.cached_regression(**ARGS, cache_dir=tmp_path)
    assert caught[0].filename == __file__  # the warning points at the caller
    _assert_same(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stored again, intact
        _assert_same(lc.cached_regression(**ARGS, cache_dir=tmp_path), expected)


def test_a_cache_that_cannot_be_written_warns_and_returns_the_data(tmp_path):
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    with pytest.warns(UserWarning, match="cannot write the cache file") as caught:
        got = lc.cached_regression(**ARGS, cache_dir=blocked)
    assert caught[0].filename == __file__
    _assert_same(got, lc.make_regression(**ARGS))


def test_cache_false_draws_and_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_CORE_CACHE", str(tmp_path))
    _assert_same(lc.cached_regression(**ARGS, cache=False), lc.make_regression(**ARGS))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n": 0}, "n=0 is not allowed"),
        ({"seed": -1}, "seed=-1 is not allowed"),
        ({"dtype": torch.int64}, "dtype=torch.int64 is not allowed"),
        ({"theta": torch.zeros(3, 3)}, r"theta.shape=\(3, 3\) is not allowed"),
    ],
)
def test_bad_arguments_are_refused_before_the_cache_is_touched(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        lc.cached_regression(**{**ARGS, **bad}, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
