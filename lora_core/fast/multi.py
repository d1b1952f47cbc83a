"""Many adapters on one frozen base, trained together: the fast path for sweeps.

A sweep over r, lora_alpha and scaling trains many adapters on the same frozen layer and
the same data. Trained one by one, each repeats the same minibatch gathers and pays the
per-step overhead again. Here every config sees the same minibatch sequence in one
batched step: all configs share one x·A product (their A side by side), configs of equal
rank are stacked and multiplied with one ``bmm``, each config's gradient is written by
hand from its own loss (``StackedAdapters.set_grads``: the formulas of ``train``'s fast
path, rearranged so that no config's (batch, d_out) residual is ever formed) and Adam,
being elementwise, updates each config as if it were alone. Each config's History
therefore equals training it alone with ``train`` and the same seed, up to float rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
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
    (Aᵀ·xᵀ, Hᵀt, B·tᵀ, xᵀ·dH) of width Σr however many configs there are, one (b, Σr) ×
    (Σr, Σr) product for dH, three products as thin as the reference's rank (below), and
    a handful of small ops per rank group. The loss's terms nearly cancel once a config
    fits (‖t‖² ≈ 1e3 per entry against a loss of 1e-3), so Q, G and the losses are formed
    in float64. Hᵀt is formed in float32 after subtracting the residual of a reference
    config that fitted well on the previous step (see ``_set_grads`` and
    ``_pick_reference``), which keeps it at least as precise as the direct float32 form; on
    the CPU only, since picking the reference reads values back from the device, which
    would stall a GPU's queue on every step. Every
    per-step tensor lives in a workspace made on the first step, so the loop allocates
    nothing large.
    """

    def __init__(self, layers: list[LoRALinear]):
        self.count = len(layers)
        order = sorted(range(self.count), key=lambda i: layers[i].r)  # stable: grouped by rank
        self.groups, self.cols, start, at = [], [None] * self.count, 0, 0
        for r in sorted({layer.r for layer in layers}):
            members = [i for i in order if layers[i].r == r]
            K = len(members)
            # (r, K, its columns of A / rows of B, its entries in the flat r × r blocks)
            self.groups.append((r, K, slice(start, start + r * K), slice(at, at + K * r * r)))
            for i in members:
                self.cols[i] = slice(start, start + r)
                start += r
            at += K * r * r
        dev = layers[0].A.device
        self.owner = torch.tensor([i for i in order for _ in range(layers[i].r)], device=dev)
        # The config of each entry of the configs' r × r blocks, laid out flat in group order,
        # and where each entry sits in the (Σr × Σr) block-diagonal matrix.
        self.block_owner = torch.tensor([i for i in order for _ in range(layers[i].r ** 2)], device=dev)
        width = start
        self.block_pos = torch.tensor(
            [
                (self.cols[i].start + row) * width + self.cols[i].start + col
                for i in order
                for row in range(layers[i].r)
                for col in range(layers[i].r)
            ],
            device=dev,
        )
        self.A = nn.Parameter(torch.cat([layers[i].A.detach() for i in order], dim=1))
        self.B = nn.Parameter(torch.cat([layers[i].B.detach() for i in order], dim=0))
        self.learnable = torch.tensor([layer.scaling == "learnable" for layer in layers], device=dev)
        self.fixed_scale = torch.stack([layer.scale.detach() for layer in layers])
        self.scale = nn.Parameter(self.fixed_scale.clone()) if self.learnable.any() else None
        # The config whose residual the step subtracts before its float32 Hᵀt (see
        # _set_grads); None: Hᵀt in float64. Each step picks the next one (_pick_reference).
        self.reference: int | None = None
        # Reading a value back (.item()) costs next to nothing on the CPU and waits for the
        # whole queue on a GPU: there the step uses no reference and reads nothing back.
        self.reads_back = dev.type == "cpu"
        self.ranks = np.array([layer.r for layer in layers])
        self._work: dict | None = None  # the step's working tensors, see _workspace
        self._forms: dict = {}
        self._batch: tuple | None = None  # run_steps' (key, x, t) minibatch buffers

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

    def _workspace(self, b: int, d: int, dtype: torch.dtype) -> dict:
        """The step's working tensors for minibatches of b rows and d outputs, made once
        (again only if the shape changes), with the views each rank group works on.

        A step then allocates nothing large and slices nothing: each fresh (Σr, d_out)
        float64 temporary would be a fresh allocation, which page faults as often as not,
        and each view costs as much Python as a small op."""
        key = (b, d, dtype)
        if self._work is not None and self._work["key"] == key:
            return self._work
        R, blocks, f64 = self.A.shape[1], self.block_owner.shape[0], torch.float64

        def new(*shape, dt=f64):  # zeros: the block-diagonal M relies on its off-block zeros
            return torch.zeros(shape, dtype=dt, device=self.A.device)

        w = dict(key=key, Ht=new(R, b, dt=dtype), Ht64=new(R, b), t64=new(b, d), G=new(R, d), B64=new(R, d))
        w.update(Q=new(blocks), BBt=new(blocks), sQ=new(blocks), QBB=new(blocks))
        w.update(dB=new(R, d, dt=dtype), sBBt=new(blocks, dt=dtype), M=new(R, R, dt=dtype))
        w.update(gHt=new(R, b, dt=dtype), dA=new(*self.A.shape, dt=dtype))
        w.update(tr=new(b, d, dt=dtype), P32=new(R, d, dt=dtype), C={r: new(R, r) for r, *_ in self.groups})
        w["groups"] = []
        for r, K, cols, at in self.groups:
            h, B = w["Ht64"][cols].view(K, r, b), w["B64"][cols].view(K, r, d)
            w["groups"].append(
                dict(
                    h=h,
                    hT=h.transpose(1, 2),
                    B=B,
                    BT=B.transpose(1, 2),
                    Q=w["Q"][at].view(K, r, r),
                    BBt=w["BBt"][at].view(K, r, r),
                    sQ=w["sQ"][at].view(K, r, r),
                    G=w["G"][cols].view(K, r, d),
                )
            )
        w["Mflat"], w["MT"] = w["M"].view(-1), w["M"].T
        self._work = w
        return w

    def _grams(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Every config's Gram matrix of its rows of ``rows`` (Σr, m): for Hᵀ its hᵀh, for B
        its B·Bᵀ, each r × r, flat in group order, into ``out``.

        Only these blocks are used, so only they are formed: one small bmm per rank group
        rather than the whole (Σr, Σr) product."""
        m = rows.shape[1]
        for r, K, cols, blocks in self.groups:
            Rg = rows[cols].view(K, r, m)
            torch.bmm(Rg, Rg.transpose(1, 2), out=out[blocks].view(K, r, r))
        return out

    def _scale_forms(self, c: float) -> dict[str, torch.Tensor]:
        """The scales in the shapes the step uses them: per config, per entry of the r × r
        blocks, and per row of B times the gradient's factor c. Made once per c, unless a
        scale is learned."""
        if self.scale is None and self._forms.get("c") == c:
            return self._forms
        s = self.scales()
        s64 = s.double()
        forms = {
            "c": c,
            "config64": s64,
            "block64": s64[self.block_owner],
            "row": s[self.owner].unsqueeze(1) * c,
        }
        if self.scale is None:
            self._forms = forms
        return forms

    def run_steps(
        self, X: torch.Tensor, target: torch.Tensor, batches: torch.Tensor, update: Callable[[], None]
    ) -> torch.Tensor:
        """One step per row of ``batches`` (the row indices of each minibatch): the
        gradients of every config on (X, target)'s rows, then ``update()``. Returns the
        sum of the steps' minibatch losses per config (count,), in float64."""
        size = batches.shape[1]
        key = (size, X.shape[1], target.shape[1], X.dtype, target.dtype, X.device)
        if self._batch is None or self._batch[0] != key:
            # Gathered into the same two buffers every step: a fresh 0.5 MB minibatch per
            # step is a fresh allocation, which page faults as often as not.
            self._batch = key, X.new_empty(size, X.shape[1]), target.new_empty(size, target.shape[1])
        _, x_buf, t_buf = self._batch
        total = torch.zeros(self.count, dtype=torch.float64, device=X.device)
        for rows in batches:
            x = torch.index_select(X, 0, rows, out=x_buf)
            total += self.set_grads(x, torch.index_select(target, 0, rows, out=t_buf))
            update()
        return total

    @torch.no_grad()
    def set_grads(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Write every config's gradients for the minibatch (x, t) into A, B (and the
        scale); return each config's minibatch MSE (count,), in float64.

        The gradients are the stack's working buffers, overwritten by the next call:
        clone them to keep them."""
        rho = self.reference if self.reads_back else None
        losses, tt = self._set_grads(x, t, rho)
        if rho is not None and not bool(losses[rho] * t.numel() <= tt):
            # The reference diverged, or fits worse than no adapter at all: its residual t'
            # is no smaller than t, and its float32 product would be the less precise one.
            losses, _ = self._set_grads(x, t, None)
        if self.reads_back:
            self.reference = _pick_reference(losses.numpy(), self.ranks)
        return losses

    def _set_grads(
        self, x: torch.Tensor, t: torch.Tensor, rho: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """set_grads with reference ρ (None: float64 Hᵀt); returns the losses and ‖t‖²."""
        w = self._workspace(x.shape[0], t.shape[1], x.dtype)
        c = 2.0 / t.numel()
        s = self._scale_forms(c)
        # Every config's h = x·A at once, kept as hᵀ rows (Σr, b): each config's rows are a
        # contiguous (r, b) block, and the products below are faster in this orientation.
        Ht = torch.mm(self.A.T, x.T, out=w["Ht"])
        Ht64 = w["Ht64"].copy_(Ht)
        B64 = w["B64"].copy_(self.B)
        if rho is None:
            G = torch.mm(Ht64, w["t64"].copy_(t), out=w["G"])  # P = Hᵀt, turned into G below
        else:
            # P = Hᵀt = Hᵀt' + s_ρ·Hᵀh_ρ·B_ρ, with t' = t − s_ρ·h_ρ·B_ρ the residual of the
            # reference config ρ. Once ρ fits, t' is small, and its float32 product is as
            # precise as the direct float32 form; only the thin Hᵀh_ρ and its product with
            # B_ρ are formed in float64.
            rows, s_rho = self.cols[rho], s["config64"][rho].item()
            tr = torch.addmm(t, Ht[rows].T, self.B[rows], alpha=-s_rho, out=w["tr"])
            G = w["G"].copy_(torch.mm(Ht, tr, out=w["P32"]))
            # ⟨t', h_ρ·B_ρ⟩ = ⟨P'_ρ, B_ρ⟩, taken while G's rows of ρ still hold P'_ρ.
            tr_pred = torch.dot(G[rows].view(-1), B64[rows].view(-1))
            C = torch.mm(Ht64, Ht64[rows].T, out=w["C"][rows.stop - rows.start])
            G.addmm_(C, B64[rows], alpha=s_rho)
        for g in w["groups"]:
            torch.bmm(g["h"], g["hT"], out=g["Q"])  # hᵀh
            torch.bmm(g["B"], g["BT"], out=g["BBt"])
        sQ = torch.mul(w["Q"], s["block64"], out=w["sQ"])
        for g in w["groups"]:
            g["G"].baddbmm_(g["sQ"], g["B"], beta=-1)  # G = s·Q·B − P
        # s·⟨Q·B, B⟩ = s·⟨Q, B·Bᵀ⟩: from the r × r blocks, not the (Σr, d_out) rows.
        sQBB = self._per_config(torch.mul(sQ, w["BBt"], out=w["QBB"]), self.block_owner)
        # ⟨G, B⟩, its products formed in B64's buffer: nothing reads B64 after this.
        GB = self._per_config(B64.mul_(G).sum(1), self.owner)
        if self.scale is not None:
            self.scale.grad = torch.where(self.learnable, GB * c, 0.0).to(self.scale.dtype)
        # c·s·G, scaled after rounding to float32: one float64 pass less, for one more
        # rounding of 6e-8.
        self.B.grad = w["dB"].copy_(G).mul_(s["row"])
        # ‖diff‖² = ‖t‖² + s²⟨Q·B, B⟩ − 2s⟨P, B⟩ = ‖t‖² + s·(2⟨G, B⟩ − s⟨Q·B, B⟩)
        if rho is None:
            tt = torch.dot(w["t64"].view(-1), w["t64"].view(-1))
        else:
            # ‖t‖² = ‖t'‖² + 2s_ρ⟨t', h_ρ·B_ρ⟩ + s_ρ²‖h_ρ·B_ρ‖², so that for every config
            # the terms that cancel are the float64 ones. ‖t'‖² is summed in float64 too
            # (through the workspace: a float64 norm of t' allocates a copy on every step):
            # it is of the order of the reference's loss, and a float32 sum would err by
            # more than 1e-7 of that in every config's loss.
            t64 = w["t64"].copy_(tr).view(-1)
            tt = torch.dot(t64, t64) + 2 * s_rho * tr_pred + s_rho * sQBB[rho]
        losses = GB.mul_(2).sub_(sQBB).mul_(s["config64"]).add_(tt).div_(t.numel())

        # dloss/dH = c·s·(h·(s·B·Bᵀ) − t·Bᵀ): both products as one matmul for every
        # config, the first through the block-diagonal matrix of the configs' s·B·Bᵀ.
        w["Mflat"].index_copy_(0, self.block_pos, w["sBBt"].copy_(w["BBt"].mul_(s["block64"])))
        if not self.reads_back or not math.isfinite(losses.sum().item()):
            # A diverged config's non-finite h would reach every column through M's zeros;
            # zeroed, it stays out of the other configs' gradients (its own A is lost anyway).
            Ht = torch.nan_to_num(Ht, nan=0.0, posinf=0.0, neginf=0.0)
        gHt = torch.mm(self.B, t.T, out=w["gHt"])  # (t·Bᵀ)ᵀ
        gHt.addmm_(w["MT"], Ht, beta=-1).mul_(s["row"])  # c·s·(h·M − t·Bᵀ)ᵀ
        self.A.grad = torch.mm(x.T, gHt.T, out=w["dA"])
        return losses, tt

    @torch.no_grad()
    def full_losses(self, X: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """Full-data MSE of every config, from HᵀR and HᵀH accumulated over row chunks."""
        f64 = dict(dtype=torch.float64, device=X.device)
        HtR = torch.zeros(self.A.shape[1], target.shape[1], **f64)
        HtH = torch.zeros(self.block_owner.shape, **f64)  # each config's hᵀh block, flat
        block = torch.empty_like(HtH)
        RtR = torch.zeros((), **f64)
        for start in range(0, X.shape[0], EVAL_CHUNK):
            Ht = (X[start : start + EVAL_CHUNK] @ self.A).double().T
            R = target[start : start + EVAL_CHUNK].double()
            HtR += Ht @ R
            HtH += self._grams(Ht, out=block)
            RtR += R.square().sum()
        B64 = self.B.double()
        s64 = self.scales().double()
        sQBB = self._per_config(HtH * self._grams(B64, out=block) * s64[self.block_owner], self.block_owner)
        PB = self._per_config((HtR * B64).sum(1), self.owner)
        extra = (sQBB - 2 * PB).mul_(s64)
        return ((extra + RtR) / target.numel()).cpu().numpy()

    def copy_into(self, layers: list[LoRALinear]) -> None:
        with torch.no_grad():
            for i, layer in enumerate(layers):
                layer.A.copy_(self.A[:, self.cols[i]])
                layer.B.copy_(self.B[self.cols[i]])
                if self.scale is not None and self.learnable[i]:
                    layer.scale.copy_(self.scale[i])


# A reference may fit this many times worse than the best config (in minibatch MSE), so
# that a config of lower rank, whose three products cost less, can serve. Its residual
# is then at most √REFERENCE_SLACK times the best one's, and so is the float32 Hᵀt's
# error: twice the best reference's, still far below the direct float32 form's.
REFERENCE_SLACK = 4.0


def _pick_reference(losses: np.ndarray, ranks: np.ndarray) -> int | None:
    """The next step's reference: among the configs whose loss is within REFERENCE_SLACK
    of the best, the one of lowest rank (of those, the best fit); None if no loss is finite."""
    finite = np.isfinite(losses)
    if not finite.any():
        return None
    # An exact fit's loss can round to slightly below 0: the threshold is never below 0.
    near = np.flatnonzero(finite & (losses <= REFERENCE_SLACK * max(losses[finite].min(), 0.0)))
    return int(near[np.lexsort((losses[near], ranks[near]))[0]])


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
    for name, data in (("X", X), ("y", y)):
        if data.dtype != base.weight.dtype:
            raise ValueError(
                f"{name}.dtype={data.dtype} is not allowed: expected the base's dtype {base.weight.dtype}"
            )
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
        train_losses = stack.run_steps(X, target, idx, update).cpu().numpy() / steps
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
