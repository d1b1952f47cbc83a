"""The fast paths compute what the plain autograd loop computes, up to float rounding.

Each fast path is checked against an independent reference: hand-written gradients
against autograd on the same tensors, the fast training loop against
``cache_frozen=False``, and ``train_many`` against training each config alone with the
plain loop.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lora_core as lc
from lora_core.fast import StackedAdapters, fast_path, linear_step, lora_step
from lora_core.fast.multi import REFERENCE_SLACK, _pick_reference
from lora_core.training import full_mse

SCHEDULE = dict(epochs=6, batch_size=32, lr=1e-2, eval_every=3, progress=False)


def _layer(r=3, scaling="standard", seed=0, d_in=17, d_out=13, **kw):
    torch.manual_seed(seed)
    layer = lc.LoRALinear(nn.Linear(d_in, d_out, bias=False), r=r, lora_alpha=4.0, scaling=scaling, **kw)
    with torch.no_grad():
        layer.B.normal_()  # B ≠ 0, so dA ≠ 0
    return layer


def _task(n=256, d_in=17, d_out=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=gen)
    y = X @ torch.randn(d_in, d_out, generator=gen) + 0.1 * torch.randn(n, d_out, generator=gen)
    return X, y


def _assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor) -> None:
    # Relative to the tensor's largest entry: the adapter's float32 gradients, summed in
    # another order, differed by 1.5e-7 of it on one CPU and 1.7e-7 on another, where an
    # entry near zero differed by up to 2.4e-5 of itself. A wrong term is off by order one.
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("scaling", ["standard", "rslora", "learnable"])
def test_hand_written_adapter_gradients_equal_autograd(scaling):
    layer = _layer(scaling=scaling)
    x, y = torch.randn(32, 17), torch.randn(32, 13)
    with torch.no_grad():
        residual = y - layer.base(x)
    loss = F.mse_loss(layer(x), y)
    loss.backward()
    expected = [loss.detach()] + [
        p.grad.clone() for p in (layer.A, layer.B, layer.scale) if p.grad is not None
    ]
    for p in layer.parameters():
        p.grad = None
    got = [lora_step(layer, lambda: None)(x, residual)]
    got += [p.grad for p in (layer.A, layer.B, layer.scale) if p.grad is not None]
    assert len(got) == len(expected) == (4 if scaling == "learnable" else 3)
    for g, e in zip(got, expected):
        _assert_close_to_scale(g, e)


@pytest.mark.parametrize("bias", [False, True])
def test_hand_written_linear_gradients_equal_autograd(bias):
    torch.manual_seed(0)
    linear = nn.Linear(17, 13, bias=bias)
    x, y = torch.randn(32, 17), torch.randn(32, 13)
    loss = F.mse_loss(linear(x), y)
    loss.backward()
    expected = [loss.detach()] + [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad(set_to_none=True)
    got = [linear_step(linear, lambda: None)(x, y)] + [p.grad for p in linear.parameters()]
    for g, e in zip(got, expected):
        _assert_close_to_scale(g, e)


def _record_references(stack) -> list:
    """The reference each of the stack's step computations uses, in order (a redo adds one)."""
    used, step = [], stack._set_grads
    stack._set_grads = lambda x, t, rho: used.append(rho) or step(x, t, rho)
    return used


