import math

import pytest
import torch
from torch import nn

from lora_core import LoRALinear, count_parameters, lora_scale


def _layer(r=4, lora_alpha=8.0, **kw):
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(11, 7, bias=True), r=r, lora_alpha=lora_alpha, **kw)


def test_fresh_layer_computes_exactly_the_base_output():
    layer = _layer()
    x = torch.randn(5, 11)
    assert torch.equal(layer(x), layer.base(x))


def test_only_lora_factors_are_trainable_and_count_is_r_times_in_plus_out():
    layer = _layer(r=3)
    trainable, total = count_parameters(layer)
    assert trainable == 3 * (11 + 7)
    assert total == trainable + 11 * 7 + 7
    with torch.no_grad():
        layer.B.normal_()
    layer(torch.randn(5, 11)).sum().backward()
    assert layer.A.grad is not None and layer.B.grad is not None
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


def test_learnable_scale_is_a_trained_parameter():
    layer = _layer(r=2, lora_alpha=6.0, scaling="learnable")
    assert isinstance(layer.scale, nn.Parameter) and layer.scale.item() == pytest.approx(3.0)
    with torch.no_grad():
        layer.B.normal_()
    layer(torch.randn(5, 11)).sum().backward()
    assert layer.scale.grad is not None
    assert count_parameters(layer)[0] == 2 * 18 + 1


@pytest.mark.parametrize("scaling", ["standard", "rslora", "learnable"])
def test_factored_forward_equals_materialised_delta(scaling):
    layer = _layer(r=4, lora_alpha=8.0, scaling=scaling)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(9, 11)
    expected = layer.base(x) + x @ (layer.A @ layer.B) * layer.scale
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.delta_weight().shape == (11, 7)


def test_scale_is_alpha_over_r_or_over_sqrt_r_for_rslora():
    assert _layer(r=4, lora_alpha=8.0).scale.item() == pytest.approx(2.0)
    assert _layer(r=4, lora_alpha=8.0, scaling="rslora").scale.item() == pytest.approx(4.0)
    assert lora_scale(16, 4.0, "rslora") == pytest.approx(1.0)


def test_gaussian_init_is_standard_normal_and_b_is_zero():
    torch.manual_seed(1)
    layer = LoRALinear(nn.Linear(400, 300), r=50, lora_alpha=1.0, init="gaussian")
    assert torch.count_nonzero(layer.B) == 0
    assert abs(layer.A.mean().item()) < 0.02 and abs(layer.A.std().item() - 1) < 0.02


def test_kaiming_init_matches_loralib_layout_reference():
    # Independent reference: kaiming-uniform (a=√5) drawn on a (r, d_in) tensor, as
    # loralib and PEFT initialise lora_A.weight; ours is its transpose.
    torch.manual_seed(3)
    base = nn.Linear(11, 7)
    state = torch.get_rng_state()
    layer = LoRALinear(base, r=4, lora_alpha=1.0, init="kaiming")
    torch.set_rng_state(state)
    reference = torch.empty(4, 11)
    nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    assert torch.equal(layer.A, reference.T)


@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
def test_a_is_drawn_from_the_cpu_generator_whatever_the_base_device(init):
    # A base on the meta device stands in for a GPU here: a draw made on the layer's
    # device would leave the CPU generator untouched.
    on_meta, on_cpu = nn.Linear(11, 7, device="meta"), nn.Linear(11, 7)
    torch.manual_seed(5)
    LoRALinear(on_meta, r=4, lora_alpha=1.0, init=init)
    after_meta = torch.randn(3)
    torch.manual_seed(5)
    LoRALinear(on_cpu, r=4, lora_alpha=1.0, init=init)
    assert torch.equal(after_meta, torch.randn(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
def test_the_same_seed_gives_the_same_adapter_on_cuda_as_on_the_cpu(init):
    cpu_base = nn.Linear(11, 7)
    cuda_base = nn.Linear(11, 7).cuda()
    torch.manual_seed(5)
    on_cpu = LoRALinear(cpu_base, r=4, lora_alpha=1.0, init=init)
    torch.manual_seed(5)
    on_cuda = LoRALinear(cuda_base, r=4, lora_alpha=1.0, init=init)
    assert on_cuda.A.device.type == "cuda"
    assert torch.equal(on_cuda.A.cpu(), on_cpu.A)


def test_merge_then_unmerge_restores_weight_and_merged_forward_matches():
    layer = _layer()
    with torch.no_grad():
        layer.B.normal_()
    original = layer.base.weight.detach().clone()
    x = torch.randn(6, 11)
    before = layer(x)
    layer.merge()
    assert layer.merged
    assert torch.allclose(layer.base.weight, original + layer.delta_weight().T, atol=1e-6)
    assert torch.allclose(layer(x), before, atol=1e-5)
    layer.unmerge()
    assert not layer.merged
    assert torch.allclose(layer.base.weight, original, atol=1e-6, rtol=0)
    assert torch.allclose(layer(x), before, atol=1e-5)


def test_merging_a_non_finite_delta_raises_and_leaves_weight_untouched():
    layer = _layer()
    with torch.no_grad():
        layer.B.fill_(float("nan"))
    original = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.merge()
    assert torch.equal(layer.base.weight, original) and not layer.merged


def test_double_merge_and_stray_unmerge_are_refused():
    layer = _layer()
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"r": 0}, "r"),
        ({"r": 8}, "r"),  # above min(in, out) = 7
        ({"r": 2.0}, "r"),
        ({"lora_alpha": 0.0}, "lora_alpha"),
        ({"lora_alpha": float("inf")}, "lora_alpha"),
        ({"init": "xavier"}, "init"),
        ({"scaling": "sqrt"}, "scaling"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
    ],
)
def test_invalid_layer_arguments_name_the_parameter(kwargs, name):
    args = {"r": 4, "lora_alpha": 8.0, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}="):
        LoRALinear(nn.Linear(11, 7), **args)


def test_non_linear_base_is_refused():
    with pytest.raises(ValueError, match="base=Conv1d"):
        LoRALinear(nn.Conv1d(3, 3, 1))


def test_matches_peft_lora_layer_with_the_same_factors():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("proj", nn.Linear(11, 7))
    ours = LoRALinear(nn.Linear(11, 7), r=3, lora_alpha=6.0)
    ours.base.load_state_dict(base.proj.state_dict())
    with torch.no_grad():
        ours.B.normal_()
    config = peft.LoraConfig(r=3, lora_alpha=6.0, target_modules=["proj"], lora_dropout=0.0)
    model = peft.get_peft_model(base, config)
    proj = model.base_model.model.proj
    with torch.no_grad():
        proj.lora_A["default"].weight.copy_(ours.A.T)
        proj.lora_B["default"].weight.copy_(ours.B.T)
    x = torch.randn(5, 11)
    assert torch.allclose(model(x), ours(x), atol=1e-5)
