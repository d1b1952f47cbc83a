"""Saving, loading and switching adapters.

An adapter is the small part LoRA trains: each layer's A, B (and learnable scale). It is
stored as a folder with the tensors in ``lora_core_adapter.safetensors`` and the settings,
per module, in ``lora_core_adapter.json``. The names are the suite's own: PEFT's
``adapter_model.safetensors`` / ``adapter_config.json`` hold a different layout (Aᵀ, Bᵀ,
one LoraConfig), which ``peft_format.export_peft`` writes and ``import_peft`` reads, so no
file claims a format it is not. safetensors holds tensors only, so loading an adapter
cannot run code, which a pickled ``.pt`` file can.

Loading writes into the model's existing ``LoRALinear`` layers, so several adapters saved
from one base can be loaded in turn to switch between adaptations without rebuilding it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .inject import lora_modules
from .layer import INITS, SCALINGS, LoRALinear, lora_scale
from .validation import check_choice, check_float, check_int

WEIGHTS_NAME = "lora_core_adapter.safetensors"
CONFIG_NAME = "lora_core_adapter.json"
FORMAT_VERSION = 1


def _version() -> str:
    from . import __version__

    return __version__


def _key(module_name: str, tensor: str) -> str:
    return f"{module_name}.{tensor}" if module_name else tensor


def _module_config(layer: LoRALinear) -> dict:
    return {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "r": layer.r,
        "lora_alpha": layer.lora_alpha,
        "init": layer.init,
        "scaling": layer.scaling,
        "lora_dropout": layer.lora_dropout,
    }


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write the model's LoRA tensors and settings into the folder ``path``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} is not allowed: expected a non-empty str")
    layers = lora_modules(model)
    if not layers:
        raise ValueError("model has no LoRALinear layers: there is no adapter to save")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)

    tensors = {}
    for module_name, layer in layers.items():
        tensors[_key(module_name, "A")] = layer.A.detach().cpu().contiguous()
        tensors[_key(module_name, "B")] = layer.B.detach().cpu().contiguous()
        if layer.scaling == "learnable":
            tensors[_key(module_name, "scale")] = layer.scale.detach().cpu().reshape(1)
    modules = {module_name: _module_config(layer) for module_name, layer in layers.items()}
    first = next(iter(modules.values()))
    config = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "lora_core_version": _version(),
        "target_modules": list(modules),
        # The shared settings, for a reader; per-module values are what loading uses.
        **{k: first[k] for k in ("r", "lora_alpha", "init", "scaling", "lora_dropout")},
        "modules": modules,
    }
    # Write both to temporary names first so an interrupted save never leaves a
    # folder whose config describes tensors that are not there.
    tmp_weights, tmp_config = folder / (WEIGHTS_NAME + ".tmp"), folder / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"name": name, "format": "pt"})
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    os.replace(tmp_config, folder / CONFIG_NAME)
    return folder


def read_adapter_config(path: str | os.PathLike) -> dict:
    """The settings stored beside a saved adapter's tensors, checked in full.

    Raises ``FileNotFoundError`` when there is no adapter at ``path`` and ``ValueError``
    naming the file when its content cannot be used.
    """
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no adapter at {str(path)!r}: {CONFIG_NAME} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a JSON {type(config).__name__}, expected an object")
    modules = config.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f'{config_path}: "modules" must be a non-empty object of module name -> settings')
    for module_name, saved in modules.items():
        try:
            _check_module_config(saved)
        except ValueError as err:
            raise ValueError(f"{config_path}: module {module_name or '<model>'!r}: {err}") from None
    config.setdefault("name", "default")
    if not isinstance(config["name"], str):
        raise ValueError(f"{config_path}: name={config['name']!r} is not allowed: expected a str")
    return config


def _check_module_config(saved: object) -> None:
    if not isinstance(saved, dict):
        raise ValueError(f"settings={saved!r} is not allowed: expected an object")
    missing = [k for k in ("in_features", "out_features", "r", "lora_alpha", "scaling") if k not in saved]
    if missing:
        raise ValueError(f"settings lack {', '.join(missing)}")
    d_in = check_int("in_features", saved["in_features"], 1)
    d_out = check_int("out_features", saved["out_features"], 1)
    check_int("r", saved["r"], 1, min(d_in, d_out))
    check_float("lora_alpha", saved["lora_alpha"], low=0.0, low_inclusive=False)
    check_choice("scaling", saved["scaling"], SCALINGS)
    if "init" in saved:
        check_choice("init", saved["init"], INITS)
    if "lora_dropout" in saved:
        check_float("lora_dropout", saved["lora_dropout"], 0.0, 1.0)


def _read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a saved adapter, every tensor the config needs present and finite."""
    config = read_adapter_config(path)
    weights_path = Path(path) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"no adapter tensors at {str(path)!r}: {WEIGHTS_NAME} is missing")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} cannot be read as safetensors: {err}") from None
    for module_name, saved in config["modules"].items():
        label = module_name or "<model>"
        names = ["A", "B"] + (["scale"] if saved["scaling"] == "learnable" else [])
        for tensor in names:
            key = _key(module_name, tensor)
            if key not in tensors:
                raise ValueError(f"{weights_path} has no tensor {key!r} for module {label!r}")
            if not tensors[key].is_floating_point() or not torch.isfinite(tensors[key]).all():
                raise ValueError(f"{weights_path}: tensor {key!r} holds NaN, Inf or non-float values")
        stored_a, stored_b = (tuple(tensors[_key(module_name, t)].shape) for t in "AB")
        want_a, want_b = (saved["in_features"], saved["r"]), (saved["r"], saved["out_features"])
        if (stored_a, stored_b) != (want_a, want_b):
            raise ValueError(
                f"module {label!r}: {WEIGHTS_NAME} holds A {stored_a}, B {stored_b} but "
                f"{CONFIG_NAME} says A {want_a}, B {want_b}: the adapter folder is inconsistent"
            )
        if "scale" in names and tensors[_key(module_name, "scale")].numel() != 1:
            raise ValueError(f"{weights_path}: tensor {_key(module_name, 'scale')!r} is not a single number")
    return config, tensors


