"""The training loop of the blog's experiment, and what it records.

Each epoch takes n // batch_size steps on minibatches drawn *with replacement* (as the
blog does) or from a shuffled permutation, optimises only the parameters that require
grad, and every ``eval_every`` epochs measures the loss on the full data, the number the
blog prints. The loss is the blog's MSE, or, for a model that maps token ids to logits
(the transformer of notebook 05), ``loss="cross_entropy"``. The run is recorded in a
``History``.

``train`` is the textbook autograd loop. Where an exact fast path applies (``fast.steps``:
the frozen base's output cached, gradients written by hand), it takes that instead, with
the same results up to float rounding; ``cache_frozen=False`` always runs the plain loop.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .fast.optim import fusable
from .fast.steps import EVAL_CHUNK, fast_path
from .validation import check_choice, check_float, check_int

SAMPLINGS = ("with_replacement", "shuffle")
OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("mse", "cross_entropy")
IGNORE_INDEX = -100  # cross-entropy targets with this value are skipped (torch's default)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    seed = check_int("seed", seed, 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else must exist here."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not allowed: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(dev.type, False):
        here = ["cpu"] + [t for t in ("cuda", "mps") if available[t]]
        raise ValueError(
            f"device={device!r} is not allowed: it is not available on this machine "
            f"(available: 'auto', {', '.join(repr(h) for h in here)})"
        )
    return dev


@dataclass
class History:
    """What one training run recorded.

    ``frame`` has one row per epoch run: the mean minibatch loss (``train_loss``), the
    full-data loss (MSE or cross-entropy) on the epochs it was measured (``eval_loss``, NaN elsewhere), and the
    wall time since the start (``seconds``). A run whose loss became NaN or Inf stops
    there and says so in ``diverged_at``; what it computed until then is kept.
    """

    frame: pd.DataFrame
    diverged_at: int | None = None
    settings: dict = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def eval_losses(self) -> pd.Series:
        return self.frame["eval_loss"].dropna()

    @property
    def final_loss(self) -> float:
        """The last full-data loss measured (NaN if the run diverged before any)."""
        losses = self.eval_losses
        return float(losses.iloc[-1]) if len(losses) else float("nan")

    @property
    def seconds(self) -> float:
        return float(self.frame["seconds"].iloc[-1]) if len(self.frame) else 0.0


class Recorder:
    """Collects per-epoch rows and turns them into a History."""

    def __init__(self, settings: dict):
        self.rows: list[dict] = []
        self.settings = settings
        self.start = time.perf_counter()
        self.diverged_at: int | None = None

    def add(self, epoch: int, train_loss: float, eval_loss: float | None) -> None:
        finite = np.isfinite(train_loss) and (eval_loss is None or np.isfinite(eval_loss))
        if self.diverged_at is None and not finite:
            self.diverged_at = epoch
        self.rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "eval_loss": np.nan if eval_loss is None else eval_loss,
                "seconds": time.perf_counter() - self.start,
            }
        )

    def history(self) -> History:
        frame = pd.DataFrame(self.rows, columns=["epoch", "train_loss", "eval_loss", "seconds"])
        return History(frame.set_index("epoch"), self.diverged_at, self.settings)


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """One of ``OPTIMIZERS`` over ``params``, as every training loop here builds it."""
    check_choice("optimizer", name, OPTIMIZERS)
    lr = check_float("lr", lr, low=0.0, low_inclusive=False)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    # The fused kernel updates every tensor in one pass; on a 2-core CPU it beat foreach
    # for the base weight and for a rank-1 adapter alike (benchmarks/README.md).
    fused = fusable(params)
    return cls(params, lr=lr, fused=fused) if fused else cls(params, lr=lr, foreach=True)


def check_data(X: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("X", X), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}={shape} is not allowed: expected a 2-D torch.Tensor")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"y.shape={tuple(y.shape)} is not allowed: expected as many rows as X ({X.shape[0]})"
        )


def _check_data_fits(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> None:
    """X a batch the model takes, and y targets its output fits (``check_targets``); for
    MSE, X and y also in the model's dtype."""
    param = next(model.parameters())
    if loss == "mse":
        for name, t in (("X", X), ("y", y)):
            if t.dtype != param.dtype:
                raise ValueError(
                    f"{name}.dtype={t.dtype} is not allowed: expected the model's dtype {param.dtype}"
                )
    was_training = model.training
    model.eval()  # no dropout, no batch-norm statistics updated by this probe
    try:
        with torch.no_grad():
            out = model(X[:1].to(param.device))
    except (RuntimeError, IndexError) as err:
        raise ValueError(
            f"X.shape={tuple(X.shape)} is not allowed: the model cannot take rows of width "
            f"{X.shape[1]} and dtype {X.dtype} ({str(err).splitlines()[0]})"
        ) from None
    finally:
        model.train(was_training)
    check_targets(out, y, loss)


