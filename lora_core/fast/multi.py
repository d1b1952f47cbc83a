"""Many adapters on one frozen base, trained together: the fast path for sweeps.

A sweep over r, lora_alpha and scaling trains many adapters on the same frozen layer and
the same data. Trained one by one, each repeats the same minibatch gathers and pays the
per-step overhead again. Here every config sees the same minibatch sequence in one
batched step: all configs share one x·A product (their A side by side), configs of equal
rank are stacked and multiplied with one ``bmm``, each config's gradient is written by
hand from its own loss alone (``StackedAdapters.set_grads``: the formulas of ``train``'s fast
path, rearranged so that no config's (batch, d_out) residual is ever formed) and Adam,
being elementwise, updates each config as if it were alone. Each config's History
therefore equals training it alone with ``train`` and the same seed, up to float rounding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

# The module, not its names: training imports this package for its fast path, so its
# names are looked up when train_many runs, not while the two modules load.
from .. import training
from ..layer import LoRALinear, check_layer_options
from .optim import lean_step
from .steps import EVAL_CHUNK, frozen_residual

CONFIG_KEYS = ("r", "lora_alpha", "scaling", "init")


@dataclass
class AdapterRun:
    """One config of ``train_many``: its settings, its trained layer and its History.

    ``layer`` shares the frozen base with every other run's layer, so keep it unmerged
    (or merge, use and unmerge) when you compare several.
    """

    config: dict
    layer: LoRALinear
    history: training.History


def config_grid(**axes) -> list[dict]:
    """The Cartesian product of the given axes, e.g. ``config_grid(r=[1, 2], lora_alpha=[1, 8])``."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