def load_adapter(model: nn.Module, path: str | os.PathLike) -> str:
    """Load a saved adapter into the model's LoRA layers; return the adapter's name.

    The model must have LoRA layers with the same names, base shapes and ranks as the
    adapter; anything else, and any damaged or invalid file, is refused before a single
    tensor is copied. The adapter's lora_alpha and scaling replace the layer's. A merged
    layer is unmerged, loaded and merged again.
    """
    config, tensors = _read_adapter(path)
    layers = lora_modules(model)

    missing = sorted(set(config["modules"]) - set(layers))
    extra = sorted(set(layers) - set(config["modules"]))
    if missing or extra:
        raise ValueError(
            f"adapter {config['name']!r} does not fit this model: modules in the adapter but "
            f"not adapted in the model: {missing}; adapted in the model but not in the "
            f"adapter: {extra}"
        )
    for module_name, saved in config["modules"].items():
        layer = layers[module_name]
        label = module_name or "<model>"
        want_a, want_b = (saved["in_features"], saved["r"]), (saved["r"], saved["out_features"])
        have_a, have_b = tuple(layer.A.shape), tuple(layer.B.shape)
        if (want_a, want_b) != (have_a, have_b):
            raise ValueError(
                f"module {label!r}: the adapter has A {want_a}, B {want_b} but the model's "
                f"layer has A {have_a}, B {have_b}"
            )
        if (saved["scaling"] == "learnable") != (layer.scaling == "learnable"):
            raise ValueError(
                f"module {label!r}: the adapter's scaling is {saved['scaling']!r} but the "
                f"model's layer uses {layer.scaling!r}; a learnable scale cannot be swapped "
                "with a fixed one"
            )

    for module_name, saved in config["modules"].items():
        layer = layers[module_name]
        was_merged = layer.merged
        if was_merged:
            layer.unmerge()
        with torch.no_grad():
            layer.A.copy_(tensors[_key(module_name, "A")])
            layer.B.copy_(tensors[_key(module_name, "B")])
            layer.lora_alpha, layer.scaling = float(saved["lora_alpha"]), saved["scaling"]
            if saved["scaling"] == "learnable":
                layer.scale.copy_(tensors[_key(module_name, "scale")].reshape(()))
            else:
                layer.scale.fill_(lora_scale(saved["r"], saved["lora_alpha"], saved["scaling"]))
        if was_merged:
            layer.merge()
    return config["name"]


def adapter_deltas(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """ΔΘ = A·B·scale (d_in, d_out) of each module of a saved adapter, without a model.

    Lets a report compare the adaptations a sweep saved, config by config.
    """
    config, tensors = _read_adapter(path)
    deltas = {}
    for module_name, saved in config["modules"].items():
        if saved["scaling"] == "learnable":
            scale = tensors[_key(module_name, "scale")].reshape(())
        else:
            scale = lora_scale(saved["r"], saved["lora_alpha"], saved["scaling"])
        deltas[module_name] = tensors[_key(module_name, "A")] @ tensors[_key(module_name, "B")] * scale
    return deltas