def test_stacked_gradients_equal_autograd_per_config():
    settings = [
        (2, "standard"),
        (1, "learnable"),
        (2, "rslora"),
        (3, "standard"),
        (2, "learnable"),
        (1, "standard"),
    ]
    layers = [_layer(r=r, seed=s, scaling=sc) for s, (r, sc) in enumerate(settings)]
    for layer in layers[1:]:
        layer.base = layers[0].base
    x = torch.randn(32, 17)
    stack = StackedAdapters(layers)
    used = _record_references(stack)
    # The first step forms Hᵀt in float64; later ones subtract a reference config's
    # residual first, whichever config that is. A reference is used only while it fits
    # better than no adapter at all, so each one gets targets it nearly fits.
    for reference in [None, *range(len(layers))]:
        with torch.no_grad():
            near = layers[reference](x) if reference is not None else layers[0].base(x)
            y = near + 0.1 * torch.randn(32, 13)
            residual = y - layers[0].base(x)
        expected = []
        for layer in layers:
            loss = F.mse_loss(layer(x), y)
            loss.backward()
            expected.append((loss.item(), layer.A.grad, layer.B.grad, layer.scale.grad))
            layer.zero_grad(set_to_none=True)
        stack.reference = reference
        used.clear()
        losses = stack.set_grads(x, residual)
        assert used == [reference]  # used, not refused and redone without
        for k, (loss, dA, dB, ds) in enumerate(expected):
            cols = stack.cols[k]
            assert losses[k].item() == pytest.approx(loss, rel=1e-5)
            # Compared as whole matrices: near a fit, single entries are mostly rounding.
            assert float((stack.A.grad[:, cols] - dA).norm() / dA.norm()) < 3e-4
            assert float((stack.B.grad[cols] - dB).norm() / dB.norm()) < 3e-4
            if layers[k].scaling == "learnable":
                assert torch.allclose(stack.scale.grad[k], ds, rtol=1e-4)
            else:
                assert stack.scale.grad[k] == 0  # a fixed scale is never moved


def _frames_close(a, b, rtol=1e-4):
    np.testing.assert_allclose(a.frame["train_loss"], b.frame["train_loss"], rtol=rtol)
    np.testing.assert_allclose(a.eval_losses, b.eval_losses, rtol=rtol)