class StackedAdapters:
    """Every config's adapter side by side, as one wide LoRA.

    Config k owns columns ``cols[k]`` of A (d_in, Σr) and the same rows of B (Σr, d_out);
    configs of equal rank lie next to each other (a rank group), so the r × r blocks that
    belong to one config are one ``bmm`` per group. ``owner`` maps each of the Σr columns
    to its config, which turns per-column sums into per-config ones.

    With h = x·A_k (b, r), target t, diff = s·h·B − t and c = 2/(b·d_out), each config's
    MSE and gradients follow from P = hᵀt (r, d_out) and Q = hᵀh (r, r) alone:

        G = s·Q·B − P  (= hᵀ·diff)     dB = c·s·G     ds = c·⟨G, B⟩ = c·(s·⟨Q·B, B⟩ − ⟨P, B⟩)
        dH = c·s·(s·h·B·Bᵀ − t·Bᵀ)     ‖diff‖² = ‖t‖² + s²·⟨Q·B, B⟩ − 2s·⟨P, B⟩

    so no config's (b, d_out) residual is ever formed: a step costs four thin matmuls
    (x·A, Hᵀt, t·Bᵀ, xᵀ·dH) however many configs there are, and a handful of small ops
    per rank group. The loss's terms nearly cancel once a config fits (‖t‖² ≈ 1e3 per
    entry against a loss of 1e-3), so P, Q and G are formed in float64; the
    gradients keep the precision of the direct float32 form. Every per-step tensor lives
    in a buffer made on the first step, so the loop allocates nothing large.
    """

    def __init__(self, layers: list[LoRALinear]):
        self.count = len(layers)
        order = sorted(range(self.count), key=lambda i: layers[i].r)  # stable: grouped by rank
        self.groups, self.cols, start = [], [None] * self.count, 0
        for r in sorted({layer.r for layer in layers}):
            members = [i for i in order if layers[i].r == r]
            self.groups.append((r, len(members), slice(start, start + r * len(members))))
            for i in members:
                self.cols[i] = slice(start, start + r)
                start += r
        dev = layers[0].A.device
        self.order = torch.tensor(order, device=dev)  # configs as they lie in the stack
        self.owner = torch.tensor([i for i in order for _ in range(layers[i].r)], device=dev)
        # The config of each entry of the configs' r × r blocks, laid out flat in group order.
        self.block_owner = torch.tensor([i for i in order for _ in range(layers[i].r ** 2)], device=dev)
        self.A = nn.Parameter(torch.cat([layers[i].A.detach() for i in order], dim=1))
        self.B = nn.Parameter(torch.cat([layers[i].B.detach() for i in order], dim=0))
        self.learnable = torch.tensor([layer.scaling == "learnable" for layer in layers], device=dev)
        self.fixed_scale = torch.stack([layer.scale.detach() for layer in layers])
        self.scale = nn.Parameter(self.fixed_scale.clone()) if self.learnable.any() else None
        self._buffers: dict[str, torch.Tensor] = {}
        self._forms: dict[str, torch.Tensor] = {}

    def parameters(self) -> list[nn.Parameter]:
        return [self.A, self.B] + ([self.scale] if self.scale is not None else [])

    def scales(self) -> torch.Tensor:
        """Every config's scale, shape (count,)."""
        if self.scale is None:
            return self.fixed_scale
        # Only learnable configs take their scale from the trained parameter.
        return torch.where(self.learnable, self.scale, self.fixed_scale)

    def _per_config(self, values: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.count, dtype=values.dtype, device=values.device).index_add_(0, owner, values)

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """The step's working tensor ``name``, made once (again only if its shape changes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = torch.zeros(shape, dtype=dtype, device=self.A.device)
        return buf

    def _gram_blocks(self, H: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Every config's hᵀh (r × r) for its columns h of H, flat in group order, into ``out``.

        Only these blocks are used, so only they are formed: one small bmm per rank group
        rather than the whole (Σr, Σr) product."""
        at = 0
        for r, K, cols in self.groups:
            Hg = H[:, cols].view(-1, K, r).permute(1, 2, 0)  # (K, r, b)
            torch.bmm(Hg, Hg.transpose(1, 2), out=out[at : at + K * r * r].view(K, r, r))
            at += K * r * r
        return out

    def _scale_forms(self) -> dict[str, torch.Tensor]:
        """The scales in the shapes the step uses them: per config, per column of A, per
        entry of the r × r blocks, per config in stack order. Made once, unless a scale is
        learned."""
        if self.scale is None and self._forms:
            return self._forms
        s = self.scales()
        s64 = s.double()
        forms = {
            "config64": s64,
            "column64": s64[self.owner].unsqueeze(1),
            "block64": s64[self.block_owner],
            "column": s[self.owner],
            "stacked": s[self.order].view(-1, 1, 1),
        }
        if self.scale is None:
            self._forms = forms
        return forms

    def _scaled_QB(self, Q: torch.Tensor, B64: torch.Tensor, s_block: torch.Tensor, out: torch.Tensor):
        """s·Q·B for every config, its r × r block Q (flat, as ``_gram_blocks`` lays them
        out; ``s_block`` its scale per entry) times its rows of B, into ``out``."""
        sQ = Q * s_block
        at = 0
        for r, K, cols in self.groups:
            torch.bmm(
                sQ[at : at + K * r * r].view(K, r, r), B64[cols].view(K, r, -1), out=out[cols].view(K, r, -1)
            )
            at += K * r * r
        return out

    def _loss_terms(self, sQB: torch.Tensor, P: torch.Tensor, B64: torch.Tensor):
        """Each config's s·⟨Q·B, B⟩ and ⟨P, B⟩ (count,), float64."""
        return (
            self._per_config(torch.linalg.vecdot(sQB, B64), self.owner),
            self._per_config(torch.linalg.vecdot(P, B64), self.owner),
        )

    @torch.no_grad()
    def set_grads(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Write every config's gradients for the minibatch (x, t) into A, B (and the
        scale); return each config's minibatch MSE (count,), in float64."""
        b, R, f64 = x.shape[0], self.A.shape[1], torch.float64
        H = torch.mm(x, self.A, out=self._buffer("H", (b, R), x.dtype))  # one product for every config
        H64 = self._buffer("H64", (b, R), f64).copy_(H)
        t64 = self._buffer("t64", tuple(t.shape), f64).copy_(t)
        P = torch.mm(H64.T, t64, out=self._buffer("P", (R, t.shape[1]), f64))
        Q = self._gram_blocks(H64, out=self._buffer("Q", tuple(self.block_owner.shape), f64))
        B64 = self._buffer("B64", tuple(self.B.shape), f64).copy_(self.B)
        c = 2.0 / t.numel()
        s = self._scale_forms()
        G = self._scaled_QB(Q, B64, s["block64"], out=self._buffer("G", tuple(P.shape), f64))
        sQBB, PB = self._loss_terms(G, P, B64)
        G.sub_(P)  # G = s·Q·B − P
        if self.scale is not None:
            self.scale.grad = torch.where(self.learnable, (sQBB - PB).mul_(c), 0.0).to(self.scale.dtype)
        self.B.grad = self._buffer("dB", tuple(self.B.shape), self.B.dtype).copy_(G.mul_(s["column64"] * c))

        # dloss/dH = c·s·(h·(s·B·Bᵀ) − t·Bᵀ): the product with t as one matmul for every
        # config, the small r × r blocks added per rank group (a config's NaN stays its own).
        gH = torch.mm(t, self.B.T, out=self._buffer("gH", (b, R), x.dtype)).neg_()
        first = 0
        for r, K, cols in self.groups:
            Bg = self.B[cols].view(K, r, -1)
            sBBt = torch.bmm(Bg, Bg.transpose(1, 2)).mul_(s["stacked"][first : first + K])
            gH[:, cols].view(b, K, r).transpose(0, 1).baddbmm_(H[:, cols].view(b, K, r).transpose(0, 1), sBBt)
            first += K
        gH.mul_(s["column"] * c)
        self.A.grad = torch.mm(x.T, gH, out=self._buffer("dA", tuple(self.A.shape), self.A.dtype))
        extra = (sQBB - 2 * PB).mul_(s["config64"])  # ‖diff‖² − ‖t‖²
        return extra.add_(torch.dot(t64.view(-1), t64.view(-1))).div_(t.numel())

    @torch.no_grad()
    def full_losses(self, X: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """Full-data MSE of every config, from HᵀR and HᵀH accumulated over row chunks."""
        f64 = dict(dtype=torch.float64, device=X.device)
        HtR = torch.zeros(self.A.shape[1], target.shape[1], **f64)
        HtH = torch.zeros(self.block_owner.shape, **f64)  # each config's hᵀh block, flat
        block = torch.empty_like(HtH)
        RtR = torch.zeros((), **f64)
        for start in range(0, X.shape[0], EVAL_CHUNK):
            H = (X[start : start + EVAL_CHUNK] @ self.A).double()
            R = target[start : start + EVAL_CHUNK].double()
            HtR += H.T @ R
            HtH += self._gram_blocks(H, out=block)
            RtR += R.square().sum()
        B64 = self.B.double()
        s64 = self.scales().double()
        sQ = self._scaled_QB(HtH, B64, s64[self.block_owner], torch.empty_like(HtR))
        sQBB, PB = self._loss_terms(sQ, HtR, B64)
        extra = (sQBB - 2 * PB).mul_(s64)
        return ((extra + RtR) / target.numel()).cpu().numpy()

    def copy_into(self, layers: list[LoRALinear]) -> None:
        with torch.no_grad():
            for i, layer in enumerate(layers):
                layer.A.copy_(self.A[:, self.cols[i]])
                layer.B.copy_(self.B[self.cols[i]])
                if self.scale is not None and self.learnable[i]:
                    layer.scale.copy_(self.scale[i])


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
    # All configs checked before the first layer is built: building one freezes the base.
    for i, cfg in enumerate(checked):
        try:
            check_layer_options(base, **cfg)
        except ValueError as err:
            raise ValueError(f"{err} (configs[{i}])") from None
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
    training.check_data(X, y)
    settings = training.check_schedule(X.shape[0], epochs, batch_size, lr, eval_every, optimizer, sampling)
    if y.shape[1] != base.out_features or X.shape[1] != base.in_features:
        raise ValueError(
            f"X.shape={tuple(X.shape)}, y.shape={tuple(y.shape)} are not allowed: the base "
            f"maps {base.in_features} inputs to {base.out_features} outputs"
        )
    layers = []
    for cfg in configs:
        training.seed_everything(seed)
        layers.append(LoRALinear(base, **cfg))
    dev = training.resolve_device(device)
    base.to(dev)
    layers = [layer.to(dev) for layer in layers]
    X, y = X.to(dev), y.to(dev)

    target = frozen_residual(base, X, y)  # as in `train`'s fast path
    stack = StackedAdapters(layers)
    update = lean_step(settings["optimizer"], stack.parameters(), settings["lr"])
    recorders = [
        training.Recorder({**settings, **cfg, "seed": seed, "device": str(dev), "joint": len(configs)})
        for cfg in configs
    ]
    gen = torch.Generator().manual_seed(seed)
    n, steps = X.shape[0], X.shape[0] // settings["batch_size"]
    running = np.ones(len(configs), dtype=bool)
    for epoch in tqdm(range(1, settings["epochs"] + 1), desc="epochs", disable=not progress, leave=False):
        idx = training.batch_indices(n, steps, settings["batch_size"], settings["sampling"], gen).to(dev)
        epoch_losses = torch.zeros(len(configs), dtype=torch.float64, device=dev)
        for rows in idx:
            epoch_losses += stack.set_grads(X.index_select(0, rows), target.index_select(0, rows))
            update()
        train_losses = epoch_losses.cpu().numpy() / steps
        evaluate = epoch % settings["eval_every"] == 0 or epoch == settings["epochs"]
        eval_losses = stack.full_losses(X, target) if evaluate else None
        for i in np.flatnonzero(running):
            ev = None if eval_losses is None or not np.isfinite(train_losses[i]) else eval_losses[i]
            recorders[i].add(epoch, float(train_losses[i]), ev)
            running[i] = recorders[i].diverged_at is None
        if not running.any():
            break

    stack.copy_into(layers)
    return [AdapterRun(cfg, layer, rec.history()) for cfg, layer, rec in zip(configs, layers, recorders)]
