"""A lean optimiser step: ``make_optimizer(...).step()``'s arithmetic, with no optimizer object."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch.optim.adam import adam

from ..validation import check_float


def fusable(params: Iterable[torch.Tensor]) -> bool:
    """Whether PyTorch's fused Adam kernel takes these parameters (float, on CPU or CUDA)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def lean_step(optimizer: str, params: Iterable[torch.Tensor], lr: float) -> Callable[[], None]:
    """A callable that updates ``params`` from their ``.grad`` exactly as
    ``make_optimizer(optimizer, params, lr).step()`` would.

    For Adam and AdamW on fused-capable parameters (what ``make_optimizer`` builds fused),
    the moments and step counts live here, made as ``torch.optim.Adam`` makes them, and each
    call hands them to ``torch.optim.adam.adam``, PyTorch's functional form of the same
    update. No optimizer object is built: constructing any ``torch.optim`` optimizer imports
    ``torch._dynamo`` (about 2 s, once per process: most of a short run's fixed cost in a
    fresh kernel), and ``Optimizer.step`` gathers state and settings anew on every call.
    Parameters whose ``.grad`` is None are left alone, as ``Optimizer.step`` leaves them.
    Any other optimizer is ``make_optimizer``'s own ``step``.
    """
    from ..training import make_optimizer  # training imports this module

    params = list(params)
    if optimizer not in ("adam", "adamw") or not fusable(params):
        return make_optimizer(optimizer, params, lr).step
    lr = check_float("lr", lr, low=0.0, low_inclusive=False)
    # make_optimizer passes only lr: every other setting is the class's default.
    cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    beta1, beta2 = defaults["betas"]
    settings = dict(
        fused=True,
        decoupled_weight_decay=optimizer == "adamw",
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=defaults["weight_decay"],
        eps=defaults["eps"],
        maximize=defaults["maximize"],
    )
    state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    everyone: list[list[torch.Tensor]] = []  # the moments and steps of all params, once all have them

    @torch.no_grad()
    def step() -> None:
        grads = [p.grad for p in params]
        if everyone and all(g is not None for g in grads):
            adam(params, grads, *everyone[:2], [], everyone[2], **settings)
            return
        live = [p for p, g in zip(params, grads) if g is not None]
        for p in live:
            if p not in state:  # as Adam's lazy state: a float32 step count beside p for fused
                state[p] = (
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                    torch.zeros((), dtype=torch.float32, device=p.device),
                )
        if live:
            exp_avgs, exp_avg_sqs, steps = (list(column) for column in zip(*(state[p] for p in live)))
            adam(live, [p.grad for p in live], exp_avgs, exp_avg_sqs, [], steps, **settings)
        if len(state) == len(params) and not everyone:
            everyone[:] = [list(column) for column in zip(*(state[p] for p in params))]

    step.state = state  # per parameter: (exp_avg, exp_avg_sq, step), for inspection
    return step
