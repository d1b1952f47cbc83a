"""train and evaluate with loss="cross_entropy": the transformer's loss, against torch's own."""

import pytest
import torch
from torch.nn import functional as F

import lora_core as lc

CFG = lc.TransformerConfig(vocab_size=6, seq_len=6, d_model=16, n_heads=2, n_layers=1, d_mlp=32)


@pytest.fixture(scope="module")
def task():
    return lc.make_sequences("previous", 256, 6, 6, seed=0)


def test_evaluate_is_the_mean_cross_entropy_over_targets_that_exist(task):
    X, y = task
    model = lc.build_transformer(CFG, seed=0)
    with torch.no_grad():
        logits = model(X)
    keep = y != lc.IGNORE_INDEX
    expected = float(F.cross_entropy(logits[keep].double(), y[keep]))
    assert lc.evaluate(model, X, y, loss="cross_entropy") == pytest.approx(expected, rel=1e-6)


def test_training_with_cross_entropy_learns_the_task_and_records_it(task):
    X, y = task
    model = lc.build_transformer(CFG, seed=0)
    before = lc.evaluate(model, X, y, loss="cross_entropy")
    history = lc.train(
        model,
        X,
        y,
        epochs=6,
        batch_size=32,
        lr=1e-2,
        optimizer="adamw",
        eval_every=3,
        seed=0,
        progress=False,
        device="cpu",
        loss="cross_entropy",
    )
    assert history.settings["loss"] == "cross_entropy" and not history.diverged
    assert list(history.eval_losses.index) == [3, 6]
    assert history.final_loss == pytest.approx(lc.evaluate(model, X, y, loss="cross_entropy"), rel=1e-9)
    assert history.final_loss < before / 2


def test_the_same_seed_gives_the_same_cross_entropy_run(task):
    runs = []
    for _ in range(2):
        model = lc.build_transformer(CFG, seed=0)
        lc.seed_everything(0)  # A's draw
        lc.add_lora(model, ["q_proj", "v_proj"], r=2, lora_alpha=4, lora_dropout=0.1)
        runs.append(
            lc.train(
                model,
                *task,
                epochs=2,
                batch_size=32,
                seed=5,
                progress=False,
                device="cpu",
                loss="cross_entropy",
            ).frame.drop(columns="seconds")
        )
    assert runs[0].equals(runs[1])


def test_float_targets_or_a_missing_class_axis_are_refused(task):
    X, y = task
    model = lc.build_transformer(CFG, seed=0)
    with pytest.raises(ValueError, match="loss='cross_entropy'"):
        lc.train(model, X, y.float(), epochs=1, progress=False, device="cpu", loss="cross_entropy")
    with pytest.raises(ValueError, match="loss='hinge' is not allowed"):
        lc.train(model, X, y, epochs=1, progress=False, device="cpu", loss="hinge")