def check_schedule(n: int, epochs, batch_size, lr, eval_every, optimizer, sampling) -> dict:
    """Validate the loop settings shared by ``train`` and ``train_many``."""
    return {
        "epochs": check_int("epochs", epochs, 1),
        "batch_size": check_int("batch_size", batch_size, 1, n),
        "lr": check_float("lr", lr, low=0.0, low_inclusive=False),
        "eval_every": check_int("eval_every", eval_every, 1),
        "optimizer": check_choice("optimizer", optimizer, OPTIMIZERS),
        "sampling": check_choice("sampling", sampling, SAMPLINGS),
    }


def batch_indices(n: int, steps: int, batch_size: int, sampling: str, gen: torch.Generator):
    """The row indices of one epoch's minibatches, shape (steps, batch_size)."""
    if sampling == "with_replacement":
        return torch.randint(n, (steps, batch_size), generator=gen)
    return torch.randperm(n, generator=gen)[: steps * batch_size].view(steps, batch_size)


def check_targets(out: torch.Tensor, y: torch.Tensor, loss: str) -> None:
    """The model's output on one row must fit the targets: same shape (MSE), or logits with
    one more axis than the integer class targets (cross-entropy)."""
    if loss == "mse" and out.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"y.shape={tuple(y.shape)} is not allowed: the model maps X to {tuple(out.shape[1:])} per row"
        )
    if loss == "cross_entropy" and (out.shape[1:-1] != y.shape[1:] or y.is_floating_point()):
        raise ValueError(
            f"y.shape={tuple(y.shape)} (dtype {y.dtype}) is not allowed with loss='cross_entropy': "
            f"expected integer class ids of shape (n, {', '.join(map(str, out.shape[1:-1]))}) "
            f"for logits of shape {tuple(out.shape[1:])} per row"
        )


def loss_fn(loss: str):
    """The minibatch loss: MSE, or the cross-entropy over every non-ignored target."""
    if loss == "mse":
        return F.mse_loss
    # Logits (..., classes) flattened against targets (...): one class axis, as torch wants.
    return lambda logits, t: F.cross_entropy(logits.flatten(0, -2), t.flatten(), ignore_index=IGNORE_INDEX)


def full_loss(predict, X: torch.Tensor, target: torch.Tensor, loss: str = "mse") -> float:
    """The loss over the whole dataset, in chunks so large data fits in memory."""
    if loss == "mse":
        return full_mse(predict, X, target)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, X.shape[0], EVAL_CHUNK):
            logits, t = predict(X[start : start + EVAL_CHUNK]), target[start : start + EVAL_CHUNK]
            flat = t.flatten()
            total += float(F.cross_entropy(logits.flatten(0, -2).double(), flat, reduction="sum"))
            count += int((flat != IGNORE_INDEX).sum())
    return total / count if count else float("nan")


