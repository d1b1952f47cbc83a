"""How much precision ``train_many``'s step needs: float64 Hᵀt on every step, or not?

    python -m benchmarks.precision            # seed scale, base from the disk cache
    python -m benchmarks.precision --quick    # small sizes, seconds

The step forms each config's gradient as G = s·Q·B − P with P = Hᵀt, and its loss as
‖t‖² + s²·⟨Q·B, B⟩ − 2s·⟨P, B⟩. Both subtract nearly equal terms once a config fits, so
their rounding error grows as the loss falls. This measures, at several points of a real
sweep's training, the relative error of B's gradient and of the minibatch loss against a
float64 reference, for three ways of computing them:

- the step as it is (P, Q and G in float64),
- the same formulas with P = Hᵀt computed in float32 (a float32 GEMM is about 2.5×
  cheaper here),
- the direct float32 form ``train()``'s fast path and autograd use (the residual
  s·h·B − t formed, then hᵀ·residual).

The direct float32 form is the bar: the step must be no worse than it.
"""

from __future__ import annotations

import argparse

import torch

import lora_core as lc
from lora_core.fast import StackedAdapters

CONFIGS = [{"r": 1, "lora_alpha": 1.0}, {"r": 16, "lora_alpha": 16.0}]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def measure(layer: lc.LoRALinear, x: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """Relative errors of dB and of the loss for one config on one minibatch."""
    s, A, B = layer.scale.detach(), layer.A.detach(), layer.B.detach()
    c = 2.0 / t.numel()
    # The reference: the same float32 h = x·A, everything after it in float64.
    h = (x @ A).double()
    diff = float(s) * h @ B.double() - t.double()
    ref_dB = c * float(s) * (h.T @ diff)
    ref_loss = diff.square().mean()
    # The step as it is.
    stack = StackedAdapters([layer])
    loss64 = stack.set_grads(x, t)[0]
    dB64 = stack.B.grad.clone()
    # P in float32, the rest as in the step.
    H = x @ A
    P32 = (H.T @ t).double()
    Hd, Bd, sd = H.double(), B.double(), float(s)
    G = sd * (Hd.T @ Hd) @ Bd - P32
    dB_p32 = (c * sd * G).float()
    loss_p32 = (
        t.double().square().sum() + sd * sd * ((Hd.T @ Hd) @ Bd * Bd).sum() - 2 * sd * (P32 * Bd).sum()
    ) / t.numel()
    # The direct float32 form.
    resid = float(s) * H @ B - t
    dB_direct = c * float(s) * (H.T @ resid)
    loss_direct = resid.square().mean()
    return {
        "loss": float(ref_loss),
        "dB, step (float64 P)": _rel(dB64, ref_dB),
        "dB, float32 P": _rel(dB_p32, ref_dB),
        "dB, direct float32": _rel(dB_direct, ref_dB),
        "loss, step (float64 P)": abs(float(loss64) - float(ref_loss)) / float(ref_loss),
        "loss, float32 P": abs(float(loss_p32) - float(ref_loss)) / float(ref_loss),
        "loss, direct float32": abs(float(loss_direct) - float(ref_loss)) / float(ref_loss),
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
    print("| epochs trained | config | minibatch loss | dB: step (float64 P) | dB: float32 P | "
          "dB: direct float32 | loss: step | loss: float32 P | loss: direct float32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for e in epochs:
        runs = lc.train_many(base, X2, y2, CONFIGS, epochs=e, eval_every=e, seed=0, progress=False)
        for run in runs:
            m = measure(run.layer, x, t)
            cfg = f"r = {run.config['r']}, α = {run.config['lora_alpha']:g}"
            values = " | ".join(f"{v:.1e}" for k, v in m.items() if k != "loss")
            print(f"| {e} | {cfg} | {m['loss']:.3g} | {values} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
