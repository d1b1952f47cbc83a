"""The "Demystifying LoRA" walk-through's layer and wrapper, rebuilt to show its two defects.

Written from the summary in the project's EXPERIMENT.md, not copied. Its layer returns only
the update, 0.01 · x·A·B, with A ~ N(0, 1) and B = 0. Its wrapper keeps one such layer per
``nn.Linear`` in a ``ModuleDict`` keyed by the module's name, and its forward replays
``named_modules()`` in order, x = module(x) (+ the update). Notebook 05 runs both on the
transformer: the dotted names are refused, and the replay is not the model's computation.
``lora_core.add_lora`` is the working alternative (it swaps the layers in place).
"""

from __future__ import annotations

import torch
from torch import nn

FIXED_SCALE = 0.01  # the walk-through's scaling, fixed whatever the rank


class WalkthroughLoRALayer(nn.Module):
    """The update alone: FIXED_SCALE · x·A·B, A (in, r) ~ N(0, 1), B (r, out) = 0."""

    def __init__(self, in_features: int, out_features: int, rank: int = 4):
        super().__init__()
        self.A = nn.Parameter(torch.randn(in_features, rank))
        self.B = nn.Parameter(torch.zeros(rank, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FIXED_SCALE * (x @ self.A @ self.B)


class WalkthroughWrapper(nn.Module):
    """The walk-through's model class. ``safe_keys=True`` replaces the dots in names by
    underscores, the usual patch, so that the second defect (the replay) can be seen too."""

    def __init__(self, model: nn.Module, rank: int = 4, safe_keys: bool = False):
        super().__init__()
        self.model = model
        self.lora = nn.ModuleDict()
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                key = name.replace(".", "_") if safe_keys else name
                # nn.ModuleDict refuses "layers.0.attn.q_proj": a KeyError at this line.
                self.lora[key] = WalkthroughLoRALayer(module.in_features, module.out_features, rank)
        self.safe_keys = safe_keys
        model.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.model.named_modules():
            key = name.replace(".", "_") if self.safe_keys else name
            out = module(x)
            x = out + self.lora[key](x) if key in self.lora else out
        return x


def replay_outcome(model: nn.Module, tokens: torch.Tensor) -> str:
    """What the walk-through's forward does on ``model``: the error it raises, or how far
    its output is from the model's own."""
    wrapper = WalkthroughWrapper(model, safe_keys=True)
    with torch.no_grad():
        try:
            out = wrapper(tokens)
        except Exception as err:  # any error is the finding here, reported as text
            return f"{type(err).__name__}: {str(err).splitlines()[0]}"
        ref = model(tokens)
    if out.shape != ref.shape:
        return f"wrong shape: {tuple(out.shape)} instead of {tuple(ref.shape)}"
    return f"max |difference| from the model's output: {float((out - ref).abs().max()):.3g}"
