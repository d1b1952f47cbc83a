"""A damaged or invalid adapter folder is refused, naming the file, before any tensor is copied.

Each test saves a real two-layer adapter, damages one thing in it, and loads it into a
model that already holds other values: the error must name the file (or the setting),
and the model must keep exactly the values it had.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lora_core as lc
from lora_core.adapters import CONFIG_NAME, WEIGHTS_NAME


def adapted(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
    lc.add_lora(model, ["0", "1"], r=2, lora_alpha=2.0)
    with torch.no_grad():
        for p in lc.lora_parameters(model):
            p.normal_()
    return model


@pytest.fixture
def folder(tmp_path):
    return lc.save_adapter(adapted(1), tmp_path / "adapter")


@pytest.fixture
def target():
    """A model with the adapter's layout but other values, which a refused load must keep."""
    return adapted(2)


def values(model):
    return {name: t.clone() for name, t in model.state_dict().items()}


def edit_config(folder, change):
    config = json.loads((folder / CONFIG_NAME).read_text())
    change(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def assert_refused(model, folder, match):
    before = values(model)
    scaling = [layer.lora_alpha for layer in lc.lora_modules(model).values()]
    with pytest.raises(ValueError, match=match):
        lc.load_adapter(model, folder)
    after = values(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [layer.lora_alpha for layer in lc.lora_modules(model).values()] == scaling


def test_an_intact_adapter_loads_both_layers(folder, target):
    assert lc.load_adapter(target, folder) == "default"
    saved = load_file(folder / WEIGHTS_NAME)
    assert torch.equal(target[1].B, saved["1.B"])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("2", r"module '1': lora_alpha='2' is not allowed"),
        (None, r"module '1': lora_alpha=None is not allowed"),
        (float("nan"), r"module '1': lora_alpha=nan is not allowed"),
        (0, r"module '1': lora_alpha=0 is not allowed: expected a finite number > 0"),
        (-1.5, r"module '1': lora_alpha=-1.5 is not allowed"),
    ],
)
def test_a_bad_lora_alpha_in_the_second_module_is_refused_before_the_first_is_copied(
    folder, target, value, match
):
    edit_config(folder, lambda c: c["modules"]["1"].update(lora_alpha=value))
    assert_refused(target, folder, rf"{CONFIG_NAME}: {match}")


def test_an_unknown_scaling_is_refused(folder, target):
    edit_config(folder, lambda c: c["modules"]["1"].update(scaling="sqrt"))
    assert_refused(target, folder, r"module '1': scaling='sqrt' is not allowed: expected one of 'standard'")


def test_a_rank_that_is_not_an_integer_is_refused(folder, target):
    edit_config(folder, lambda c: c["modules"]["0"].update(r=2.5))
    assert_refused(target, folder, r"module '0': r=2.5 is not allowed")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", rf"{CONFIG_NAME} is not valid JSON"),
        ("[1, 2]", rf"{CONFIG_NAME} holds a JSON list, expected an object"),
        ('{"modules": "0"}', r'"modules" must be a non-empty object'),
        ('{"modules": {"0": 3}}', r"module '0': settings=3 is not allowed"),
    ],
)
def test_a_config_that_is_not_usable_is_refused_naming_the_file(folder, target, text, match):
    (folder / CONFIG_NAME).write_text(text)
    assert_refused(target, folder, match)
    with pytest.raises(ValueError, match=match):
        lc.adapter_deltas(folder)


def test_a_missing_tensor_is_refused_naming_the_file_and_the_tensor(folder, target):
    tensors = load_file(folder / WEIGHTS_NAME)
    del tensors["1.B"]
    save_file(tensors, folder / WEIGHTS_NAME)
    assert_refused(target, folder, rf"{WEIGHTS_NAME} has no tensor '1.B' for module '1'")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_tensor_holding_nan_or_inf_is_refused(folder, target, bad):
    tensors = load_file(folder / WEIGHTS_NAME)
    tensors["1.A"][0, 0] = bad
    save_file(tensors, folder / WEIGHTS_NAME)
    assert_refused(target, folder, r"tensor '1.A' holds NaN, Inf")


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_a_corrupt_safetensors_file_is_a_value_error_naming_the_file(folder, target, damage):
    path = folder / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    assert_refused(target, folder, rf"{WEIGHTS_NAME} cannot be read as safetensors")


def test_a_missing_tensor_file_is_named(folder, target):
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        lc.load_adapter(target, folder)
