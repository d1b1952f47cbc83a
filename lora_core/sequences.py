"""Synthetic sequence tasks for the small transformer: generated here, nothing downloaded.

Every task reads a random token sequence x (uniform over the vocabulary) and asks, at
each position t, for one target token y_t computed from the tokens up to t:

    previous   y_t = x_{t-1}              pre-training: look one step back, copy
    permuted   y_t = π(x_{t-1})           the same look-up, output vocabulary permuted
    two_back   y_t = x_{t-2}              the same copy, from one position further back
    add        y_t = (x_t + x_{t-1}) mod V  combine the current and the previous token

π is a fixed random permutation (seeded) with no fixed point, so the pre-trained model
scores 0 on ``permuted``. Positions with no target (t < the look-back) hold
``IGNORE_INDEX``, which the cross-entropy loss and the accuracy skip.
"""

from __future__ import annotations

import torch
from torch import nn

from .training import IGNORE_INDEX
from .validation import check_choice, check_int

TASKS = ("previous", "permuted", "two_back", "add")
LOOK_BACK = {"previous": 1, "permuted": 1, "two_back": 2, "add": 1}
PERMUTATION_SEED = 12345  # fixed, so "permuted" is one task whatever the data seed


def derangement(vocab_size: int, seed: int = PERMUTATION_SEED) -> torch.Tensor:
    """A seeded random permutation of 0..vocab_size-1 that moves every token."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(vocab_size, generator=gen)
        if vocab_size < 2 or not (perm == torch.arange(vocab_size)).any():
            return perm


def task_targets(task: str, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The targets of ``task`` for a batch of token sequences (n, t)."""
    check_choice("task", task, TASKS)
    k = LOOK_BACK[task]
    y = torch.full_like(tokens, IGNORE_INDEX)
    prev = tokens[:, :-k]
    if task == "previous" or task == "two_back":
        y[:, k:] = prev
    elif task == "permuted":
        y[:, k:] = derangement(vocab_size)[prev]
    else:
        y[:, k:] = (tokens[:, k:] + prev) % vocab_size
    return y


def make_sequences(
    task: str, n: int, seq_len: int = 16, vocab_size: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random sequences and their targets for ``task``: (X, y), both (n, seq_len) int64."""
    check_choice("task", task, TASKS)
    n = check_int("n", n, 1)
    vocab_size = check_int("vocab_size", vocab_size, 2)
    seq_len = check_int("seq_len", seq_len, LOOK_BACK[task] + 1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0, 2**32 - 1))
    X = torch.randint(vocab_size, (n, seq_len), generator=gen)
    return X, task_targets(task, X, vocab_size)


@torch.no_grad()
def token_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """Share of target tokens (``IGNORE_INDEX`` skipped) the model's argmax gets right."""
    param = next(model.parameters(), None)
    dev = param.device if param is not None else X.device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for start in range(0, X.shape[0], chunk):
            xb, yb = X[start : start + chunk].to(dev), y[start : start + chunk].to(dev)
            keep = yb != IGNORE_INDEX
            correct += int((model(xb).argmax(-1) == yb)[keep].sum())
            total += int(keep.sum())
    finally:
        model.train(was_training)
    return correct / total if total else float("nan")
