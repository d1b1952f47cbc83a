"""Many adapters on one frozen base, trained together: the fast path for sweeps.

A sweep over r, lora_alpha and scaling trains many adapters on the same frozen layer and
the same data. Trained one by one, each repeats the same minibatch gathers and pays the
per-step overhead again. Here every config sees the same minibatch sequence in one
batched step: configs of equal rank are stacked and multiplied with one ``bmm``, each
config's gradient is written by hand from its own loss alone (the formulas of ``train``'s
fast path, without autograd's per-step graph) and Adam, being elementwise, updates each
config as if it were alone. Each config's
History therefore equals training it alone with ``train`` and the same seed, up to float
rounding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .layer import LoRALinear
from .training import (
    EVAL_CHUNK,
    History,
    _Recorder,
    batch_indices,
    check_data,
    check_schedule,
    make_optimizer,
    resolve_device,
    seed_everything,
)

CONFIG_KEYS = ("r", "lora_alpha", "scaling", "init")


@dataclass
class AdapterRun:
    """One config of ``train_many``: its settings, its trained layer and its History.

    ``layer`` shares the frozen base with every other run's layer, so keep it unmerged
    (or merge, use and unmerge) when you compare several.
    """

    config: dict
    layer: LoRALinear
    history: History


def config_grid(**axes) -> list[dict]:
    """The Cartesian product of the given axes, e.g. ``config_grid(r=[1, 2], lora_alpha=[1, 8])``."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


class _RankGroup:
    """The configs that share one rank r: their B stacked (K, r, d_out), their scales,
    and where their columns of the shared A (d_in, Σr) lie."""

    def __init__(self, r: int, members: list[int], layers: list[LoRALinear], cols: slice):
        self.r, self.members, self.cols = r, members, cols
        group = [layers[i] for i in members]
        self.B = nn.Parameter(torch.stack([lay.B.detach() for lay in group]))
        self.learnable = torch.tensor([lay.scaling == "learnable" for lay in group], device=self.B.device)
        self.fixed_scale = torch.stack([lay.scale.detach() for lay in group])
        self.scale = nn.Parameter(self.fixed_scale.clone()) if self.learnable.any() else None

    def parameters(self) -> list[nn.Parameter]:
        return [self.B] + ([self.scale] if self.scale is not None else [])

    def scales(self) -> torch.Tensor:
        """Every config's scale, shape (K, 1, 1)."""
        if self.scale is None:
            return self.fixed_scale.view(-1, 1, 1)
        # Only learnable configs take their scale from the trained parameter.
        return torch.where(self.learnable, self.scale, self.fixed_scale).view(-1, 1, 1)

    def hidden(self, H: torch.Tensor) -> torch.Tensor:
        """This group's columns of H = x·A (rows, Σr), as (K, rows, r), unscaled."""
        return H[:, self.cols].view(H.shape[0], len(self.members), self.r).transpose(0, 1)

    def residual(self, H: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Every config's update minus the target t, for the rows of H = x·A: (K, rows, d_out)."""
        return torch.baddbmm(t, self.hidden(H) * self.scales(), self.B, beta=-1)

    @torch.no_grad()
    def set_grads(self, H: torch.Tensor, t: torch.Tensor, gH: torch.Tensor) -> torch.Tensor:
        """Write dB (and ds) and this group's columns of dloss/dH into gH; return the (K,) MSEs.

        The formulas of ``training._lora_step``, batched over the group: each config's
        gradient is that of its own loss alone. The (K, b, d_out) residual is the one
        large tensor of the step, so it is written once and read three times (dB, dH,
        loss); the 2/numel factor goes onto the small products instead.
        """
        h, s = self.hidden(H), self.scales()  # (K, b, r), (K, 1, 1)
        diff = torch.baddbmm(t, h * s, self.B, beta=-1)  # h·s·B − t, (K, b, d_out)
        c = 2.0 / diff[0].numel()
        hg = torch.bmm(h.transpose(1, 2), diff).mul_(c)  # hᵀg, (K, r, d_out)
        self.hidden(gH).copy_(torch.bmm(diff, self.B.transpose(1, 2)).mul_(s * c))  # g·Bᵀ·s
        self.B.grad = hg * s
        if self.scale is not None:
            self.scale.grad = torch.where(self.learnable, (hg * self.B).sum(dim=(1, 2)), 0.0)
        return torch.linalg.vector_norm(diff, dim=(1, 2)).square_().div_(diff[0].numel())

    def copy_into(self, layers: list[LoRALinear], A: torch.Tensor) -> None:
        with torch.no_grad():
            cols = A[:, self.cols]
            for k, i in enumerate(self.members):
                layers[i].A.copy_(cols[:, k * self.r : (k + 1) * self.r])
                layers[i].B.copy_(self.B[k])
                if self.scale is not None and self.learnable[k]:
                    layers[i].scale.copy_(self.scale[k])


def _check_configs(configs, base: nn.Linear) -> list[dict]:
    if isinstance(configs, dict) or not len(configs):
        raise ValueError(f"configs={configs!r} is not allowed: expected a non-empty list of dicts")
    checked = []
    for i, cfg in enumerate(configs):
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"configs[{i}] has keys {unknown}, which are not allowed: expected keys among "
                f"{list(CONFIG_KEYS)} (train one adapter with `train` for other options)"
            )
        checked.append(dict(cfg))
    if not isinstance(base, nn.Linear):
        raise ValueError(f"base={type(base).__name__} is not allowed: expected an nn.Linear")
    return checked


