"""Adapters in PEFT's format: ``export_peft`` writes what PEFT loads, ``import_peft`` reads what PEFT saves.

PEFT (huggingface/peft) stores a LoRA adapter as a folder with ``adapter_config.json``, one
``LoraConfig`` for the whole model, and ``adapter_model.safetensors``, two tensors per
adapted module: ``base_model.model.<module>.lora_A.weight`` of shape (r, d_in) and
``...lora_B.weight`` of shape (d_out, r). These are this suite's Aᵀ and Bᵀ, and PEFT's
scaling is the same α/r (α/√r with ``use_rslora``), so the numbers carry over unchanged.

What one format can say and the other cannot is refused with a message, never
approximated: a learnable scale, a model that is itself a ``LoRALinear`` (PEFT adapts a
model's submodules, never its root), layers that differ in scaling rule or dropout (PEFT
has one of each per adapter, and patterns only for r and α), and, on import, PEFT's
extras (DoRA, trained biases, ``modules_to_save``, ...).

Initialisation differs and is not carried: PEFT's ``init_lora_weights="gaussian"`` draws
``lora_A`` with std 1/r, the blog's (``init="gaussian"`` here) draws A with std 1. The two
agree at r = 1 only. ``init="kaiming"`` is PEFT's default (``init_lora_weights=True``),
number for number. Either way an exported or imported adapter holds its trained tensors,
so the start matters only to whoever trains it further.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .inject import lora_modules
from .layer import LoRALinear, lora_scale

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."
_KEY = re.compile(rf"{re.escape(_PREFIX)}(?P<module>.+)\.lora_(?P<factor>[AB])\.weight")
# LoraConfig fields for features this suite has no counterpart for; any true value is refused.
_UNSUPPORTED = (
    "use_dora",
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "alora_invocation_tokens",
)


# ---------------------------------------------------------------------------------------
# Export


def _shared(layers: dict[str, LoRALinear], attribute: str, why: str):
    values = {name: getattr(layer, attribute) for name, layer in layers.items()}
    if len(set(values.values())) > 1:
        raise ValueError(f"the model's LoRA layers differ in {attribute}: {values}; {why}")
    return next(iter(values.values()))


def _pattern(layers: dict[str, LoRALinear], attribute: str) -> tuple[float, dict[str, float]]:
    """The most common value, and the modules that differ from it as PEFT's exact-name patterns."""
    values = {name: getattr(layer, attribute) for name, layer in layers.items()}
    default = Counter(values.values()).most_common(1)[0][0]
    # PEFT matches a pattern key as the regex (.*\.)?(key)$, so an escaped full name is exact.
    return default, {re.escape(name): v for name, v in values.items() if v != default}