@pytest.mark.parametrize(
    "scaling, optimizer, sampling",
    [
        ("standard", "adam", "with_replacement"),
        ("rslora", "adamw", "shuffle"),
        ("learnable", "sgd", "with_replacement"),
    ],
)
def test_fast_adapter_training_equals_the_plain_loop(scaling, optimizer, sampling):
    X, y = _task()
    runs = []
    for cache_frozen in (True, False):
        layer = _layer(r=2, scaling=scaling)
        history = lc.train(
            layer, X, y, seed=3, optimizer=optimizer, sampling=sampling, cache_frozen=cache_frozen, **SCHEDULE
        )
        runs.append((history, layer))
    (fast, fast_layer), (plain, plain_layer) = runs
    assert fast.settings["cache_frozen"] and not plain.settings["cache_frozen"]
    _frames_close(fast, plain)
    assert torch.allclose(fast_layer.delta_weight(), plain_layer.delta_weight(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(fast_layer.scale, plain_layer.scale, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_fast_pretraining_equals_the_plain_loop(bias):
    X, y = _task()
    runs = []
    for cache_frozen in (True, False):
        torch.manual_seed(0)
        model = nn.Linear(17, 13, bias=bias)
        runs.append((lc.train(model, X, y, seed=1, cache_frozen=cache_frozen, **SCHEDULE), model))
    (fast, fast_model), (plain, plain_model) = runs
    _frames_close(fast, plain)
    for p, q in zip(fast_model.parameters(), plain_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_hand_step_applies_only_to_the_blogs_two_models():
    def hand_step(model, d_in=17, d_out=13):
        path = fast_path(model, torch.randn(5, d_in), torch.randn(5, d_out))
        return None if path is None else path.step

    assert hand_step(nn.Linear(4, 3), 4, 3) is not None
    assert hand_step(_layer()) is not None
    assert hand_step(_layer(lora_dropout=0.1)) is None  # dropout: autograd on the cached residual
    assert fast_path(_layer(lora_dropout=0.1), torch.randn(5, 17), torch.randn(5, 13)).frozen_cached
    partly_frozen = nn.Linear(4, 3)
    partly_frozen.bias.requires_grad_(False)
    assert hand_step(partly_frozen, 4, 3) is None
    assert hand_step(nn.Sequential(nn.Linear(4, 3)), 4, 3) is None
    merged = _layer()
    merged.merge()
    assert hand_step(merged) is None


def test_a_lora_layer_with_a_trainable_base_is_not_cached():
    X, y = _task()
    layer = _layer(r=1)
    layer.base.requires_grad_(True)
    before = layer.base.weight.detach().clone()
    history = lc.train(layer, X, y, seed=0, **SCHEDULE)
    assert not history.settings["cache_frozen"]
    # The base trained too, as asked (on a GPU machine "auto" moved it there).
    assert not torch.equal(layer.base.weight.cpu(), before.cpu())


def test_train_many_equals_each_config_in_the_plain_loop():
    X, y = _task()
    torch.manual_seed(0)
    base = nn.Linear(17, 13, bias=False)
    configs = lc.config_grid(r=[1, 4], lora_alpha=[2.0], scaling=["standard", "learnable"]) + [
        {"r": 2, "lora_alpha": 8.0}
    ]
    runs = lc.train_many(base, X, y, configs, seed=7, optimizer="adamw", sampling="shuffle", **SCHEDULE)
    for run in runs:
        lc.seed_everything(7)
        alone = lc.LoRALinear(base, **run.config)
        history = lc.train(
            alone, X, y, seed=7, optimizer="adamw", sampling="shuffle", cache_frozen=False, **SCHEDULE
        )
        _frames_close(run.history, history)
        assert torch.allclose(run.layer.delta_weight(), alone.delta_weight(), rtol=1e-4, atol=1e-5)


def test_full_data_mse_is_accumulated_exactly():
    torch.manual_seed(0)
    X, target = torch.randn(9000, 5), torch.randn(9000, 7) * 1e-3 + 5.0
    W = torch.randn(5, 7)
    expected = ((X.double() @ W.double() - target.double()) ** 2).mean().item()
    assert full_mse(lambda x: x @ W, X, target) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(17,), (5, 17), (2, 5, 17)])
def test_fused_forward_equals_base_plus_update(shape):
    layer = _layer()
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    ref = layer.base(x) + (x @ layer.A * layer.scale) @ layer.B
    assert out.shape == ref.shape == (*shape[:-1], 13)
    assert torch.allclose(out, ref, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (x, layer.A, layer.B))
    expected = torch.autograd.grad(ref.square().sum(), (x, layer.A, layer.B))
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-4)


def _good_fit():
    """Configs that fit a rank-1 target to a few 1e-6 of its energy, ranks interleaved so
    that the stack's grouping by rank reorders them."""
    torch.manual_seed(0)
    X = torch.randn(3000, 31)
    target = X @ torch.ones(31, 29) + 0.01 * torch.randn(3000, 29)
    base = nn.Linear(31, 29, bias=False)
    layers = [
        lc.LoRALinear(base, r=r, lora_alpha=a, scaling=sc)
        for a in (1.0, 5.0)
        for sc in ("standard", "learnable")
        for r in (3, 1)
    ]
    for layer in layers:
        with torch.no_grad():
            layer.A.zero_()
            layer.A[:, 0] = 1 + 1e-4 * torch.randn(31)
            layer.B.copy_(1e-5 * torch.randn_like(layer.B))
            layer.B[0] += 1 / layer.scale
    return X, target, layers


def test_train_many_losses_survive_the_cancellation_of_a_good_fit():
    # The expanded full-data MSE, and the first step's minibatch MSE (float64 Hᵀt), must
    # still match the float64 loss of the same (float32) factors.
    X, target, layers = _good_fit()
    stack = StackedAdapters(layers)
    got = stack.full_losses(X, target)
    x, t = X[:128], target[:128]  # one minibatch: the step's loss expands the same way
    step = stack.set_grads(x, t).numpy()
    H = (x @ stack.A).detach()  # the same product the step forms
    for k, layer in enumerate(layers):
        h = (X @ layer.A.detach()).double()  # float32 x·A, as both computations form it
        expected = ((h * layer.scale.double() @ layer.B.double() - target.double()) ** 2).mean().item()
        assert expected < 1e-5 * target.square().mean().item()
        assert got[k] == pytest.approx(expected, rel=1e-6)
        h = H[:, stack.cols[k]].double()  # the step's own float32 x·A
        exact = ((h * layer.scale.double() @ layer.B.double() - t.double()) ** 2).mean().item()
        assert step[k] == pytest.approx(exact, rel=1e-8)


def test_the_steps_float32_product_is_as_precise_as_the_direct_form():
    # From its second call on, the step subtracts the best config's residual and forms Hᵀt
    # in float32. Against the exact loss and gradient (float64 from the float32 factors),
    # its errors must be of the order of those of train()'s direct float32 form.
    X, target, layers = _good_fit()
    x, t = X[:128], target[:128]
    stack = StackedAdapters(layers)
    first = stack.set_grads(x, t).clone()
    assert stack.reference == _pick_reference(first.numpy(), stack.ranks)
    assert first[stack.reference] <= REFERENCE_SLACK * first.min()
    losses, dB = stack.set_grads(x, t), stack.B.grad
    c, worst = 2.0 / t.numel(), {"step": [0.0, 0.0], "direct": [0.0, 0.0]}
    for k, layer in enumerate(layers):
        s, A, B = layer.scale.detach(), layer.A.detach(), layer.B.detach()
        h = x.double() @ A.double()
        diff = s.double() * h @ B.double() - t.double()
        exact_loss, exact_dB = diff.square().mean(), c * s.double() * h.T @ diff
        h32 = x @ A
        diff32 = s * h32 @ B - t
        found = {
            "step": (losses[k], dB[stack.cols[k]]),
            "direct": (diff32.square().mean(), c * s * h32.T @ diff32),
        }
        for way, (loss, grad) in found.items():
            worst[way][0] = max(worst[way][0], abs(float(loss) - float(exact_loss)) / float(exact_loss))
            worst[way][1] = max(worst[way][1], float((grad.double() - exact_dB).norm() / exact_dB.norm()))
    assert 0 < worst["direct"][0] < 1e-4 and 0 < worst["direct"][1] < 1e-3  # the cancellation is real
    assert worst["step"][0] < 10 * worst["direct"][0]
    assert worst["step"][1] < 10 * worst["direct"][1]


def test_the_reference_is_the_lowest_rank_config_that_fits_nearly_as_well_as_the_best():
    ranks = np.array([16, 1, 2, 2, 8, 1])
    nan = float("nan")
    # Best 1.0 (rank 16); within the slack of 4: ranks 2, 2 and 8; rank 1 fits too badly.
    assert _pick_reference(np.array([1.0, 9.0, 3.0, 2.5, 1.1, 4.5]), ranks) == 3  # rank 2, the better fit
    assert _pick_reference(np.array([1.0, 4.0, 9.0, 9.0, 9.0, 9.0]), ranks) == 1  # the slack is inclusive
    assert _pick_reference(np.array([1.0, 9.0, 9.0, 9.0, 9.0, 9.0]), ranks) == 0  # only the best is near
    # A diverged config is never picked and does not count as the best.
    assert _pick_reference(np.array([nan, 9.0, 30.0, nan, 8.0, np.inf]), ranks) == 1
    assert _pick_reference(np.array([0.0, 1e-9, 0.0, 1.0, 0.0, 0.0]), ranks) == 5  # exact fits
    # Exact fits whose losses rounded to just below 0.
    assert _pick_reference(np.array([-2e-12, 1.0, -1e-13, 1.0, 1.0, 1.0]), ranks) == 2
    assert _pick_reference(np.full(6, nan), ranks) is None


def _exact_step(layers, x, t):
    """Every config's loss and gradients (A, B) in float64 from its float32 factors."""
    out, c = [], 2.0 / t.numel()
    for layer in layers:
        s, A, B = (p.detach().double() for p in (layer.scale, layer.A, layer.B))
        h = x.double() @ A
        diff = s * h @ B - t.double()
        out.append((diff.square().mean(), c * s * x.double().T @ (diff @ B.T), c * s * h.T @ diff))
    return out


def test_the_reference_of_the_previous_step_keeps_the_next_one_precise():
    # In the loop the reference is the previous minibatch's best fit, before an update:
    # on the next minibatch, after the update, the step must still be as precise as the
    # direct float32 form.
    X, target, layers = _good_fit()
    stack = StackedAdapters(layers)
    stack.set_grads(X[:128], target[:128])
    reference = stack.reference
    with torch.no_grad():  # a plain gradient step, as large as Adam's first steps
        for p in (stack.A, stack.B):
            p -= 1e-3 * p.grad / p.grad.abs().max()
    stack.copy_into(layers)
    x, t = X[128:256], target[128:256]
    used = _record_references(stack)
    losses = stack.set_grads(x, t)
    assert reference is not None and used == [reference]
    for k, (loss, dA, dB) in enumerate(_exact_step(layers, x, t)):
        cols = stack.cols[k]
        assert abs(losses[k].item() / loss.item() - 1) < 1e-4
        assert float((stack.B.grad[cols].double() - dB).norm() / dB.norm()) < 1e-2
        assert float((stack.A.grad[:, cols].double() - dA).norm() / dA.norm()) < 1e-2


def test_a_reference_that_fits_worse_than_no_adapter_is_not_used():
    X, target, layers = _good_fit()
    x, t = X[:128], target[:128]
    stack = StackedAdapters(layers)
    expected = stack.set_grads(x, t).clone()  # float64 Hᵀt
    expected_dB = stack.B.grad.clone()
    with torch.no_grad():  # config 2 overshoots: finite, but far worse than predicting 0
        stack.B[stack.cols[2]] *= 300
    expected_far = StackedAdapters(layers)  # the same factors, on the float64 path
    expected_far.B.data.copy_(stack.B)
    far = expected_far.set_grads(x, t).clone()
    assert far[2].item() > 1e3 * t.square().mean().item()
    stack.reference = 2
    used = _record_references(stack)
    got = stack.set_grads(x, t)
    assert used == [2, None]  # tried, then redone without the reference
    assert torch.equal(got, far)
    others = [k for k in range(len(layers)) if k != 2]
    assert torch.equal(got[others], expected[others])
    assert torch.equal(stack.B.grad[stack.cols[0]], expected_dB[stack.cols[0]])


def test_a_diverged_h_stays_out_of_the_other_configs_gradients():
    # A non-finite A makes h non-finite; through dH's block-diagonal product its NaN would
    # reach every config's dA unless it is zeroed first.
    X, target, layers = _good_fit()
    with torch.no_grad():
        layers[1].A.fill_(float("nan"))
    x, t = X[:128], target[:128]
    stack = StackedAdapters(layers)
    losses = stack.set_grads(x, t)
    others = [k for k in range(len(layers)) if k != 1]
    assert torch.isnan(losses[1]) and torch.isfinite(losses[others]).all()
    exact = _exact_step(layers, x, t)
    for k in others:
        got, dA = stack.A.grad[:, stack.cols[k]].double(), exact[k][1]
        assert float((got - dA).norm() / dA.norm()) < 1e-2


def test_without_reading_back_the_step_uses_no_reference():
    # As on a GPU: no reference is chosen, nothing is read back, and the gradients are
    # those of the float64 Hᵀt path.
    X, target, layers = _good_fit()
    x, t = X[:128], target[:128]
    on_cpu = StackedAdapters(layers)
    expected = on_cpu.set_grads(x, t).clone()
    expected_grads = on_cpu.A.grad.clone(), on_cpu.B.grad.clone()
    stack = StackedAdapters(layers)
    stack.reads_back = False
    stack.reference = int(expected.argmin())  # as if one had been chosen: not used either
    for _ in range(2):
        got = stack.set_grads(x, t)
        assert stack.reference == int(expected.argmin())  # nor chosen anew
        assert torch.equal(got, expected)
        assert torch.equal(stack.A.grad, expected_grads[0]) and torch.equal(stack.B.grad, expected_grads[1])


def test_a_reference_that_diverges_does_not_spoil_the_other_configs():
    X, target, layers = _good_fit()
    with torch.no_grad():
        layers[1].B.fill_(float("nan"))
    x, t = X[:128], target[:128]
    stack = StackedAdapters(layers)
    expected = stack.set_grads(x, t).clone()  # float64 Hᵀt
    assert stack.reference is not None and stack.reference != 1  # a NaN loss is never the best
    stack.reference = 1  # as if config 1 had diverged on this very step
    got = stack.set_grads(x, t)
    others = [k for k in range(len(layers)) if k != 1]
    assert torch.isnan(got[1]) and torch.isnan(expected[1])
    assert torch.equal(got[others], expected[others])  # the step was redone without it
    assert torch.isfinite(stack.B.grad[stack.cols[0]]).all()