def train_many(
    base: nn.Linear,
    X: torch.Tensor,
    y: torch.Tensor,
    configs: list[dict],
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    sampling: str = "with_replacement",
    eval_every: int = 10,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> list[AdapterRun]:
    """Train one LoRA adapter per config over the frozen ``base``, all in one loop.

    Each config is a dict of ``LoRALinear`` settings (r, lora_alpha, scaling, init). Its
    adapter starts from ``torch.manual_seed(seed)`` and sees the minibatch sequence of
    ``train(..., seed=seed)``: the result is what ``seed_everything(seed)``, building the
    layer, then ``train(layer, X, y, seed=seed)`` gives for that config alone. A config
    that diverges is recorded as such and the others go on. Every History's ``seconds``
    is the shared wall time of the joint loop.
    """
    configs = _check_configs(configs, base)
    check_data(X, y)
    settings = check_schedule(X.shape[0], epochs, batch_size, lr, eval_every, optimizer, sampling)
    layers = []
    for cfg in configs:
        seed_everything(seed)
        layers.append(LoRALinear(base, **cfg))
    dev = resolve_device(device)
    base.to(dev)
    layers = [layer.to(dev) for layer in layers]
    X, y = X.to(dev), y.to(dev)
    if y.shape[1] != base.out_features or X.shape[1] != base.in_features:
        raise ValueError(
            f"X.shape={tuple(X.shape)}, y.shape={tuple(y.shape)} are not allowed: the base "
            f"maps {base.in_features} inputs to {base.out_features} outputs"
        )

    with torch.no_grad():
        # As in `train`'s fast path: the frozen base's output is computed once.
        target = y - torch.cat([base(X[i : i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)])
    groups, start = [], 0
    for r in sorted({layer.r for layer in layers}):
        members = [i for i, layer in enumerate(layers) if layer.r == r]
        groups.append(_RankGroup(r, members, layers, slice(start, start + r * len(members))))
        start += r * len(members)
    # One A (d_in, Σr) for every config, so x·A and dA = xᵀ·dH are one matmul per step.
    A = nn.Parameter(torch.cat([layers[i].A.detach() for g in groups for i in g.members], dim=1))
    opt = make_optimizer(
        settings["optimizer"], [A] + [p for g in groups for p in g.parameters()], settings["lr"]
    )
    recorders = [
        _Recorder({**settings, **cfg, "seed": seed, "device": str(dev), "joint": len(configs)})
        for cfg in configs
    ]
    gen = torch.Generator().manual_seed(seed)
    n, steps = X.shape[0], X.shape[0] // settings["batch_size"]
    running = np.ones(len(configs), dtype=bool)
    for epoch in tqdm(range(1, settings["epochs"] + 1), desc="epochs", disable=not progress, leave=False):
        idx = batch_indices(n, steps, settings["batch_size"], settings["sampling"], gen).to(dev)
        epoch_losses = [torch.zeros(len(g.members), device=dev) for g in groups]
        for rows in idx:
            x, t = X.index_select(0, rows), target.index_select(0, rows)
            with torch.no_grad():
                H = x @ A  # (b, Σr)
                gH = torch.empty_like(H)
                for g, acc in zip(groups, epoch_losses):
                    acc += g.set_grads(H, t, gH)
                A.grad = x.T @ gH
            opt.step()
        train_losses = _per_config(groups, epoch_losses, len(configs)) / steps
        evaluate = epoch % settings["eval_every"] == 0 or epoch == settings["epochs"]
        eval_losses = _full_losses(groups, A, X, target, len(configs)) if evaluate else None
        for i in np.flatnonzero(running):
            ev = None if eval_losses is None or not np.isfinite(train_losses[i]) else eval_losses[i]
            recorders[i].add(epoch, float(train_losses[i]), ev)
            running[i] = recorders[i].diverged_at is None
        if not running.any():
            break

    for g in groups:
        g.copy_into(layers, A)
    return [AdapterRun(cfg, layer, rec.history()) for cfg, layer, rec in zip(configs, layers, recorders)]


def _per_config(groups: list[_RankGroup], values: list[torch.Tensor], count: int) -> np.ndarray:
    out = np.empty(count)
    for g, v in zip(groups, values):
        out[g.members] = v.double().cpu().numpy()
    return out


def _full_losses(groups: list[_RankGroup], A: torch.Tensor, X: torch.Tensor, target: torch.Tensor, count: int) -> np.ndarray:
    """Full-data MSE of every config, without forming any (K, n, d_out) prediction.

    With h = X·A_k (n, r) and residual target R, each config's squared error expands to
    ‖R‖² − 2s·⟨B, hᵀR⟩ + s²·⟨hᵀh, B·Bᵀ⟩: the data enter only through HᵀR (Σr, d_out)
    and HᵀH (Σr, Σr) for the shared H = X·A, accumulated over row chunks. The terms nearly
    cancel once a config fits well, so they are formed in float64, where the cancellation
    still leaves about 8 significant digits (more than the float32 residual of the
    direct computation carries).
    """
    f64 = dict(dtype=torch.float64, device=X.device)
    HtR = torch.zeros(A.shape[1], target.shape[1], **f64)
    HtH = torch.zeros(A.shape[1], A.shape[1], **f64)
    RtR = torch.zeros((), **f64)
    with torch.inference_mode():
        for start in range(0, X.shape[0], EVAL_CHUNK):
            H = (X[start : start + EVAL_CHUNK] @ A).double()
            R = target[start : start + EVAL_CHUNK].double()
            HtR += H.T @ R
            HtH += H.T @ H
            RtR += R.square().sum()
        totals = []
        for g in groups:
            K, r = len(g.members), g.r
            hR = HtR[g.cols].view(K, r, -1)
            hh = HtH[g.cols, g.cols].view(K, r, K, r).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (K, r, r)
            B, s = g.B.double(), g.scales().double().view(K)
            BBt = torch.bmm(B, B.transpose(1, 2))
            totals.append(RtR - 2 * s * (B * hR).sum(dim=(1, 2)) + s**2 * (hh * BBt).sum(dim=(1, 2)))
    return _per_config(groups, [t / target.numel() for t in totals], count)
