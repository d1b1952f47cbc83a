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
from safetensors.torch import load_file, save_file
from torch import nn

from .inject import lora_modules
from .layer import LoRALinear, lora_scale

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
    """The settings stored beside a saved adapter's tensors."""
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no adapter at {str(path)!r}: {CONFIG_NAME} is missing")
    return json.loads(config_path.read_text())


def load_adapter(model: nn.Module, path: str | os.PathLike) -> str:
    """Load a saved adapter into the model's LoRA layers; return the adapter's name.

    The model must have LoRA layers with the same names, base shapes and ranks as the
    adapter; anything else is refused before a single tensor is copied. The adapter's
    lora_alpha and scaling replace the layer's. A merged layer is unmerged, loaded and
    merged again.
    """
    config = read_adapter_config(path)
    tensors = load_file(str(Path(path) / WEIGHTS_NAME))
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
        stored_a, stored_b = (tuple(tensors[_key(module_name, t)].shape) for t in "AB")
        if (stored_a, stored_b) != (want_a, want_b):
            raise ValueError(
                f"module {label!r}: {WEIGHTS_NAME} holds A {stored_a}, B {stored_b} but "
                f"{CONFIG_NAME} says A {want_a}, B {want_b}: the adapter folder is inconsistent"
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
            layer.lora_alpha, layer.scaling = saved["lora_alpha"], saved["scaling"]
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
    config = read_adapter_config(path)
    tensors = load_file(str(Path(path) / WEIGHTS_NAME))
    deltas = {}
    for module_name, saved in config["modules"].items():
        if saved["scaling"] == "learnable":
            scale = tensors[_key(module_name, "scale")].reshape(())
        else:
            scale = lora_scale(saved["r"], saved["lora_alpha"], saved["scaling"])
        deltas[module_name] = tensors[_key(module_name, "A")] @ tensors[_key(module_name, "B")] * scale
    return deltas
