"""How much precision ``train_many``'s step needs, and whether its float32 Hᵀt has it.

    python -m benchmarks.precision            # seed scale
    python -m benchmarks.precision --quick    # small sizes, seconds

The step forms each config's gradient as G = s·Q·B − P with P = Hᵀt, and its loss as
‖t‖² + s²·⟨Q·B, B⟩ − 2s·⟨P, B⟩. Both subtract nearly equal terms once a config fits, so
their rounding error grows as the loss falls, and a plain float32 Hᵀt loses the
gradient's precision once configs fit (an earlier version of this script, which judged
each way against its own float32 x·A, measured that; it is not repeated here). From its
second call on, the step forms P as Hᵀt' + s_ρ·Hᵀh_ρ·B_ρ, where t' = t − s_ρ·h_ρ·B_ρ is
the residual of a config ρ that fits well, and only Hᵀh_ρ and its product with B_ρ in
float64. Only standard scaling is swept; the tests check learnable scales. This measures, at
several points of the 25-config sweep's training, the relative error of every config's
A and B gradients and minibatch loss against a float64 reference, four ways:

- the step with float64 Hᵀt (its first call, ``reference = None``),
- the step with the best config as its reference,
- the step with the reference it picks (every later call): the config of lowest rank
  among those that fit within ``REFERENCE_SLACK`` of the best, whose products cost less,
- the direct float32 form ``train()``'s fast path and autograd use (the residual
  s·h·B − t formed, then hᵀ·residual).

The direct float32 form is the bar: the step must be about as precise. Each row gives
the worst config of the sweep for each way.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import lora_core as lc
from lora_core.fast import StackedAdapters
from lora_core.fast.multi import _pick_reference

RANKS = (1, 2, 4, 8, 16)
ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def reference(layer: lc.LoRALinear, x: torch.Tensor, t: torch.Tensor) -> dict:
    """One config's loss and gradients, exactly: everything from its float32 A and B in float64.

    Each way's own float32 h = x·A is rounded differently (the stack forms every config's
    h in one product), and once a config fits, that rounding alone moves its gradient by
    far more than 1e-7: measured against its own h, each way would hide it."""
    s, A, B = float(layer.scale), layer.A.detach().double(), layer.B.detach()
    c = 2.0 / t.numel()
    h = x.double() @ A
    diff = s * h @ B.double() - t.double()
    return {
        "loss": diff.square().mean(),
        "dB": c * s * (h.T @ diff),
        "dA": c * s * x.double().T @ (diff @ B.double().T),
    }


def direct(layer: lc.LoRALinear, x: torch.Tensor, t: torch.Tensor) -> dict:
    """The same in float32, as train() forms them."""
    s, A, B = float(layer.scale), layer.A.detach(), layer.B.detach()
    c = 2.0 / t.numel()
    h = x @ A
    diff = s * h @ B - t
    return {"loss": diff.square().mean(), "dB": c * s * (h.T @ diff), "dA": c * s * x.T @ (diff @ B.T)}


def stacked(layers: list[lc.LoRALinear], x: torch.Tensor, t: torch.Tensor, rho: int | None) -> list[dict]:
    """Every config's loss and gradients from one step of the stack, with reference ``rho``."""
    stack = StackedAdapters(layers)
    stack.reference = rho
    losses = stack.set_grads(x, t)
    return [
        {"loss": losses[k], "dB": stack.B.grad[stack.cols[k]], "dA": stack.A.grad[:, stack.cols[k]]}
        for k in range(len(layers))
    ]


def errors(got: dict, ref: dict) -> dict:
    return {
        "dB": _rel(got["dB"], ref["dB"]),
        "dA": _rel(got["dA"], ref["dA"]),
        "loss": abs(float(got["loss"]) - float(ref["loss"])) / float(ref["loss"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    n, d_in, d_out, epochs = (512, 65, 64, (1, 4)) if args.quick else (10000, 1001, 1000, (1, 10, 30, 100))
    X, y, theta = lc.make_regression(n, d_in, d_out, seed=0)
    base, _ = lc.pretrain_base(X, y, epochs=100, seed=0, progress=False)
    theta2, _ = lc.shift_theta(theta, "ones")
    X2, y2, _ = lc.make_regression(n, d_in, d_out, seed=1, theta=theta2)
    with torch.no_grad():
        target = y2 - base(X2)
    rows = torch.randint(n, (128,), generator=torch.Generator().manual_seed(1))
    x, t = X2[rows], target[rows]
    configs = lc.config_grid(r=list(RANKS), lora_alpha=list(ALPHAS))
    ways = ("float64 Hᵀt", "best config as reference", "picked reference", "direct float32")
    print("Worst relative error over the sweep's configs, against a float64 reference.\n")
    print(
        "| epochs trained | minibatch losses | picked reference | "
        + " | ".join(f"{q}: {w}" for q in ("dB", "dA", "loss") for w in ways)
        + " |"
    )
    print("|---|---|---|" + "---|" * 3 * len(ways))
    for e in epochs:
        runs = lc.train_many(base, X2, y2, configs, epochs=e, eval_every=e, seed=0, progress=False)
        layers = [run.layer for run in runs]
        refs = [reference(layer, x, t) for layer in layers]
        losses = np.array([float(r["loss"]) for r in refs])
        picked = _pick_reference(losses, np.array([layer.r for layer in layers]))
        found = {
            ways[0]: stacked(layers, x, t, None),
            ways[1]: stacked(layers, x, t, int(losses.argmin())),
            ways[2]: stacked(layers, x, t, picked),
            ways[3]: [direct(layer, x, t) for layer in layers],
        }
        worst = {
            w: {q: max(errors(g, r)[q] for g, r in zip(found[w], refs)) for q in ("dB", "dA", "loss")}
            for w in ways
        }
        cells = " | ".join(f"{worst[w][q]:.1e}" for q in ("dB", "dA", "loss") for w in ways)
        rank = f"r = {layers[picked].r}"
        print(f"| {e} | {losses.min():.3g} – {losses.max():.3g} | {rank} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
