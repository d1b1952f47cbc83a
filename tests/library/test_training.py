import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMALL_TRAIN
from torch import nn

import lora_core as lc


def _lora(base, seed=0, **kw):
    lc.seed_everything(seed)
    return lc.LoRALinear(base, **{"r": 1, "lora_alpha": 1.0, **kw})


def test_pretraining_fits_the_small_task(small_task):
    losses = small_task["pretrain"].eval_losses
    assert list(losses.index) == [10, 20, 30, 40, 50, 60]
    assert losses.iloc[0] > 1 and losses.iloc[-1] < 1e-4
    assert losses.is_monotonic_decreasing


def test_rank1_lora_recovers_the_all_ones_shift_and_merge_matches(small_task, base):
    X2, y2 = small_task["X2"], small_task["y2"]
    shifted_loss = lc.evaluate(base, X2, y2)
    assert shifted_loss == pytest.approx(65, rel=0.3)  # about d_in, as the blog explains
    model = _lora(base)
    history = lc.train(model, X2, y2, seed=0, progress=False, **SMALL_TRAIN)
    delta = model.delta_weight().detach()
    assert delta.shape == (65, 64)
    assert abs(delta.mean().item() - 1) < 1e-2
    assert lc.compare_delta(delta, small_task["shift"])["delta_relative_error"] < 1e-2
    assert history.final_loss < 1e-3 * shifted_loss
    model.merge()
    assert lc.evaluate(model.base, X2, y2) == pytest.approx(history.final_loss, rel=1e-3, abs=1e-9)


def test_history_records_every_epoch_and_logged_evals(small_task, base):
    history = lc.train(
        _lora(base),
        small_task["X2"],
        small_task["y2"],
        epochs=7,
        eval_every=3,
        batch_size=64,
        seed=0,
        progress=False,
    )
    frame = history.frame
    assert list(frame.index) == list(range(1, 8))
    assert list(history.eval_losses.index) == [3, 6, 7]  # the last epoch is always measured
    assert frame["seconds"].is_monotonic_increasing
    assert not history.diverged and history.final_loss == history.eval_losses.iloc[-1]


def test_same_seed_gives_bit_identical_history(small_task, base):
    runs = []
    for _ in range(2):
        model = _lora(base, seed=3)
        h = lc.train(
            model, small_task["X2"], small_task["y2"], epochs=5, batch_size=64, seed=3, progress=False
        )
        runs.append((h.frame[["train_loss", "eval_loss"]], model.delta_weight().detach()))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0], check_exact=True)
    assert torch.equal(runs[0][1], runs[1][1])
    other = lc.train(
        _lora(base, seed=3),
        small_task["X2"],
        small_task["y2"],
        epochs=5,
        batch_size=64,
        seed=4,
        progress=False,
    )
    assert not np.array_equal(other.frame["train_loss"], runs[0][0]["train_loss"])


@pytest.mark.parametrize("sampling", ["with_replacement", "shuffle"])
def test_frozen_output_cache_matches_the_plain_loop(small_task, base, sampling):
    results = []
    for cache_frozen in (True, False):
        model = _lora(base, r=2)
        h = lc.train(
            model,
            small_task["X2"],
            small_task["y2"],
            epochs=10,
            batch_size=64,
            seed=1,
            sampling=sampling,
            cache_frozen=cache_frozen,
            progress=False,
        )
        results.append((h, model.delta_weight().detach()))
    (fast, d_fast), (plain, d_plain) = results
    assert fast.settings["cache_frozen"] and not plain.settings["cache_frozen"]
    np.testing.assert_allclose(fast.frame["eval_loss"], plain.frame["eval_loss"], rtol=1e-4)
    assert torch.allclose(d_fast, d_plain, atol=1e-4)


def test_divergence_stops_the_run_and_keeps_the_history(small_task, base):
    model = _lora(base)
    history = lc.train(
        model,
        small_task["X2"],
        small_task["y2"] * 1e30,
        epochs=20,
        batch_size=64,
        optimizer="sgd",
        lr=1e10,
        seed=0,
        progress=False,
    )
    assert history.diverged and history.diverged_at is not None
    assert len(history.frame) == history.diverged_at < 20
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.merge()


def test_only_trainable_parameters_change(small_task, base):
    model = _lora(base)
    before = base.weight.detach().clone()
    lc.train(
        model,
        small_task["X2"],
        small_task["y2"],
        epochs=2,
        batch_size=64,
        seed=0,
        cache_frozen=False,
        progress=False,
    )
    # train's default device is "auto": on a GPU machine the model now lives there.
    assert torch.equal(base.weight.cpu(), before.cpu())
    assert model.B.abs().sum() > 0


def test_train_works_on_a_nested_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lc.add_lora(model, ["2"], r=2)
    X = torch.randn(64, 4)
    y = torch.randn(64, 2)
    history = lc.train(model, X, y, epochs=3, batch_size=16, seed=0, progress=False)
    assert len(history.frame) == 3 and not history.settings["cache_frozen"]


def test_resolve_device():
    assert lc.resolve_device("cpu") == torch.device("cpu")
    assert lc.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device='cuda' .*not available"):
            lc.resolve_device("cuda")
    with pytest.raises(ValueError, match=r"^device='gpu0'"):
        lc.resolve_device("gpu0")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10**6}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"eval_every": 0}, "eval_every"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"sampling": "stratified"}, "sampling"),
        ({"seed": -3}, "seed"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_training_arguments_name_the_parameter(small_task, base, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}=") as err:
        lc.train(_lora(base), small_task["X2"], small_task["y2"], progress=False, **kwargs)
    assert "expected" in str(err.value) or "available" in str(err.value)


def test_mismatched_data_is_refused(small_task, base):
    X2, y2 = small_task["X2"], small_task["y2"]
    with pytest.raises(ValueError, match=r"^y.shape=.*as many rows"):
        lc.train(_lora(base), X2, y2[:10], progress=False)
    with pytest.raises(ValueError, match=r"^y.shape=.*maps X to \(64,\)"):
        lc.train(_lora(base), X2, y2[:, :5], progress=False)
    with pytest.raises(ValueError, match=r"^X="):
        lc.train(_lora(base), X2[0], y2, progress=False)
    frozen = nn.Linear(65, 64).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        lc.train(frozen, X2, y2, progress=False)
