"""The synthetic sequence tasks and token accuracy, against targets written out by hand."""

import pytest
import torch
from torch.nn import functional as F

import lora_core as lc
from lora_core.sequences import derangement


def rule(task, x, t, perm, V):
    """The target at position t of one sequence x, written out; None where there is none."""
    back = 2 if task == "two_back" else 1
    if t < back:
        return None
    if task == "permuted":
        return int(perm[x[t - 1]])
    if task == "add":
        return int(x[t] + x[t - 1]) % V
    return int(x[t - back])


def test_each_task_computes_its_rule_at_every_position():
    V = 10
    X, _ = lc.make_sequences("previous", 50, 12, V, seed=3)
    perm = derangement(V)
    for task in lc.TASKS:
        Xt, yt = lc.make_sequences(task, 50, 12, V, seed=3)
        assert torch.equal(Xt, X)
        for i in range(50):
            for t in range(12):
                want = rule(task, X[i], t, perm, V)
                assert int(yt[i, t]) == (lc.IGNORE_INDEX if want is None else want), (task, i, t)


def test_the_permutation_moves_every_token():
    for V in (2, 5, 16, 64):
        perm = derangement(V)
        assert sorted(perm.tolist()) == list(range(V))
        assert not (perm == torch.arange(V)).any()


def test_the_same_seed_gives_the_same_data():
    a, b = lc.make_sequences("add", 20, seed=1), lc.make_sequences("add", 20, seed=1)
    c = lc.make_sequences("add", 20, seed=2)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_token_accuracy_counts_only_targets_that_exist():
    class Oracle(torch.nn.Module):
        """Predicts the previous token, right except where it is told to be wrong."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            guess = torch.roll(x, 1, dims=1)
            guess[:, 1] = (guess[:, 1] + 1) % 8  # wrong at position 1 only
            return F.one_hot(guess, 8).float()

    X, y = lc.make_sequences("previous", 40, 8, 8, seed=0)
    # 7 scored positions per row (position 0 is ignored), one of them wrong.
    assert lc.token_accuracy(Oracle(), X, y) == pytest.approx(6 / 7)


@pytest.mark.parametrize("args, message", [(("sorted", 4), "task='sorted'"), (("add", 0), "n=0")])
def test_bad_arguments_are_refused_naming_them(args, message):
    with pytest.raises(ValueError, match=message):
        lc.make_sequences(*args)
