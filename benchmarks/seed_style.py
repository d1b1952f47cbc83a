"""The seed's code, written plainly: the reference every speed-up is measured against.

The blog post forms ΔΘ = A·B in every forward pass and trains with the textbook loop:
draw a minibatch with replacement, forward, MSE, backward, Adam step, and print the
full-data MSE every ten epochs. This is that code in PyTorch, kept as a user would write
it. Its only concession to the benchmark is an explicit generator for the minibatch
draws, so that it sees the same minibatches as ``lora_core.train`` with the same seed
and the two can be checked against each other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SeedLoRA(nn.Module):
    """The blog's LoRA module: ΔΘ = A·B (d_in × d_out) is materialised on every call."""

    def __init__(self, linear: nn.Linear, r: int = 1, alpha: float = 1.0):
        super().__init__()
        self.linear = linear
        for p in linear.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(linear.in_features, r))
        self.B = nn.Parameter(torch.zeros(r, linear.out_features))
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + x @ (self.A @ self.B * self.scale)


def seed_train(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    eval_every: int = 10,
    generator: torch.Generator | None = None,
) -> dict[int, float]:
    """The blog's loop; returns {epoch: full-data MSE} every ``eval_every`` epochs."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n = X.shape[0]
    losses = {}
    for epoch in range(1, epochs + 1):
        for _ in range(n // batch_size):
            idx = torch.randint(n, (batch_size,), generator=generator)
            loss = F.mse_loss(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % eval_every == 0:
            with torch.no_grad():
                losses[epoch] = F.mse_loss(model(X), y).item()
    return losses


def seed_pretrain(X, y, seed: int = 0, **schedule) -> tuple[nn.Linear, dict[int, float]]:
    """Pre-train ``nn.Linear(d_in, d_out, bias=False)`` on (X, y) as the blog does."""
    torch.manual_seed(seed)
    base = nn.Linear(X.shape[1], y.shape[1], bias=False)
    losses = seed_train(base, X, y, generator=torch.Generator().manual_seed(seed), **schedule)
    return base, losses


def seed_lora(base: nn.Linear, X2, y2, r: int = 1, alpha: float = 1.0, seed: int = 0, **schedule):
    """Train the blog's LoRA module over ``base`` on the new task; returns (module, losses)."""
    torch.manual_seed(seed)
    model = SeedLoRA(base, r, alpha)
    losses = seed_train(model, X2, y2, generator=torch.Generator().manual_seed(seed), **schedule)
    return model, losses
