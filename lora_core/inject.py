"""Putting LoRA layers into an existing model, and taking them out again.

``add_lora`` swaps the selected ``nn.Linear`` submodules for ``LoRALinear`` wrappers in
place, at any depth, and freezes everything else; the model's own ``forward`` is left as
it is, so it keeps calling its submodules exactly as before. Target selection follows
PEFT: a string is a regular expression that must match the whole qualified name, a list
matches a name exactly or as a dotted suffix (``"q_proj"`` matches ``"layers.0.attn.q_proj"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from .layer import LoRALinear, check_layer_options

# What add_lora passes on to LoRALinear besides r and lora_alpha.
LAYER_OPTIONS = ("init", "scaling", "lora_dropout")


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in the model by qualified name ("" when the model is one)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, target_modules: str | Iterable[str]) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def add_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    r: int = 8,
    lora_alpha: float = 8.0,
    **layer_options,
) -> list[str]:
    """Wrap the matching ``nn.Linear`` layers in ``LoRALinear``; return their names.

    Every parameter that is not a LoRA parameter is frozen. ``layer_options`` are passed
    to ``LoRALinear`` (``init``, ``scaling``, ``lora_dropout``).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"target_modules={target_modules!r} is not allowed: expected a valid regular "
                f"expression ({err})"
            ) from None
    else:
        if not isinstance(target_modules, Iterable):
            raise ValueError(
                f"target_modules={target_modules!r} is not allowed: expected a regex string "
                "or a non-empty list of module names"
            )
        target_modules = list(target_modules)
        if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
            raise ValueError(
                f"target_modules={target_modules!r} is not allowed: expected a regex string "
                "or a non-empty list of module names"
            )

    # Modules already inside a LoRALinear (its `base`) are not candidates of their own.
    inside = {f"{n}.base" for n in lora_modules(model)}
    names = [
        name
        for name, _ in model.named_modules()
        if name and name not in inside and _matches(name, target_modules)
    ]
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in inside]
    if not names:
        raise ValueError(
            f"target_modules={target_modules!r} matched no module; the model's nn.Linear "
            f"layers are: {linear_names}"
        )
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise ValueError(f"module {name!r} already has a LoRA adapter")
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target_modules={target_modules!r} matched {name!r}, a "
                f"{type(module).__name__}; only nn.Linear layers can be adapted "
                f"(those are: {linear_names})"
            )

    # Every option checked against every target before anything is built: building a
    # wrapper freezes its base, so a failure on a later target would leave earlier ones
    # half-changed.
    unknown = sorted(set(layer_options) - set(LAYER_OPTIONS))
    if unknown:
        raise ValueError(
            f"{unknown[0]}={layer_options[unknown[0]]!r} is not allowed: add_lora takes r, "
            f"lora_alpha and the layer options {', '.join(LAYER_OPTIONS)}"
        )
    for name in names:
        try:
            check_layer_options(model.get_submodule(name), r, lora_alpha, **layer_options)
        except ValueError as err:
            raise ValueError(f"{err} (module {name!r})") from None

    # LoRA parameters added by earlier calls keep their setting: calls compose.
    earlier = {p: p.requires_grad for p in lora_parameters(model)}
    wrapped = {
        name: LoRALinear(model.get_submodule(name), r=r, lora_alpha=lora_alpha, **layer_options)
        for name in names
    }
    model.requires_grad_(False)
    for p, trainable in earlier.items():
        p.requires_grad_(trainable)
    for name, layer in wrapped.items():
        _set_submodule(model, name, layer)
        for p in lora_parameters(layer):
            p.requires_grad_(True)
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters LoRA trains: A, B and, where learnable, the scale."""
    params = []
    for layer in lora_modules(model).values():
        params += [layer.A, layer.B]
        if isinstance(layer.scale, nn.Parameter):
            params.append(layer.scale)
    return params


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())  # already de-duplicated by nn.Module
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _check_mergeable(layers: dict[str, LoRALinear]) -> None:
    """Refuse before the first merge, so a diverged layer never leaves others merged."""
    bad = [
        name or "<model>" for name, layer in layers.items() if not layer.merged and not layer.delta_finite()
    ]
    if bad:
        raise ValueError(
            f"LoRA layers {bad} hold NaN or Inf values in delta_weight() (did training "
            "diverge?); no layer was merged"
        )


def merge_lora(model: nn.Module) -> None:
    """Merge every not-yet-merged LoRA layer into its base weight."""
    layers = lora_modules(model)
    _check_mergeable(layers)
    for layer in layers.values():
        if not layer.merged:
            layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora`` on every merged LoRA layer."""
    for layer in lora_modules(model).values():
        if layer.merged:
            layer.unmerge()


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every ``LoRALinear`` by its plain ``nn.Linear`` and return the model.

    ``merge=True`` keeps the adaptation in the weights (PEFT's ``merge_and_unload``);
    ``merge=False`` drops it and gives back the original base (PEFT's ``unload``). When
    the model itself is a ``LoRALinear`` its base is returned, since a module cannot
    replace itself in place.
    """
    layers = lora_modules(model)
    if merge:
        _check_mergeable(layers)
    for name, layer in layers.items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        if name == "":
            return layer.base
        _set_submodule(model, name, layer.base)
    return model
