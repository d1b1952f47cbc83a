"""The LoRA layer: a frozen ``nn.Linear`` plus a trainable low-rank update.

Follows Hu et al. 2021 (arXiv 2106.09685) in the notation of the blog post the suite
reproduces ("Understanding LoRA with a minimal example", D. Falbel, 2023): for an input
row x of width d_in,

    y = base(x) + x · (A · B) · scale,    A: (d_in, r),  B: (r, d_out)

so the learned update ΔΘ = A · B · scale has the shape of the blog's θ, (d_in, d_out).
``nn.Linear`` stores its weight as (d_out, d_in), so it is ΔΘᵀ that merges into it.

Convention note: PEFT and loralib store the same factors transposed, ``lora_A.weight`` =
Aᵀ (r, d_in) and ``lora_B.weight`` = Bᵀ (d_out, r), and write ΔW = B·A = ΔΘᵀ. The
numbers are the same; only the layout differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .validation import check_choice, check_float, check_int

INITS = ("gaussian", "kaiming")
SCALINGS = ("standard", "rslora", "learnable")


def lora_scale(r: int, lora_alpha: float, scaling: str) -> float:
    """The factor ΔΘ is multiplied by: α/r, or α/√r for rsLoRA (arXiv 2312.03732).

    A learnable scale starts at α/r and is then trained with A and B.
    """
    return lora_alpha / math.sqrt(r) if scaling == "rslora" else lora_alpha / r


def check_layer_options(
    base: nn.Module,
    r: int = 8,
    lora_alpha: float = 8.0,
    init: str = "gaussian",
    scaling: str = "standard",
    lora_dropout: float = 0.0,
) -> dict:
    """``LoRALinear``'s arguments checked for ``base``, without building anything.

    Lets ``add_lora`` refuse a bad option for any of its targets before it changes one.
    """
    if not isinstance(base, nn.Linear):
        raise ValueError(f"base={type(base).__name__} is not allowed: expected an nn.Linear")
    options = {
        "r": check_int("r", r, 1, min(base.in_features, base.out_features)),
        "lora_alpha": check_float("lora_alpha", lora_alpha, low=0.0, low_inclusive=False),
        "init": check_choice("init", init, INITS),
        "scaling": check_choice("scaling", scaling, SCALINGS),
        "lora_dropout": check_float("lora_dropout", lora_dropout, 0.0, 1.0),
    }
    if options["lora_dropout"] == 1.0:
        raise ValueError("lora_dropout=1.0 is not allowed: expected a finite number in [0, 1)")
    return options


class LoRALinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` and adds a trainable rank-r update to its output.

    ``init="gaussian"`` is the blog's A ~ N(0, 1); ``"kaiming"`` is loralib's and PEFT's
    default (kaiming-uniform with a = √5, computed as for a (r, d_in) weight). B starts at
    zero either way, so a fresh layer computes exactly what the base computes.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        lora_alpha: float = 8.0,
        init: str = "gaussian",
        scaling: str = "standard",
        lora_dropout: float = 0.0,
    ):
        super().__init__()
        options = check_layer_options(base, r, lora_alpha, init, scaling, lora_dropout)
        self.r, self.lora_alpha = options["r"], options["lora_alpha"]
        self.init, self.scaling = options["init"], options["scaling"]
        self.lora_dropout = options["lora_dropout"]
        d_in, d_out = base.in_features, base.out_features

        self.base = base
        base.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.A = nn.Parameter(torch.empty(d_in, self.r, **factory))
        self.B = nn.Parameter(torch.zeros(self.r, d_out, **factory))
        self.reset_lora_parameters()

        scale = torch.tensor(lora_scale(self.r, self.lora_alpha, self.scaling), **factory)
        if self.scaling == "learnable":
            self.scale = nn.Parameter(scale)
        else:
            # A buffer, not a plain float, so .to(device) and state_dict carry it along.
            self.register_buffer("scale", scale)
        self.dropout = nn.Dropout(self.lora_dropout) if self.lora_dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_lora_parameters(self) -> None:
        # A is drawn on the CPU whatever the layer's device, then copied there: a GPU's
        # generator draws other numbers for the same seed, so drawing on the device would
        # make a CUDA run a different draw from the CPU run (and its baseline) altogether.
        with torch.no_grad():
            if self.init == "gaussian":
                draw = torch.empty(self.in_features, self.r, dtype=self.A.dtype).normal_(0.0, 1.0)
            else:
                # Drawn in loralib's (r, d_in) layout: fan_in is d_in, and the same seed
                # gives the same numbers as loralib's and PEFT's lora_A.weight (= Aᵀ).
                weight = torch.empty(self.r, self.in_features, dtype=self.A.dtype)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                draw = weight.T
            self.A.copy_(draw)
            self.B.zero_()

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling the (batch, r) product is cheaper than scaling the (batch, d_out) output.
        return self.dropout(x) @ self.A * self.scale

    def lora_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update alone, x · A · B · scale, without ever forming the (d_in, d_out) ΔΘ."""
        return self._hidden(x) @ self.B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        # addmm adds (x·A·s)·B onto the base's output inside the matmul: no (rows, d_out)
        # temporary for the update and no separate pass to add it.
        h = self._hidden(x)
        return torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, self.r), self.B).view(out.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔΘ = A · B · scale, shape (d_in, d_out): the blog's orientation."""
        return self.A @ self.B * self.scale

    @torch.no_grad()
    def delta_finite(self) -> bool:
        """Whether ΔΘ holds only finite numbers, i.e. whether it can be merged."""
        return bool(torch.isfinite(self.delta_weight()).all())

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔΘᵀ into the base weight; from then on the forward pass is the base alone."""
        if self.merged:
            raise RuntimeError("this LoRALinear is already merged; call unmerge() first")
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError(
                "delta_weight() holds NaN or Inf values (did training diverge?); "
                "the base weight was left untouched"
            )
        self.base.weight.add_(delta.T.to(self.base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔΘᵀ again, restoring the base weight up to float rounding."""
        if not self.merged:
            raise RuntimeError("this LoRALinear is not merged; there is nothing to unmerge")
        self.base.weight.sub_(self.delta_weight().T.to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"r={self.r}, lora_alpha={self.lora_alpha:g}, scaling={self.scaling!r}, "
            f"init={self.init!r}, merged={self.merged}"
        )