def full_mse(predict, X: torch.Tensor, target: torch.Tensor) -> float:
    """MSE over the whole dataset, in chunks so large data fits in memory."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, X.shape[0], EVAL_CHUNK):
            diff = predict(X[start : start + EVAL_CHUNK]) - target[start : start + EVAL_CHUNK]
            # Accumulated in float64 inside the kernel: exact sums, no float64 copy of diff.
            total += float(torch.linalg.vector_norm(diff, dtype=torch.float64)) ** 2
    return total / target.numel()


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> float:
    """The full-data loss of ``model`` on (X, y): the MSE the blog prints, or the cross-entropy."""
    check_data(X, y)
    loss = check_choice("loss", loss, LOSSES)
    param = next(model.parameters(), None)
    dev = param.device if param is not None else X.device
    was_training = model.training
    model.eval()
    try:
        return full_loss(model, X.to(dev), y.to(dev), loss)
    finally:
        model.train(was_training)


def train(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    sampling: str = "with_replacement",
    eval_every: int = 10,
    seed: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    cache_frozen: bool = True,
    loss: str = "mse",
) -> History:
    """Train the model's trainable parameters on (X, y) with an MSE or cross-entropy loss.

    ``loss="cross_entropy"`` takes integer class ids ``y`` (``IGNORE_INDEX`` skipped) and a
    model returning logits with one more axis, e.g. token ids (n, t) -> (n, t, vocab).

    ``seed`` fixes the minibatch sequence (and dropout); the same seed gives the same
    History, bit for bit, on the same machine and thread count. The model is moved to
    ``device`` and left there.
    """
    # Every check comes before the model is moved or the global RNG seeded, so a call
    # that raises leaves the caller's model and generators as they were.
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} is not allowed: expected a torch.nn.Module")
    check_data(X, y)
    settings = check_schedule(X.shape[0], epochs, batch_size, lr, eval_every, optimizer, sampling)
    if seed is not None:
        check_int("seed", seed, 0, 2**32 - 1)
    dev = resolve_device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad is False everywhere)")
    merged = [name or "<model>" for name, m in model.named_modules() if getattr(m, "merged", False)]
    if merged:
        raise ValueError(
            f"model has merged LoRA layers {merged}: their A and B no longer take part in the "
            "forward pass; call unmerge_lora(model) before training"
        )
    loss = check_choice("loss", loss, LOSSES)
    _check_data_fits(model, X, y, loss)

    if seed is not None:
        seed_everything(seed)
    else:
        seed = int(torch.randint(2**31, ()))  # drawn from the global RNG, so seed_everything governs it
    model.to(dev)
    X, y = X.to(dev), y.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]  # .to() may have replaced them
    # The same loss and updates, faster, where one applies (see fast.steps; MSE only); else None.
    fast = (
        fast_path(model, X, y, settings["optimizer"], settings["lr"])
        if cache_frozen and loss == "mse"
        else None
    )
    target, predict = (fast.target, fast.predict) if fast else (y, model)
    hand_step = fast.step if fast else None
    # A hand-written step updates the parameters itself (fast.optim.lean_step).
    opt = None if hand_step else make_optimizer(settings["optimizer"], params, settings["lr"])

    gen = torch.Generator().manual_seed(seed)
    n, steps = X.shape[0], X.shape[0] // settings["batch_size"]
    cached = bool(fast and fast.frozen_cached)
    rec = Recorder({**settings, "seed": seed, "device": str(dev), "cache_frozen": cached, "loss": loss})
    criterion = loss_fn(loss)
    model.train()
    for epoch in tqdm(range(1, settings["epochs"] + 1), desc="epochs", disable=not progress, leave=False):
        idx = batch_indices(n, steps, settings["batch_size"], settings["sampling"], gen).to(dev)
        epoch_loss = torch.zeros((), device=dev)
        for rows in idx:
            # index_select: the same rows as X[rows], gathered about 3x faster on CPU.
            x, t = X.index_select(0, rows), target.index_select(0, rows)
            if hand_step:
                step_loss = hand_step(x, t)
            else:
                step_loss = criterion(predict(x), t)
                opt.zero_grad(set_to_none=True)
                step_loss.backward()
                opt.step()
            epoch_loss += step_loss.detach()
        train_loss = float(epoch_loss) / steps  # one device sync per epoch, not per step
        measure = epoch % settings["eval_every"] == 0 or epoch == settings["epochs"]
        eval_loss = None
        if measure and np.isfinite(train_loss):
            model.eval()
            eval_loss = full_loss(predict, X, target, loss)
            model.train()
        rec.add(epoch, train_loss, eval_loss)
        if rec.diverged_at is not None:
            break
    return rec.history()
