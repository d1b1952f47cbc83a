import numpy as np
import pytest
import torch

import lora_core as lc

SCHEDULE = dict(epochs=12, batch_size=64, lr=1e-2, eval_every=4)


@pytest.fixture(scope="module")
def lowrank_task(small_task):
    theta2, shift = lc.shift_theta(small_task["theta"], "lowrank", rank=2, seed=7)
    X2, y2, _ = lc.make_regression(512, 65, 64, seed=2, theta=theta2)
    return small_task["base"], X2, y2


def test_each_config_equals_training_it_alone(lowrank_task):
    base, X2, y2 = lowrank_task
    configs = lc.config_grid(r=[1, 3], lora_alpha=[1.0, 16.0], scaling=["standard", "rslora", "learnable"])
    assert len(configs) == 12
    runs = lc.train_many(base, X2, y2, configs, seed=5, progress=False, **SCHEDULE)
    assert [run.config for run in runs] == configs
    for run in runs:
        lc.seed_everything(5)
        alone = lc.LoRALinear(base, **run.config)
        history = lc.train(alone, X2, y2, seed=5, progress=False, **SCHEDULE)
        np.testing.assert_allclose(run.history.frame["train_loss"], history.frame["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(run.history.eval_losses, history.eval_losses, rtol=1e-4)
        assert torch.allclose(run.layer.delta_weight(), alone.delta_weight(), atol=1e-4)
        assert run.layer.base is base


def test_float64_configs_equal_training_them_alone_in_float64():
    torch.manual_seed(0)
    X, y = torch.randn(256, 9, dtype=torch.float64), torch.randn(256, 7, dtype=torch.float64)
    base = torch.nn.Linear(9, 7).double()
    configs = [{"r": 1, "lora_alpha": 1.0}, {"r": 2, "lora_alpha": 4.0, "scaling": "learnable"}]
    schedule = dict(epochs=3, batch_size=32, eval_every=1, seed=0, device="cpu", progress=False)
    for run in lc.train_many(base, X, y, configs, **schedule):
        lc.seed_everything(0)
        alone = lc.train(lc.LoRALinear(base, **run.config), X, y, **schedule)
        assert run.layer.B.dtype == torch.float64
        np.testing.assert_allclose(run.history.eval_losses, alone.eval_losses, rtol=1e-12)


def test_learnable_scale_trains_and_fixed_scales_stay(lowrank_task):
    base, X2, y2 = lowrank_task
    runs = lc.train_many(
        base,
        X2,
        y2,
        [
            {"r": 2, "scaling": "learnable", "lora_alpha": 2.0},
            {"r": 2, "scaling": "rslora", "lora_alpha": 2.0},
        ],
        seed=0,
        progress=False,
        optimizer="adamw",
        **SCHEDULE,
    )
    assert runs[0].layer.scale.item() != pytest.approx(1.0)
    assert runs[1].layer.scale.item() == pytest.approx(2.0 / 2**0.5)


def test_a_diverging_config_is_recorded_and_the_others_go_on(lowrank_task):
    base, X2, y2 = lowrank_task
    runs = lc.train_many(
        base,
        X2,
        y2 * 1e30,
        [{"r": 1}, {"r": 2}],
        seed=0,
        progress=False,
        epochs=5,
        batch_size=64,
        lr=1e10,
        optimizer="sgd",
    )
    assert all(run.history.diverged for run in runs)
    runs = lc.train_many(
        base,
        X2,
        y2,
        [{"r": 1, "lora_alpha": 1e4}, {"r": 1, "lora_alpha": 1.0}],
        seed=0,
        progress=False,
        optimizer="sgd",
        epochs=5,
        batch_size=64,
        lr=1e-3,
    )
    assert runs[0].history.diverged and not runs[1].history.diverged
    assert len(runs[1].history.frame) == 5 and np.isfinite(runs[1].history.final_loss)


@pytest.mark.parametrize(
    "configs, match",
    [
        ([], r"^configs=\[\]"),
        ({"r": 1}, r"^configs="),
        ([{"r": 1, "lora_dropout": 0.1}], r"configs\[0\] has keys \['lora_dropout'\]"),
        ([{"r": 0}], r"^r=0"),
    ],
)
def test_invalid_configs_are_refused(lowrank_task, configs, match):
    base, X2, y2 = lowrank_task
    with pytest.raises(ValueError, match=match):
        lc.train_many(base, X2, y2, configs, progress=False, epochs=1)


def test_data_that_does_not_fit_the_base_is_refused(lowrank_task):
    base, X2, y2 = lowrank_task
    with pytest.raises(ValueError, match="maps 65 inputs to 64 outputs"):
        lc.train_many(base, X2[:, :10], y2, [{"r": 1}], progress=False, epochs=1)


@pytest.mark.parametrize("name", ["X", "y"])
def test_data_of_another_dtype_than_the_base_is_refused(lowrank_task, name):
    base, X2, y2 = lowrank_task
    data = {"X": X2, "y": y2}
    data[name] = data[name].double()
    expected = rf"^{name}\.dtype=torch\.float64 is not allowed: expected the base's dtype torch\.float32"
    with pytest.raises(ValueError, match=expected):
        lc.train_many(base, data["X"], data["y"], [{"r": 1}], progress=False, epochs=1)