def export_peft(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the model's LoRA layers as a PEFT adapter that ``PeftModel.from_pretrained`` loads.

    Load it onto the plain model (every ``LoRALinear`` replaced by its base) to get the
    same outputs. Differing ranks and alphas go into PEFT's ``rank_pattern`` /
    ``alpha_pattern``.
    """
    layers = lora_modules(model)
    if not layers:
        raise ValueError("model has no LoRALinear layers: there is no adapter to export")
    if "" in layers:
        raise ValueError(
            "model is itself a LoRALinear, and PEFT only adapts a model's submodules, never the "
            "model itself: export nn.Sequential(model) instead, and load it onto nn.Sequential(base)"
        )
    learnable = sorted(name for name, layer in layers.items() if layer.scaling == "learnable")
    if learnable:
        raise ValueError(
            f"modules {learnable} have scaling='learnable': PEFT has no learnable scale, so the "
            "adapter cannot be expressed in its format (save_adapter keeps it)"
        )
    scaling = _shared(layers, "scaling", "PEFT's use_rslora holds one scaling rule per adapter")
    dropout = _shared(layers, "lora_dropout", "PEFT's lora_dropout holds one value per adapter")
    inits = {layer.init for layer in layers.values()}
    r, rank_pattern = _pattern(layers, "r")
    lora_alpha, alpha_pattern = _pattern(layers, "lora_alpha")

    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "target_modules": sorted(layers),
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": scaling == "rslora",
        "lora_dropout": dropout,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        # The closest PEFT name for how A was drawn; see the module docstring for "gaussian".
        "init_lora_weights": "gaussian" if inits == {"gaussian"} else True,
        "inference_mode": True,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = layer.A.detach().T.cpu().contiguous()  # (r, d_in)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = layer.B.detach().T.cpu().contiguous()  # (d_out, r)

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # Temporary names first, so an interrupted export never leaves a config without its tensors.
    tmp_weights, tmp_config = out / (PEFT_WEIGHTS_NAME + ".tmp"), out / (PEFT_CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, out / PEFT_WEIGHTS_NAME)
    os.replace(tmp_config, out / PEFT_CONFIG_NAME)
    return out


# ---------------------------------------------------------------------------------------
# Import


def _pattern_value(patterns: dict, name: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _read_peft(folder: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    config_path, weights_path = folder / PEFT_CONFIG_NAME, folder / PEFT_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no PEFT adapter at {str(folder)!r}: {path.name} is missing")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"peft_type={config.get('peft_type')!r} is not allowed: only 'LORA' adapters import")
    if config.get("bias", "none") != "none":
        raise ValueError(
            f"bias={config['bias']!r} is not allowed: LoRALinear trains no bias, expected 'none'"
        )
    for field in _UNSUPPORTED:
        if config.get(field):
            raise ValueError(
                f"{field}={config[field]!r} is not allowed: lora_core has no counterpart, so this "
                "adapter cannot be imported without changing what it computes"
            )

    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise ValueError(
                f"{PEFT_WEIGHTS_NAME} holds {key!r}, which is not a LoRA factor of a linear layer "
                f"('{_PREFIX}<module>.lora_A.weight' or '.lora_B.weight'); it cannot be imported"
            )
        modules.setdefault(match["module"], {})[match["factor"]] = tensor
    for name, factors in modules.items():
        if set(factors) != {"A", "B"}:
            raise ValueError(f"module {name!r} has only lora_{''.join(factors)} in {PEFT_WEIGHTS_NAME}")
        (r_a, _), (_, r_b) = factors["A"].shape, factors["B"].shape
        want = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        if not r_a == r_b == want:
            raise ValueError(
                f"module {name!r}: lora_A has rank {r_a}, lora_B rank {r_b}, but "
                f"{PEFT_CONFIG_NAME} says r={want}: the adapter folder is inconsistent"
            )
    return config, modules


def import_peft(model: nn.Module, folder: str | os.PathLike) -> list[str]:
    """Load a PEFT LoRA adapter into a lora_core model; return the adapted module names.

    On a plain model, the adapter's modules are wrapped in ``LoRALinear`` (everything else
    frozen, as ``add_lora`` does); on a model that already has LoRA layers, they must be
    exactly the adapter's modules with the same shapes, and their tensors, α and scaling
    are replaced. Everything is checked before the model is touched.
    """
    config, modules = _read_peft(Path(folder))
    scaling = "rslora" if config.get("use_rslora") else "standard"
    dropout = float(config.get("lora_dropout") or 0.0)
    layers = lora_modules(model)
    if layers and set(layers) != set(modules):
        raise ValueError(
            f"the PEFT adapter does not fit this model's LoRA layers: in the adapter only: "
            f"{sorted(set(modules) - set(layers))}; in the model only: {sorted(set(layers) - set(modules))}"
        )
    for name, factors in modules.items():
        target = layers[name] if layers else _submodule(model, name)
        if isinstance(target, LoRALinear) and target.scaling == "learnable":
            raise ValueError(
                f"module {name!r} has scaling='learnable'; a PEFT adapter's scale is fixed, so it "
                "can only be imported into layers with scaling 'standard' or 'rslora'"
            )
        r, d_in = factors["A"].shape
        d_out = factors["B"].shape[0]
        have = (target.in_features, target.out_features) + ((target.r,) if layers else ())
        want = (d_in, d_out) + ((r,) if layers else ())
        if have != want:
            raise ValueError(
                f"module {name!r}: the adapter is for (d_in, d_out{', r' if layers else ''}) = {want} "
                f"but the model's layer is {have}"
            )

    if not layers:
        init = "gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming"
        model.requires_grad_(False)
        for name, factors in modules.items():
            lora_alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
            layer = LoRALinear(
                _submodule(model, name),
                r=factors["A"].shape[0],
                lora_alpha=lora_alpha,
                init=init,
                scaling=scaling,
                lora_dropout=dropout,
            )
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
        layers = lora_modules(model)

    for name, factors in modules.items():
        layer = layers[name]
        lora_alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        was_merged = layer.merged
        if was_merged:
            layer.unmerge()
        with torch.no_grad():
            layer.A.copy_(factors["A"].T)
            layer.B.copy_(factors["B"].T)
            layer.lora_alpha, layer.scaling = float(lora_alpha), scaling
            layer.scale.fill_(lora_scale(layer.r, layer.lora_alpha, scaling))
        if was_merged:
            layer.merge()
    return sorted(modules)


def _submodule(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        found = "no such module" if module is None else f"a {type(module).__name__}"
        raise ValueError(
            f"the PEFT adapter adapts module {name!r}, but in this model that is {found}; "
            f"its nn.Linear layers are: {linear}"
        )
    return module
