"""Exact fast paths for ``train``: the frozen base's output cached, gradients by hand.

``train`` asks ``fast_path`` once per run; where it returns None, the plain autograd loop
runs. Each path gives the plain loop's results up to float rounding
(``tests/library/test_fastpaths.py`` checks this against autograd):

- Frozen-output caching: when the model is one unmerged ``LoRALinear`` over a frozen
  base (the blog's setup), base(X) never changes, so y − base(X) is computed once and
  each step fits only the adapter to that residual.
- Hand-written gradients for the two models the blog trains, a bare ``nn.Linear``
  (pre-training) and that cached ``LoRALinear``: the MSE gradient of a linear map is two
  matmuls, and writing it out skips autograd's per-step graph, which costs as much as a
  LoRA step's arithmetic. Their optimiser update is ``lean_step``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..layer import LoRALinear
from .optim import lean_step

EVAL_CHUNK = 4096  # rows per chunk of a full-data pass: bounds memory, not results

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FastPath:
    """What ``train`` runs instead of the plain loop: fit ``predict`` to ``target``.

    ``step`` is a hand-written optimisation step on a minibatch (x, t) returning its MSE,
    or None where autograd on ``predict`` does the step.
    """

    target: torch.Tensor
    predict: Callable[[torch.Tensor], torch.Tensor]
    step: Step | None
    frozen_cached: bool


def fast_path(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, optimizer: str = "adam", lr: float = 1e-3
) -> FastPath | None:
    """The fast path that applies to training ``model`` on (X, y), or None.

    A hand-written ``step`` updates the trainable parameters as ``train``'s
    ``make_optimizer(optimizer, ..., lr)`` would, through ``lean_step``.
    """

    def update() -> Callable[[], None]:
        return lean_step(optimizer, [p for p in model.parameters() if p.requires_grad], lr)

    if cacheable(model):
        target = frozen_residual(model.base, X, y)
        step = lora_step(model, update()) if _hand_written(model) else None
        return FastPath(target, model.lora_forward, step, frozen_cached=True)
    if type(model) is nn.Linear and all(p.requires_grad for p in model.parameters()):
        return FastPath(y, model, linear_step(model, update()), frozen_cached=False)
    return None


def cacheable(model: nn.Module) -> bool:
    """A single unmerged LoRALinear over a frozen base: its base output can be cached."""
    return (
        isinstance(model, LoRALinear)
        and not model.merged
        and not any(p.requires_grad for p in model.base.parameters())
    )


def _hand_written(layer: LoRALinear) -> bool:
    # Dropout would make the step random; a frozen A or B is not what the formulas assume.
    return layer.lora_dropout == 0 and layer.A.requires_grad and layer.B.requires_grad


def frozen_residual(base: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y − base(X), in chunks: what an adapter over the frozen ``base`` has to fit."""
    with torch.no_grad():
        return y - torch.cat([base(X[i : i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)])


def linear_step(linear: nn.Linear, update: Callable[[], None]) -> Step:
    """Pre-training: y ≈ x·Wᵀ + b, so dW = gᵀ·x and db = Σ_rows g, with g = 2·diff / numel.

    The residual is formed transposed, (d_out × b): both matmuls, W·xᵀ and gᵀ·x, then
    give the BLAS d_out rows to share between threads, where x·Wᵀ gives it b.
    """
    W, bias = linear.weight, linear.bias

    @torch.no_grad()
    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred_t = torch.mm(W, x.T) if bias is None else torch.addmm(bias[:, None], W, x.T)
        diff_t = pred_t.sub_(t.T)  # W·xᵀ + b − tᵀ, (d_out, b)
        loss = diff_t.pow(2).mean()
        g_t = diff_t.mul_(2 / diff_t.numel())
        if W.grad is None:
            W.grad = torch.empty_like(W)
        torch.mm(g_t, x, out=W.grad)  # (d_out, d_in), into the same buffer every step
        if bias is not None:
            bias.grad = g_t.sum(1)
        update()
        return loss

    return step


def lora_step(layer: LoRALinear, update: Callable[[], None]) -> Step:
    """The adapter on the cached residual t: prediction h·s·B with h = x·A (b, r).

    dB = s·hᵀg, dA = xᵀ·(g·Bᵀ)·s and, for a learnable scale, ds = Σ (hᵀg) ⊙ B. Every
    product is (b × r) or (r × d): no (d_in × d_out) matmul in the step at all.

    The two products with r columns, h and dA, are formed as their (r, ·) transposes:
    MKL computes a product with a short last dimension 3-4x slower than its transpose
    for r from 2 to 16 (on a 2-core CPU; the same at r = 1, bit for bit).
    """
    A, B, scale = layer.A, layer.B, layer.scale
    learnable = isinstance(scale, nn.Parameter) and scale.requires_grad

    @torch.no_grad()
    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.mm(A.T, x.T).T  # (b, r)
        diff = torch.addmm(t, h * scale, B, beta=-1)  # h·s·B − t, (b, d_out)
        loss = diff.pow(2).mean()
        g = diff.mul_(2 / diff.numel())
        hg = h.T @ g  # (r, d_out)
        if A.grad is None:
            A.grad = torch.empty_like(A)
        # (d_in, r), into the same buffer every step; contiguous, as the fused Adam needs.
        A.grad.copy_(torch.mm(torch.mm(B, g.T).mul_(scale), x).T)
        B.grad = hg * scale
        if learnable:
            scale.grad = (hg * B).sum()
        update()
        return loss

    return step
