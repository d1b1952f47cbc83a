import json

import pytest
import torch
from torch import nn

from lora_core import (
    LoRALinear,
    adapter_deltas,
    add_lora,
    load_adapter,
    read_adapter_config,
    save_adapter,
)


def _model(r=2, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    add_lora(model, r"0|2", r=r, **kw)
    return model


def _randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()


def test_round_trip_restores_outputs_and_writes_no_pickle(tmp_path):
    model = _model(lora_alpha=3.0)
    _randomise(model, 1)
    x = torch.randn(7, 6)
    expected = model(x)
    folder = save_adapter(model, tmp_path / "a", name="task-a")
    assert sorted(p.name for p in folder.iterdir()) == [
        "lora_core_adapter.json",
        "lora_core_adapter.safetensors",
    ]
    config = json.loads((folder / "lora_core_adapter.json").read_text())
    assert config["name"] == "task-a" and config["r"] == 2 and config["lora_alpha"] == 3.0
    assert config["modules"]["2"] == {
        "in_features": 5,
        "out_features": 4,
        "r": 2,
        "lora_alpha": 3.0,
        "init": "gaussian",
        "scaling": "standard",
        "lora_dropout": 0.0,
    }
    fresh = _model(lora_alpha=3.0)
    assert not torch.allclose(fresh(x), expected)
    assert load_adapter(fresh, folder) == "task-a"
    assert torch.allclose(fresh(x), expected, atol=1e-6)


def test_switching_between_two_adapters_over_one_base(tmp_path):
    model = _model()
    x = torch.randn(7, 6)
    outputs = {}
    for name, seed in (("a", 1), ("b", 2)):
        _randomise(model, seed)
        outputs[name] = model(x)
        save_adapter(model, tmp_path / name, name=name)
    for name in ("a", "b", "a"):
        load_adapter(model, tmp_path / name)
        assert torch.allclose(model(x), outputs[name], atol=1e-6)


def test_loading_takes_the_adapters_alpha_and_scaling(tmp_path):
    source = _model(lora_alpha=8.0, scaling="rslora")
    _randomise(source, 1)
    x = torch.randn(3, 6)
    save_adapter(source, tmp_path / "a")
    target = _model(lora_alpha=1.0)
    load_adapter(target, tmp_path / "a")
    assert target[0].scaling == "rslora" and target[0].scale.item() == pytest.approx(8 / 2**0.5)
    assert torch.allclose(target(x), source(x), atol=1e-6)


def test_learnable_scale_round_trips(tmp_path):
    model = _model(scaling="learnable")
    _randomise(model, 1)
    save_adapter(model, tmp_path / "a")
    fresh = _model(scaling="learnable")
    load_adapter(fresh, tmp_path / "a")
    assert fresh[2].scale.item() == pytest.approx(model[2].scale.item())


def test_loading_into_a_merged_model_keeps_it_merged(tmp_path):
    model = _model()
    _randomise(model, 1)
    x = torch.randn(3, 6)
    expected = model(x)
    save_adapter(model, tmp_path / "a")
    _randomise(model, 2)
    model[0].merge()
    load_adapter(model, tmp_path / "a")
    assert model[0].merged
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_rank_mismatch_is_refused_naming_module_and_shapes(tmp_path):
    save_adapter(_model(r=2), tmp_path / "a")
    with pytest.raises(ValueError, match=r"module '0'.*A \(6, 2\).*A \(6, 3\)"):
        load_adapter(_model(r=3), tmp_path / "a")


def test_module_mismatch_is_refused_naming_the_modules(tmp_path):
    save_adapter(_model(), tmp_path / "a")
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    add_lora(other, ["0"], r=2)
    with pytest.raises(ValueError, match=r"not adapted in the model: \['2'\]"):
        load_adapter(other, tmp_path / "a")


def test_learnable_and_fixed_scales_do_not_swap(tmp_path):
    save_adapter(_model(scaling="learnable"), tmp_path / "a")
    with pytest.raises(ValueError, match="learnable"):
        load_adapter(_model(), tmp_path / "a")


def test_a_refused_load_copies_nothing(tmp_path):
    source = _model()
    _randomise(source, 1)
    save_adapter(source, tmp_path / "a")
    config_path = tmp_path / "a" / "lora_core_adapter.json"
    config = json.loads(config_path.read_text())
    config["modules"]["2"]["r"] = 1  # module 0 would load, module 2 is refused
    config_path.write_text(json.dumps(config))
    target = _model()
    before = [p.detach().clone() for p in target.parameters()]
    with pytest.raises(ValueError, match="module '2'"):
        load_adapter(target, tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_missing_adapter_and_adapterless_model_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="lora_core_adapter.json"):
        read_adapter_config(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no LoRALinear"):
        save_adapter(nn.Linear(3, 3), tmp_path / "x")


def test_a_bare_lora_layer_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5), r=1)
    _randomise(layer, 1)
    save_adapter(layer, tmp_path / "a")
    fresh = LoRALinear(nn.Linear(6, 5), r=1)
    load_adapter(fresh, tmp_path / "a")
    assert torch.equal(fresh.B, layer.B)


@pytest.mark.parametrize("scaling", ["standard", "rslora", "learnable"])
def test_adapter_deltas_equal_the_layers_delta_weight(tmp_path, scaling):
    model = _model(r=2, lora_alpha=5.0, scaling=scaling)
    _randomise(model, 1)
    save_adapter(model, tmp_path / "a")
    deltas = adapter_deltas(tmp_path / "a")
    assert sorted(deltas) == ["0", "2"]
    for name in ("0", "2"):
        assert torch.allclose(deltas[name], model.get_submodule(name).delta_weight(), atol=1e-6)
