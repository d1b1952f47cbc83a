"""lean_step updates exactly as make_optimizer(...).step() does, without an optimizer object."""

import subprocess
import sys

import pytest
import torch

from lora_core import OPTIMIZERS, make_optimizer
from lora_core.fast import lean_step


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(7, 3, generator=gen)),
        torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64)),
    ]


def _run(name, use_lean, steps=6, lr=1e-2):
    params = _params()
    opt = None if use_lean else make_optimizer(name, params, lr)
    update = lean_step(name, params, lr) if use_lean else opt.step
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(
                p.shape, generator=gen, dtype=p.dtype
            )  # a new tensor each step, as the fast paths do
        update()
    return params, opt if opt is not None else update


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lean_step_equals_optimizer_step_bit_for_bit(name):
    (lean, lean_update), (plain, plain_opt) = _run(name, True), _run(name, False)
    for p, q, start in zip(lean, plain, _params()):
        assert torch.equal(p, q) and not torch.equal(p, start)  # equal, and they did move
    if name != "sgd":
        for p, q in zip(lean, plain):
            mine = dict(zip(("exp_avg", "exp_avg_sq", "step"), lean_update.state[p]))
            for key, value in mine.items():
                assert (
                    torch.equal(value, plain_opt.state[q][key])
                    and value.dtype == plain_opt.state[q][key].dtype
                )


def test_other_optimizers_and_parameters_get_optimizer_step():
    assert lean_step("sgd", _params(), 1e-2).__self__.__class__ is torch.optim.SGD
    ints = [torch.zeros(3, dtype=torch.int64)]  # no fused kernel: the optimizer's own step
    with pytest.raises(ValueError, match="lbfgs"):
        lean_step("lbfgs", _params(), 1e-2)
    with pytest.raises(ValueError, match=r"lr=-1"):
        lean_step("adam", _params(), -1)
    assert isinstance(lean_step("adam", ints, 1e-2).__self__, torch.optim.Adam)


def test_a_parameter_without_gradient_is_left_alone_as_optimizer_step_leaves_it():
    lean_params, plain_params = _params(), _params()
    update = lean_step("adam", lean_params, 1e-2)
    opt = make_optimizer("adam", plain_params, 1e-2)
    for step in range(3):
        for params in (lean_params, plain_params):
            params[0].grad = torch.full_like(params[0], 0.5)
            params[1].grad = torch.ones_like(params[1]) if step else None  # none on the first step
        update()
        opt.step()
    assert [s[2].item() for s in update.state.values()] == [3, 2]
    for p, q in zip(lean_params, plain_params):
        assert torch.equal(p, q)


def test_training_never_imports_torch_dynamo():
    # Building any torch.optim optimizer imports it: about 2 s of every fresh kernel's run.
    code = (
        "import sys, torch, lora_core as lc\n"
        "X, y, _ = lc.make_regression(64, 5, 4, seed=0)\n"
        "base, _ = lc.pretrain_base(X, y, epochs=2, batch_size=16, cache=False, progress=False)\n"
        "lc.train(lc.LoRALinear(base, r=1), X, y, epochs=2, batch_size=16, progress=False)\n"
        "lc.train_many(base, X, y, lc.config_grid(r=[1, 2]), epochs=2, batch_size=16, progress=False)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_optimizer_name_builds():
    for name in OPTIMIZERS:
        opt = make_optimizer(name, _params(), 1e-3)
        assert isinstance(opt, torch.optim.Optimizer)
