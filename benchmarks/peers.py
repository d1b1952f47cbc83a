"""loralib and PEFT layers holding given LoRA factors, for side-by-side measurement.

Both store the factors transposed relative to lora_core and the blog:
``lora_A.weight`` = Aᵀ (r, d_in) and ``lora_B.weight`` = Bᵀ (d_out, r), with the same
scale α/r, so ΔW = B·A = ΔΘᵀ. Each builder returns None (and ``missing`` says why)
when its library is not importable: the peers are optional dependencies.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

missing: dict[str, str] = {}


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as err:
        missing[name] = f"{name} is not importable ({err}); its rows are skipped"
        return None


def loralib_layer(base: nn.Linear, A: torch.Tensor, B: torch.Tensor, alpha: float):
    """loralib's ``lora.Linear`` with base's weight and the factors A (d_in, r), B (r, d_out)."""
    lora = _import("loralib")
    if lora is None:
        return None
    r = A.shape[1]
    layer = lora.Linear(
        base.in_features, base.out_features, r=r, lora_alpha=alpha, bias=base.bias is not None
    )
    with torch.no_grad():
        layer.weight.copy_(base.weight)
        if base.bias is not None:
            layer.bias.copy_(base.bias)
        layer.lora_A.copy_(A.T)
        layer.lora_B.copy_(B.T)
    lora.mark_only_lora_as_trainable(layer)
    return layer


class _Holder(nn.Module):
    """PEFT adapts named submodules of a model; this model is the one linear layer."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x)


def peft_model(base: nn.Linear, A: torch.Tensor, B: torch.Tensor, alpha: float):
    """PEFT's ``LoraModel`` over a copy of base, its adapter set to A, B.

    Returns (model, lora_A, lora_B): the adapter's two ``nn.Linear`` factors.
    """
    if _import("peft") is None:
        return None
    from peft import LoraConfig, LoraModel

    r = A.shape[1]
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["linear"], lora_dropout=0.0)
    model = LoraModel(_Holder(copy.deepcopy(base)), config, "default")
    layer = model.model.linear
    lora_A, lora_B = layer.lora_A["default"], layer.lora_B["default"]
    if layer.scaling["default"] != alpha / r:
        raise RuntimeError(f"PEFT scales by {layer.scaling['default']}, expected α/r = {alpha / r}")
    with torch.no_grad():
        lora_A.weight.copy_(A.T)
        lora_B.weight.copy_(B.T)
    return model, lora_A, lora_B


def peft_adapted(base: nn.Module, layers: dict, alpha: float):
    """PEFT's ``LoraModel`` over a copy of ``base``, adapting the modules lora_core adapted in
    ``layers`` (name -> LoRALinear) with the same A, B, rank and α/r scale.

    Returns (model, {name: (lora_A, lora_B)}), or None when PEFT is not importable.
    """
    if _import("peft") is None:
        return None
    from peft import LoraConfig, LoraModel

    r = next(iter(layers.values())).r
    targets = sorted({name.rsplit(".", 1)[-1] for name in layers})
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    model = LoraModel(copy.deepcopy(base), config, "default")
    factors = {}
    for name, layer in layers.items():
        theirs = model.model.get_submodule(name)
        lora_A, lora_B = theirs.lora_A["default"], theirs.lora_B["default"]
        with torch.no_grad():
            lora_A.weight.copy_(layer.A.T)
            lora_B.weight.copy_(layer.B.T)
        factors[name] = (lora_A, lora_B)
    return model, factors
