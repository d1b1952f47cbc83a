"""lean_step updates exactly as Optimizer.step does, and only takes over where it can."""

import pytest
import torch

from lora_core import OPTIMIZERS, make_optimizer
from lora_core.fast import lean_step


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(7, 3, generator=gen)),
        torch.nn.Parameter(torch.randn(3, generator=gen)),
    ]


def _run(make, use_lean, steps=6):
    params = _params()
    opt = make(params)
    update = lean_step(opt) if use_lean else opt.step
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)  # a new tensor each step, as the fast paths do
        update()
    return params, opt


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: make_optimizer("adam", ps, 1e-2),
        lambda ps: make_optimizer("adamw", ps, 1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.3, betas=(0.8, 0.99), fused=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, maximize=True, fused=True),
    ],
    ids=["adam", "adamw", "adamw-decay-betas", "adam-l2-maximize"],
)
def test_lean_step_equals_optimizer_step_bit_for_bit(make):
    (lean, lean_opt), (plain, plain_opt) = _run(make, True), _run(make, False)
    for p, q in zip(lean, plain):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(lean_opt.state[p][key], plain_opt.state[q][key])
    assert lean_opt.state[lean[0]]["step"].item() == 6  # the state lives on in the optimizer


def test_lean_step_moves_the_parameters():
    params, _ = _run(lambda ps: make_optimizer("adam", ps, 1e-2), True)
    assert not torch.equal(params[0], _params()[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: make_optimizer("sgd", ps, 1e-2),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, fused=True),
        lambda ps: torch.optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.1}], lr=1e-2, fused=True),
    ],
    ids=["sgd", "foreach-adam", "amsgrad", "two-groups"],
)
def test_lean_step_leaves_other_optimizers_to_their_own_step(make):
    opt = make(_params())
    assert lean_step(opt) == opt.step


def test_a_parameter_without_gradient_falls_back_to_optimizer_step():
    params = _params()
    opt = make_optimizer("adam", params, 1e-2)
    update = lean_step(opt)
    params[0].grad = torch.ones_like(params[0])
    update()  # params[1] has no gradient: Optimizer.step skips it, and so must this
    assert params[1] not in opt.state and opt.state[params[0]]["step"].item() == 1
    for p in params:
        p.grad = torch.ones_like(p)
    update()
    update()
    assert opt.state[params[0]]["step"].item() == 3 and opt.state[params[1]]["step"].item() == 2


def test_every_optimizer_name_builds():
    for name in OPTIMIZERS:
        opt = make_optimizer(name, _params(), 1e-3)
        assert isinstance(opt, torch.optim.Optimizer)
