"""export_peft / import_peft, checked both ways against the installed PEFT."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lora_core import LoRALinear, add_lora, export_peft, import_peft, lora_modules, save_adapter

peft = pytest.importorskip("peft")


class Attention(nn.Module):
    """A toy block with PEFT's usual target names, a residual and a gate: not a plain chain."""

    def __init__(self, width):
        super().__init__()
        self.q_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(3))

    def forward(self, x):
        return x + self.o_proj(torch.sigmoid(self.q_proj(x)) * self.v_proj(x))


def _transformer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Attention(8), nn.LayerNorm(8), Attention(8), nn.Linear(8, 3))


def _randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.5)


def _peft_outputs(plain, folder, x):
    peft_model = peft.PeftModel.from_pretrained(plain, str(folder))
    peft_model.eval()
    with torch.no_grad():
        return peft_model(x), peft_model


def test_the_regression_model_exported_loads_in_peft_with_the_same_outputs(tmp_path, small_task, base):
    lora = LoRALinear(copy.deepcopy(base), r=2, lora_alpha=3.0)
    _randomise(lora, 1)
    plain = nn.Sequential(copy.deepcopy(base))
    export_peft(nn.Sequential(lora), tmp_path / "peft")
    x = small_task["X2"][:64]
    got, peft_model = _peft_outputs(plain, tmp_path / "peft", x)
    assert (got - lora(x).detach()).abs().max() <= 1e-5
    # PEFT read our numbers as its own: the same scaling and a (r, d_in) lora_A.
    layer = peft_model.base_model.model[0]
    assert layer.scaling["default"] == pytest.approx(1.5)
    assert torch.equal(layer.lora_A["default"].weight, lora.A.detach().T)


def test_a_transformer_with_differing_ranks_and_rslora_loads_in_peft(tmp_path):
    model = _transformer()
    plain = copy.deepcopy(model)
    add_lora(model, ["q_proj"], r=2, lora_alpha=4.0, scaling="rslora")
    add_lora(model, r"2\.v_proj", r=3, lora_alpha=1.0, scaling="rslora")
    _randomise(model, 2)
    folder = export_peft(model, tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == ["0.q_proj", "2.q_proj", "2.v_proj"]
    assert (config["r"], config["rank_pattern"], config["use_rslora"]) == (2, {r"2\.v_proj": 3}, True)
    shapes = {k: tuple(v.shape) for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    assert shapes["base_model.model.2.v_proj.lora_A.weight"] == (3, 8)
    assert shapes["base_model.model.2.v_proj.lora_B.weight"] == (8, 3)

    x = torch.randn(5, 8)
    unadapted = plain(x).detach()
    got, _ = _peft_outputs(plain, folder, x)  # PEFT wraps `plain` in place
    assert (got - model(x).detach()).abs().max() <= 1e-5
    assert not torch.allclose(got, unadapted)  # the adapter changes something


def _peft_trained(folder, **config):
    plain = _transformer()
    peft_model = peft.get_peft_model(copy.deepcopy(plain), peft.LoraConfig(**config))
    # PEFT starts lora_B at zero; random factors stand in for training.
    _randomise(peft_model, 3)
    peft_model.save_pretrained(str(folder))
    peft_model.eval()
    return plain, peft_model


@pytest.mark.parametrize(
    "config",
    [
        dict(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj"]),
        dict(
            r=2,
            lora_alpha=5,
            target_modules=r".*\.(q|v)_proj",
            use_rslora=True,
            rank_pattern={"0.q_proj": 4},
            alpha_pattern={"v_proj": 2},
        ),
    ],
)
def test_a_peft_trained_adapter_imports_into_the_plain_model_with_the_same_outputs(tmp_path, config):
    plain, peft_model = _peft_trained(tmp_path / "peft", **config)
    names = import_peft(plain, tmp_path / "peft")
    assert names == ["0.q_proj", "0.v_proj", "2.q_proj", "2.v_proj"]
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert (plain(x) - peft_model(x)).abs().max() <= 1e-5
    trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{f}" for m in names for f in "AB"}
    if config.get("rank_pattern"):
        assert lora_modules(plain)["0.q_proj"].r == 4
        assert lora_modules(plain)["2.v_proj"].scale.item() == pytest.approx(2 / 2**0.5)


def test_import_into_existing_lora_layers_replaces_them_and_keeps_a_merge(tmp_path):
    plain, peft_model = _peft_trained(
        tmp_path / "peft", r=2, lora_alpha=5, target_modules=["q_proj", "v_proj"]
    )
    model = copy.deepcopy(plain)
    add_lora(model, ["q_proj", "v_proj"], r=2, lora_alpha=1.0)
    lora_modules(model)["2.v_proj"].merge()
    import_peft(model, tmp_path / "peft")
    assert lora_modules(model)["2.v_proj"].merged
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert (model(x) - peft_model(x)).abs().max() <= 1e-5


def test_export_then_import_gives_back_the_same_adapter(tmp_path):
    model = _transformer()
    plain = copy.deepcopy(model)
    add_lora(model, ["q_proj", "o_proj"], r=2, lora_alpha=7.0, init="kaiming")
    _randomise(model, 4)
    import_peft(plain, export_peft(model, tmp_path / "peft"))
    for name, layer in lora_modules(model).items():
        other = lora_modules(plain)[name]
        assert torch.equal(other.delta_weight(), layer.delta_weight())
        assert other.init == "kaiming"


def test_what_peft_cannot_express_is_refused_on_export(tmp_path):
    with pytest.raises(ValueError, match="learnable"):
        model = _transformer()
        add_lora(model, ["q_proj"], r=2, scaling="learnable")
        export_peft(model, tmp_path / "a")
    with pytest.raises(ValueError, match=r"nn.Sequential\(model\)"):
        export_peft(LoRALinear(nn.Linear(4, 3), r=1), tmp_path / "b")
    with pytest.raises(ValueError, match="differ in scaling"):
        model = _transformer()
        add_lora(model, ["q_proj"], r=2, scaling="rslora")
        add_lora(model, ["v_proj"], r=2)
        export_peft(model, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_peft_extras_and_mismatches_are_refused_on_import_before_the_model_changes(tmp_path):
    plain, _ = _peft_trained(tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    before = copy.deepcopy(plain.state_dict())
    with pytest.raises(ValueError, match="use_dora=True is not allowed"):
        import_peft(plain, tmp_path / "dora")

    _peft_trained(tmp_path / "ok", r=2, target_modules=["q_proj"])
    narrow = nn.Sequential(Attention(8), nn.LayerNorm(8), Attention(6))
    with pytest.raises(ValueError, match=r"module '2.q_proj'.*\(8, 8\).*\(6, 6\)"):
        import_peft(narrow, tmp_path / "ok")
    assert not lora_modules(narrow)
    with pytest.raises(ValueError, match=r"adapts module '0.q_proj'.*nn.Linear layers are: \['0'\]"):
        import_peft(nn.Sequential(nn.Linear(8, 8)), tmp_path / "ok")

    tensors = load_file(str(tmp_path / "ok" / "adapter_model.safetensors"))
    tensors["base_model.model.0.q_proj.lora_magnitude_vector"] = torch.ones(8)
    save_file(tensors, str(tmp_path / "ok" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="lora_magnitude_vector"):
        import_peft(plain, tmp_path / "ok")
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())


def test_the_suites_own_adapter_files_are_not_taken_for_peft(tmp_path):
    model = _transformer()
    add_lora(model, ["q_proj"], r=2)
    save_adapter(model, tmp_path / "own")
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        import_peft(_transformer(), tmp_path / "own")
