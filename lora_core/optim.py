"""The optimizers of the training loops, and a lean step for their fast paths."""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim.adam import adam

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    # The fused kernel updates every tensor in one pass. On a 2-core CPU it beats foreach
    # for the 1M-element base weight (0.66 vs 2.4 ms per Adam update) and for a rank-1
    # adapter's tiny factors alike (0.11 vs 0.20 ms). It exists for CPU and CUDA only.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return cls(params, lr=lr, fused=fused) if fused else cls(params, lr=lr, foreach=True)


def lean_step(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """A callable that does what ``opt.step()`` does, with less work per call where it can.

    ``Optimizer.step`` gathers every parameter's state, re-reads its settings and runs
    its hooks on each call: 70 µs on a 2-core CPU, where the fused Adam update of a rank-1
    adapter takes 6 µs. For a fused Adam or AdamW with one parameter group, as
    ``make_optimizer`` builds, the callable takes the first step with ``opt.step()``,
    which creates the state, and then calls ``torch.optim.adam.adam``, PyTorch's
    functional form of the same update, on that same state: 32 µs a call. The state stays
    in ``opt``, updated in place as ``opt.step()`` would. Any other optimizer gets
    ``opt.step`` itself.

    The settings are read once, here, and hooks registered on ``opt`` run on its first
    step only: this is for an optimizer the training loop owns, which no scheduler or
    hook changes behind its back.
    """
    if not (isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1):
        return opt.step
    group = opt.param_groups[0]
    if not group["fused"] or group["amsgrad"] or group["differentiable"] or group["capturable"]:
        return opt.step
    params = group["params"]
    beta1, beta2 = group["betas"]
    settings = dict(
        fused=True, decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=False,
        beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=group["maximize"],
    )
    state: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step() -> None:
        grads = [p.grad for p in params]
        if not state or any(g is None for g in grads):
            opt.step()  # the first step creates the moments and step counts
            if all(p in opt.state for p in params):
                state[:] = [[opt.state[p][k] for p in params] for k in ("exp_avg", "exp_avg_sq", "step")]
            return
        exp_avgs, exp_avg_sqs, steps = state
        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, **settings)

    return step
