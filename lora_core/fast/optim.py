"""A lean Adam step: ``opt.step()``'s arithmetic without its per-call bookkeeping."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.adam import adam


def lean_step(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """A callable that does what ``opt.step()`` does, with less work per call where it can.

    For a fused Adam or AdamW with one parameter group (what ``make_optimizer`` builds),
    the first call runs ``opt.step()``, which creates the state; later calls hand that
    same state to ``torch.optim.adam.adam``, PyTorch's functional form of the update,
    skipping ``Optimizer.step``'s per-call gathering of state and settings. Any other
    optimizer gets ``opt.step`` itself.

    Settings are read once and hooks run on the first step only, so this is for an
    optimizer the training loop owns, not one a scheduler changes.
    """
    if not (isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1):
        return opt.step
    group = opt.param_groups[0]
    if not group["fused"] or group["amsgrad"] or group["differentiable"] or group["capturable"]:
        return opt.step
    params = group["params"]
    beta1, beta2 = group["betas"]
    settings = dict(
        fused=True,
        decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
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
