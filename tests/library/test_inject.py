import pytest
import torch
from torch import nn

from lora_core import (
    LoRALinear,
    add_lora,
    count_parameters,
    lora_modules,
    lora_parameters,
    merge_lora,
    unload_lora,
    unmerge_lora,
)


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        w = torch.softmax(self.q_proj(x) @ self.k_proj(x).T / x.shape[-1] ** 0.5, dim=-1)
        return self.out(w @ self.v_proj(x))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = Attention(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class Tiny(nn.Module):
    """Nested, with dotted names and a forward that is not a plain chain of submodules."""

    def __init__(self, d=8):
        super().__init__()
        self.layers = nn.ModuleList([Block(d), Block(d)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Tiny()


def test_suffix_list_adapts_exactly_the_matched_layers_at_any_depth(model):
    names = add_lora(model, ["q_proj", "v_proj"], r=2, lora_alpha=4.0)
    expected = [f"layers.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert names == expected
    assert sorted(lora_modules(model)) == sorted(expected)
    assert isinstance(model.layers[1].attn.v_proj, LoRALinear)
    assert isinstance(model.layers[1].attn.k_proj, nn.Linear)


def test_regex_must_match_the_whole_name(model):
    assert add_lora(model, r"layers\.1\.mlp\.[02]", r=2) == ["layers.1.mlp.0", "layers.1.mlp.2"]
    with pytest.raises(ValueError, match="matched no module"):
        add_lora(Tiny(), r"mlp", r=2)  # a partial match is not a match


def test_output_unchanged_at_init_and_only_lora_trains(model):
    x = torch.randn(5, 8)
    before = model(x)
    add_lora(model, ["q_proj", "v_proj", "head"], r=2)
    assert torch.equal(model(x), before)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(model)}
    assert count_parameters(model)[0] == 4 * 2 * (8 + 8) + 2 * (8 + 3)


def test_merge_unmerge_and_unload_keep_outputs(model):
    x = torch.randn(5, 8)
    add_lora(model, ["q_proj", "out"], r=2)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.B.normal_()
    adapted = model(x)
    merge_lora(model)
    assert all(layer.merged for layer in lora_modules(model).values())
    assert torch.allclose(model(x), adapted, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(model(x), adapted, atol=1e-5)
    plain = unload_lora(model)
    assert not lora_modules(plain)
    assert isinstance(plain.layers[0].attn.q_proj, nn.Linear)
    assert torch.allclose(plain(x), adapted, atol=1e-5)


def test_unload_without_merge_gives_back_the_original(model):
    x = torch.randn(5, 8)
    original = model(x)
    add_lora(model, ["q_proj"], r=2)
    with torch.no_grad():
        model.layers[0].attn.q_proj.B.normal_()
    merge_lora(model)
    plain = unload_lora(model, merge=False)
    assert torch.allclose(plain(x), original, atol=1e-5)


def test_unload_of_a_bare_lora_layer_returns_its_base():
    layer = LoRALinear(nn.Linear(4, 3), r=1)
    assert unload_lora(layer) is layer.base


def test_matching_a_non_linear_module_is_refused_with_its_type(model):
    with pytest.raises(ValueError, match="LayerNorm"):
        add_lora(model, ["norm"], r=2)


def test_nothing_matched_lists_the_linear_layers(model):
    with pytest.raises(ValueError, match="layers.0.attn.q_proj"):
        add_lora(model, ["query"], r=2)


def test_adapting_twice_is_refused(model):
    add_lora(model, ["q_proj"], r=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        add_lora(model, r"layers\.0\.attn\.q_proj", r=2)
    # The wrapped base is not a candidate of its own: a second call on other layers works.
    assert add_lora(model, ["k_proj"], r=2) == ["layers.0.attn.k_proj", "layers.1.attn.k_proj"]


def test_a_bad_rank_leaves_the_model_untouched(model):
    with pytest.raises(ValueError, match="^r="):
        add_lora(model, ["q_proj"], r=0)
    assert not lora_modules(model)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("targets", [[], [""], "("])
def test_invalid_target_modules_name_the_parameter(model, targets):
    with pytest.raises(ValueError, match="^target_modules="):
        add_lora(model, targets, r=2)
