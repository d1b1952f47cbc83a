"""Synthetic tasks: linear regression y = X·θ and shifts of θ for LoRA to learn.

The blog's experiment draws θ and X from N(0, 1) and sets y = X·θ; the "new task" is the
same with θ₂ = θ + 1, a shift of rank 1. ``shift_theta`` also draws shifts of any rank k,
so the rank sweep can ask which LoRA rank r recovers a rank-k shift.
"""

from __future__ import annotations

import torch

from .validation import check_choice, check_float, check_int

SHIFT_KINDS = ("ones", "lowrank")


def _generator(seed) -> torch.Generator:
    # The range seed_everything accepts (NumPy's), so one seed value works for both.
    return torch.Generator().manual_seed(check_int("seed", seed, 0, 2**32 - 1))


def make_regression(
    n: int = 10000,
    d_in: int = 1001,
    d_out: int = 1000,
    seed: int = 0,
    theta: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw (X, y, θ) with X (n, d_in), θ (d_in, d_out) ~ N(0, 1) and y = X·θ.

    Pass ``theta`` to draw fresh X for a given θ (the blog's new task uses θ₂ this way).
    Everything is drawn on the CPU from a private generator, so the same seed gives the
    same data whatever device training later runs on and whatever else used the RNG.
    """
    n, d_in, d_out, seed = check_regression(n, d_in, d_out, seed, theta, dtype)
    gen = _generator(seed)
    theta = torch.randn(d_in, d_out, generator=gen, dtype=dtype) if theta is None else theta.to(dtype)
    X = torch.randn(n, d_in, generator=gen, dtype=dtype)
    return X, X @ theta, theta


def check_regression(n, d_in, d_out, seed, theta, dtype) -> tuple[int, int, int, int]:
    """``make_regression``'s arguments checked: (n, d_in, d_out, seed) as ints, or ValueError."""
    n = check_int("n", n, 1)
    d_in = check_int("d_in", d_in, 1)
    d_out = check_int("d_out", d_out, 1)
    seed = check_int("seed", seed, 0, 2**32 - 1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ValueError(
            f"dtype={dtype!r} is not allowed: expected a real floating-point torch.dtype "
            "(torch.float32, torch.float64, ...)"
        )
    if theta is not None and not isinstance(theta, torch.Tensor):
        raise ValueError(f"theta={type(theta).__name__} is not allowed: expected a torch.Tensor or None")
    if theta is not None and tuple(theta.shape) != (d_in, d_out):
        raise ValueError(
            f"theta.shape={tuple(theta.shape)} is not allowed: expected (d_in, d_out) = ({d_in}, {d_out})"
        )
    return n, d_in, d_out, seed


def shift_theta(
    theta: torch.Tensor,
    kind: str = "ones",
    rank: int = 1,
    scale: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (θ + shift, shift) for a shift of known rank.

    ``"ones"``: scale × the all-ones matrix (rank 1; the blog's θ + 1).
    ``"lowrank"``: scale × U·V / √rank with U (d_in, rank), V (rank, d_out) ~ N(0, 1): a
    random matrix of rank ``rank`` whose entries have standard deviation ``scale``.
    """
    check_choice("kind", kind, SHIFT_KINDS)
    scale = check_float("scale", scale)
    if theta.ndim != 2:
        raise ValueError(f"theta.ndim={theta.ndim} is not allowed: expected a 2-D matrix")
    d_in, d_out = theta.shape
    if kind == "ones":
        if rank != 1:
            raise ValueError(f"rank={rank!r} is not allowed: kind='ones' is a rank-1 shift")
        shift = torch.full_like(theta, scale)
    else:
        rank = check_int("rank", rank, 1, min(d_in, d_out))
        gen = _generator(seed)
        U = torch.randn(d_in, rank, generator=gen, dtype=theta.dtype)
        V = torch.randn(rank, d_out, generator=gen, dtype=theta.dtype)
        shift = (U @ V) * (scale / rank**0.5)
    return theta + shift, shift


# ---------------------------------------------------------------------------------------
# How well a recovered ΔΘ matches the shift that was applied


DELTA_METRICS = (
    "delta_relative_error",
    "delta_cosine",
    "delta_mean",
    "delta_std",
    "delta_max_abs_error",
    "delta_energy_beyond_rank1",
)


def compare_delta(delta: torch.Tensor, shift: torch.Tensor) -> dict:
    """Numbers that say how close the learned ΔΘ is to the true shift (same shape)."""
    if tuple(delta.shape) != tuple(shift.shape):
        raise ValueError(
            f"delta.shape={tuple(delta.shape)} is not allowed: expected the shift's shape "
            f"{tuple(shift.shape)}"
        )
    d, s = delta.detach().double().cpu(), shift.detach().double().cpu()
    if not torch.isfinite(d).all():
        # A diverged run: every number is undefined, which is what the report should say.
        return dict.fromkeys(DELTA_METRICS, float("nan"))
    sv = torch.linalg.svdvals(d)
    return {
        "delta_relative_error": float(torch.linalg.norm(d - s) / torch.linalg.norm(s)),
        "delta_cosine": float((d * s).sum() / (torch.linalg.norm(d) * torch.linalg.norm(s))),
        "delta_mean": float(d.mean()),
        "delta_std": float(d.std()),
        "delta_max_abs_error": float((d - s).abs().max()),
        # Share of ΔΘ's energy outside its top singular direction: 0 for an exact rank 1.
        "delta_energy_beyond_rank1": float(1 - sv[0] ** 2 / (sv**2).sum()),
    }


def low_rank_error(shift: torch.Tensor, r: int) -> float:
    """The least relative error any rank-r matrix can reach against ``shift``.

    By Eckart–Young it is the truncated SVD's: √(Σ_{i>r} σᵢ²) / √(Σ σᵢ²).
    """
    sv = torch.linalg.svdvals(shift.detach().double().cpu())
    r = check_int("r", r, 1, len(sv))
    return float(torch.sqrt((sv[r:] ** 2).sum() / (sv**2).sum()))


# ---------------------------------------------------------------------------------------
# The blog's published numbers (D. Falbel, "Understanding LoRA with a minimal example",
# 2023-06-22; one unseeded draw), for overlaying on our curves.

BLOG_PRETRAIN_LOSSES = {
    10: 577.075,
    20: 312.2,
    30: 155.055,
    40: 68.49202,
    50: 25.68243,
    60: 7.620944,
    70: 1.607114,
    80: 0.2077137,
    90: 0.01392935,
    100: 0.0004785107,
}
BLOG_LORA_LOSSES = {
    10: 798.6073,
    20: 485.8804,
    30: 257.3518,
    40: 118.4895,
    50: 46.34769,
    60: 14.46207,
    70: 3.185689,
    80: 0.4264134,
    90: 0.02732975,
    100: 0.001300132,
}
BLOG_SHIFTED_BASE_LOSS = 992.673
BLOG_MERGED_LOSS = 0.00130013
