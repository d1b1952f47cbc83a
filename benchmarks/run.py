"""Benchmark lora_core against the seed's code, loralib and PEFT, side by side in one run.

Commands, from the repository root:

    python -m benchmarks.run                  # the full benchmark, seed scale (about 20 min on 2 cores)
    python -m benchmarks.run --quick          # smoke run at small sizes (seconds)
    python -m benchmarks.run --only step,scaling --repeats 5
    python -m benchmarks.run --output reports/benchmarks --threads 2

Parts (``--only`` picks some):

    step      one LoRA training step (batch 128, 1001 × 1000, Adam, r = 1): lora_core's
              LoRALinear, lora_core's cached fast-path step, the seed-style module (ΔΘ = A·B
              materialised in every forward), loralib's lora.Linear, PEFT's LoraModel, full
              fine-tuning, and the bare frozen matmul (the floor of a step that recomputes it)
    notebook  notebook 01's training at seed scale: pretrain_base with a cold cache + LoRA
              with lora_core's defaults, against the seed-style script doing the same work
    sweep     25 configs (r ∈ {1, 2, 4, 8, 16} × 5 alphas, 100 epochs, base cached) with
              train_many, against the seed-style code training ONE adapter, and against
              train() on the configs one by one (measured on 5 of them, scaled by 5);
              then train_many's step profiled on the last round's trained configs
    scaling   train_many's cost for 1, 4, 16 and 64 configs (10 epochs instead of 100)
    transformer  one LoRA fine-tuning step (cross-entropy, AdamW) on notebook 05's
              transformer, LoRA on q_proj and v_proj at r = 8: lora_core's add_lora against
              PEFT's LoraModel on the same model, targets and rank, full fine-tuning beside
    notebook05  notebook 05 executed whole under papermill at its defaults with a cold
              cache (kernel start to metrics.json), against its 2-minute goal
    mainjob   the README's main job (``python -m lora_core reproduce``: every notebook and
              the runner sweep, baselines checked) with a cold cache into a scratch folder,
              against the seed-style script's one experiment (pre-training + LoRA); the
              time of each notebook and of the sweep comes from the run's reproduce.json

Before timing, every step variant's loss and gradients from the same A and B are checked
against a float64 reference (loralib and PEFT through their transposed layouts), and the
timed runs of the other parts are checked against each other where they compute the same
thing. Variants are interleaved: round i runs each once, in an order rotated by i, so a
change in the machine's load falls on all of them alike; ratios are taken within a round
and summarised by their median and spread (min–max) over rounds.

Writes ``benchmark.md`` (the tables) and ``benchmark.json`` (every sample) into
``--output`` (default reports/benchmarks, or reports/benchmarks/quick with --quick).
Exits with status 1 when an equivalence check fails.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import lora_core as lc
from lora_core import make_optimizer
from lora_core.fast import StackedAdapters, lean_step, lora_step
from lora_core.suite.reports import environment_info

from . import peers
from .seed_style import SeedLoRA, seed_lora, seed_pretrain

PARTS = ("step", "notebook", "sweep", "scaling", "transformer", "notebook05", "mainjob")
NOTEBOOK05 = Path(__file__).resolve().parents[1] / "notebooks" / "05_transformer.ipynb"
NOTEBOOK05_GOAL_SECONDS = 120.0  # the whole notebook at its defaults, cold cache, 2 CPU cores
# --quick: notebook 05 at the size its papermill test uses.
NOTEBOOK05_QUICK = dict(
    vocab_size=8, seq_len=8, d_model=16, n_heads=2, n_layers=1, d_mlp=32, n=256, n_test=128,
    epochs=3, finetune_epochs=2, batch_size=32, r=4, lora_alpha=8.0, ranks="1, 4", placements="q_v, all",
)  # fmt: skip
RANKS = (1, 2, 4, 8, 16)
ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0)
SCALING_COUNTS = (1, 4, 16, 64)
CHECK_RTOL = 1e-4  # step gradients: float32 against float64, sums over ~1000 terms


@dataclass
class Scale:
    n: int = 10000
    d_in: int = 1001
    d_out: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    epochs: int = 100
    eval_every: int = 10
    scaling_epochs: int = 10  # part "scaling" only: enough steps to time, a tenth of the cost
    step_block: int = 20  # steps per timed sample in part "step"
    step_rounds: int = 15
    rounds: int = 3  # rounds of the whole-run parts
    sweep_rounds: int = 5  # part "sweep": its goal holds in the worst round
    mainjob_rounds: int = 2  # part "mainjob": each round is the whole main job, several minutes
    subset: int = 5  # configs trained one by one with train(), scaled up to 25
    profile_steps: int = 200  # part "sweep": train_many's step profiled after the last round


FULL = Scale()
QUICK = Scale(
    n=512,
    d_in=65,
    d_out=64,
    batch_size=32,
    epochs=4,
    eval_every=2,
    scaling_epochs=2,
    step_block=5,
    step_rounds=3,
    rounds=2,
    sweep_rounds=2,
    mainjob_rounds=1,
    profile_steps=8,
)


# ---------------------------------------------------------------------------------------
# Timing and summaries


def interleaved(
    variants: dict,
    rounds: int,
    verbose: bool = False,
    probe: Callable[[], float] | None = None,
    host: dict[str, list] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, round i calling them in an order rotated by i.

    With ``probe`` (a ``second_core`` reading) and ``host`` (a dict to fill), each call is
    bracketed by the probe: host[name] gets (before, after) per round."""
    if probe is not None and host is None:
        raise ValueError("interleaved(probe=...) needs host=, the dict its readings go into")
    names = list(variants)
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            gc.collect()
            before = probe() if probe else None
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
            state = ""
            if probe:
                host.setdefault(name, []).append((before, probe()))
                state = " (second thread ×{:.2f} before, ×{:.2f} after)".format(*host[name][-1])
            if verbose:
                print(f"  round {i + 1}/{rounds}: {name}: {times[name][-1]:.2f} s{state}", flush=True)
    return times


# A second_core() reading at least this high: the host left the second core to us then.
SECOND_CORE_GIVEN = 1.5


def second_core(work: Callable[[], None], repeats: int = 3) -> float:
    """How much a second thread speeds ``work`` up right now (median of ``repeats`` calls
    with each thread count). For a few of train_many's steps on this 2-core VM: about 1.7
    in some minutes and about 1.0 in others, with no steal time shown, while a lone thread
    runs at the same speed in both (benchmarks/README.md)."""
    threads, best = torch.get_num_threads(), {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                work()
                samples.append(time.perf_counter() - start)
            best[n] = statistics.median(samples)
    finally:
        torch.set_num_threads(threads)
    return best[1] / best[2]


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


class Results:
    """What the run measured and checked, written as markdown and JSON at the end."""

    def __init__(self):
        self.checks: list[dict] = []
        self.timings: dict[str, dict[str, list[float]]] = {}
        self.ratios: list[dict] = []
        self.notes: list[str] = []
        self.load: dict[str, list[float]] = {}  # 1-minute load average before and after each part
        self.memory: dict[str, dict[str, float]] = {}  # peak resident MiB by part
        self.profiles: dict[str, dict] = {}  # by part: where a step's time goes (step_profile)
        # by part and variant: second_core() before and after each round's call
        self.host: dict[str, dict[str, list]] = {}
        # The pre-trained base, shared by the parts that start from it (not a timed cold cache).
        self.cache = tempfile.TemporaryDirectory(prefix="lora_core-benchmark-")
        self.cache_dir = self.cache.name

    def check(self, name: str, rel_diff: float, tolerance: float) -> None:
        ok = bool(rel_diff <= tolerance)
        self.checks.append({"check": name, "max_rel_diff": rel_diff, "tolerance": tolerance, "ok": ok})
        print(
            f"  check {'ok  ' if ok else 'FAIL'} {name}: {rel_diff:.2e} (tolerance {tolerance:g})", flush=True
        )

    def ratio(
        self,
        part,
        name,
        num: list[float],
        den: list[float],
        goal: float | None = None,
        note="",
        judge="median",
    ):
        """Per-round ratios num/den; ``goal`` is the largest ``judge`` ("median", or "max":
        the worst round) that meets it."""
        values = [a / b for a, b in zip(num, den)]
        row = {"part": part, "ratio": name, **summary(values), "goal": goal, "judge": judge, "note": note}
        row["met"] = None if goal is None else bool(row[judge] <= goal)
        self.ratios.append(row)
        print(f"  {name}: {row['median']:.3f} ({row['min']:.3f}-{row['max']:.3f})", flush=True)


def rel_diff(got, ref) -> float:
    """max |got − ref| / max |ref|, over tensors or sequences of numbers."""
    got = torch.as_tensor(got, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def curve_diff(a: dict, b: dict) -> float:
    """Largest relative difference between two {epoch: loss} curves, epoch by epoch."""
    epochs = sorted(set(a) & set(b))
    if not epochs or len(epochs) != len(a) or len(epochs) != len(b):
        return math.inf
    return max(abs(a[e] - b[e]) / abs(b[e]) for e in epochs)


# ---------------------------------------------------------------------------------------
# Part "step": one training step, every variant, same layer and batch


def _lora_core_layer(base, A, B, alpha):
    layer = lc.LoRALinear(copy.deepcopy(base), r=A.shape[1], lora_alpha=alpha)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
    return layer


def _seed_layer(base, A, B, alpha):
    layer = SeedLoRA(copy.deepcopy(base), r=A.shape[1], alpha=alpha)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
    return layer


def _autograd_grads(model, x, y, a_grad, b_grad):
    loss = F.mse_loss(model(x), y)
    loss.backward()
    return loss, a_grad(), b_grad()


def step_gradients(base, A, B, alpha, x, y) -> dict[str, tuple]:
    """(loss, dA, dB) of every variant, in the blog's layout A (d_in, r), B (r, d_out)."""
    s = alpha / A.shape[1]
    with torch.no_grad():
        residual = y - base(x)
    out = {}
    layer = _lora_core_layer(base, A, B, alpha)
    out["lora_core LoRALinear"] = _autograd_grads(layer, x, y, lambda: layer.A.grad, lambda: layer.B.grad)
    fast = _lora_core_layer(base, A, B, alpha)
    loss = lora_step(fast, lambda: None)(x, residual)  # no update: only the gradients are wanted
    out["lora_core fast path"] = (loss, fast.A.grad, fast.B.grad)
    stack = StackedAdapters([_lora_core_layer(base, A, B, alpha)])
    loss = stack.set_grads(x, residual)
    out["lora_core train_many step"] = (loss[0], stack.A.grad, stack.B.grad)
    seed = _seed_layer(base, A, B, alpha)
    out["seed-style"] = _autograd_grads(seed, x, y, lambda: seed.A.grad, lambda: seed.B.grad)
    ll = peers.loralib_layer(base, A, B, alpha)
    if ll is not None:
        out["loralib"] = _autograd_grads(ll, x, y, lambda: ll.lora_A.grad.T, lambda: ll.lora_B.grad.T)
    pm = peers.peft_model(base, A, B, alpha)
    if pm is not None:
        model, la, lb = pm
        out["PEFT"] = _autograd_grads(model, x, y, lambda: la.weight.grad.T, lambda: lb.weight.grad.T)
    # Full fine-tuning of the merged weight W + ΔΘᵀ: the same loss, and the chain rule
    # through ΔΘ = s·A·B turns its gradient dΘ into dA = s·dΘ·Bᵀ and dB = s·Aᵀ·dΘ.
    full = copy.deepcopy(base).requires_grad_(True)
    with torch.no_grad():
        full.weight.add_((A @ B * s).T)
    loss = F.mse_loss(full(x), y)
    loss.backward()
    d_theta = full.weight.grad.T
    out["full fine-tuning (via dΘ)"] = (loss, s * d_theta @ B.T, s * A.T @ d_theta)
    return out


def reference_gradients(base, A, B, alpha, x, y):
    W, A, B = (t.detach().double().requires_grad_(True) for t in (base.weight, A, B))
    x, y = x.double(), y.double()
    loss = ((x @ W.T + x @ A @ B * (alpha / A.shape[1]) - y) ** 2).mean()
    loss.backward()
    return loss, A.grad, B.grad


def check_step(res: Results, sc: Scale) -> None:
    for r, alpha in ((1, 1.0), (4, 8.0)):
        torch.manual_seed(r)
        base = nn.Linear(sc.d_in, sc.d_out, bias=False).requires_grad_(False)
        x, y = torch.randn(sc.batch_size, sc.d_in), torch.randn(sc.batch_size, sc.d_out)
        A, B = torch.randn(sc.d_in, r), torch.randn(r, sc.d_out) * 0.1  # B ≠ 0, so dA ≠ 0
        ref = reference_gradients(base, A, B, alpha, x, y)
        for name, got in step_gradients(base, A, B, alpha, x, y).items():
            diff = max(rel_diff(g.detach(), w.detach()) for g, w in zip(got, ref))
            res.check(f"step r={r}, α={alpha:g}: {name} vs float64 (loss, dA, dB)", diff, CHECK_RTOL)


def part_step(res: Results, sc: Scale) -> None:
    check_step(res, sc)
    torch.manual_seed(0)
    base = nn.Linear(sc.d_in, sc.d_out, bias=False).requires_grad_(False)
    x, y = torch.randn(sc.batch_size, sc.d_in), torch.randn(sc.batch_size, sc.d_out)
    A, B, alpha = torch.randn(sc.d_in, 1), torch.randn(1, sc.d_out) * 0.1, 1.0
    with torch.no_grad():
        residual = y - base(x)

    def blocked(step, *args):
        def run():
            for _ in range(sc.step_block):
                step(*args)

        return run

    def module_step(model, opt):
        # What ``train(..., cache_frozen=False)`` does for a model: forward, MSE, backward, Adam.
        def step(x, y):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return blocked(step, x, y)

    def adam(params):
        return make_optimizer("adam", list(params), sc.lr)  # fused Adam, as lora_core's train uses

    variants = {}
    layer = _lora_core_layer(base, A, B, alpha)
    variants["lora_core LoRALinear"] = module_step(layer, adam([layer.A, layer.B]))
    fast = _lora_core_layer(base, A, B, alpha)
    variants["lora_core fast path (cached base output)"] = blocked(
        lora_step(fast, lean_step("adam", [fast.A, fast.B], sc.lr)),
        x,
        residual,  # as train() does
    )
    seed = _seed_layer(base, A, B, alpha)
    variants["seed-style (ΔΘ materialised)"] = module_step(seed, torch.optim.Adam([seed.A, seed.B], lr=sc.lr))
    ll = peers.loralib_layer(base, A, B, alpha)
    if ll is not None:
        variants["loralib lora.Linear"] = module_step(ll, adam([ll.lora_A, ll.lora_B]))
    pm = peers.peft_model(base, A, B, alpha)
    if pm is not None:
        model, la, lb = pm
        variants["PEFT LoraModel"] = module_step(model, adam([la.weight, lb.weight]))
    full = copy.deepcopy(base).requires_grad_(True)
    variants["full fine-tuning"] = module_step(full, adam(full.parameters()))
    W = base.weight.detach()

    def floor():
        with torch.no_grad():
            for _ in range(sc.step_block):
                F.linear(x, W)

    variants["frozen matmul floor"] = floor
    interleaved(variants, 2)  # warm-up: first-call allocations, lazy initialisation
    times = interleaved(variants, sc.step_rounds)
    times = {name: [t / sc.step_block for t in ts] for name, ts in times.items()}
    res.timings["step"] = times

    lib = times["lora_core LoRALinear"]
    peer_names = [n for n in ("loralib lora.Linear", "PEFT LoraModel") if n in times]
    if peer_names:
        fastest = [min(vals) for vals in zip(*(times[n] for n in peer_names))]
        res.ratio(
            "step",
            "lora_core LoRALinear step / fastest of loralib, PEFT",
            lib,
            fastest,
            goal=1.0,
            note="same fused Adam for the three; all recompute the frozen matmul",
        )
    for name in times:
        if name != "frozen matmul floor":
            res.ratio("step", f"{name} / frozen matmul floor", times[name], times["frozen matmul floor"])
    res.ratio(
        "step",
        "lora_core fast path / seed-style step",
        times["lora_core fast path (cached base output)"],
        times["seed-style (ΔΘ materialised)"],
    )


# ---------------------------------------------------------------------------------------
# Part "notebook": notebook 01's training, cold cache, against the seed-style script


def blog_data(sc: Scale):
    X, y, theta = lc.make_regression(sc.n, sc.d_in, sc.d_out, seed=0)
    theta2, _ = lc.shift_theta(theta, "ones")
    X2, y2, _ = lc.make_regression(sc.n, sc.d_in, sc.d_out, seed=1, theta=theta2)
    return X, y, X2, y2


def schedule(sc: Scale, epochs: int | None = None) -> dict:
    return dict(epochs=epochs or sc.epochs, batch_size=sc.batch_size, lr=sc.lr, eval_every=sc.eval_every)


def part_notebook(res: Results, sc: Scale) -> None:
    X, y, X2, y2 = blog_data(sc)
    sched = schedule(sc)
    curves = {}

    def lora_core_run(cache_dir=None):
        with tempfile.TemporaryDirectory() as cold:
            base, pre = lc.pretrain_base(X, y, seed=0, progress=False, cache_dir=cache_dir or cold, **sched)
            lc.seed_everything(0)
            layer = lc.LoRALinear(base, r=1, lora_alpha=1.0)
            post = lc.train(layer, X2, y2, seed=0, progress=False, **sched)
        return pre.eval_losses.to_dict(), post.eval_losses.to_dict()

    def seed_run():
        base, pre = seed_pretrain(X, y, seed=0, **sched)
        _, post = seed_lora(base, X2, y2, r=1, alpha=1.0, seed=0, **sched)
        curves["seed-style"] = (pre, post)

    pretrained(res, sc)  # fills the warm cache
    variants = {
        "lora_core, cold cache": lambda: curves.__setitem__("lora_core", lora_core_run()),
        "seed-style script": seed_run,
        "lora_core, warm cache": lambda: lora_core_run(res.cache_dir),
    }
    times = interleaved(variants, sc.rounds, verbose=True)
    res.timings["notebook"] = times
    ours, theirs = curves["lora_core"], curves["seed-style"]
    # Same data, initial weights and minibatches; only float rounding differs (fused vs
    # plain Adam, hand-written vs autograd gradients), over 2 × 7800 steps at seed scale.
    res.check(
        "notebook: pre-training eval losses, lora_core vs seed-style", curve_diff(ours[0], theirs[0]), 1e-4
    )
    res.check("notebook: LoRA eval losses, lora_core vs seed-style", curve_diff(ours[1], theirs[1]), 1e-4)
    res.ratio(
        "notebook",
        "notebook 01 training, cold cache / seed-style script",
        times["lora_core, cold cache"],
        times["seed-style script"],
        goal=0.35,
    )
    res.ratio(
        "notebook",
        "notebook 01 training, warm cache / seed-style script",
        times["lora_core, warm cache"],
        times["seed-style script"],
    )


# ---------------------------------------------------------------------------------------
# Parts "sweep" and "scaling": many adapters over one cached base


def sweep_configs(count: int) -> list[dict]:
    """``count`` configs cycling through the ranks; alphas 1, 2, 4, … then 1.5, 3, …"""
    alphas = list(ALPHAS) + [1.5 * a for a in ALPHAS] + [1.25 * a for a in ALPHAS]
    return [{"r": RANKS[i % len(RANKS)], "lora_alpha": alphas[i // len(RANKS)]} for i in range(count)]


def pretrained(res: Results, sc: Scale):
    """The blog's pre-trained base (trained once per benchmark run) and the new task."""
    X, y, X2, y2 = blog_data(sc)
    base, _ = lc.pretrain_base(X, y, seed=0, progress=False, cache_dir=res.cache_dir, **schedule(sc))
    return base, X2, y2


def part_sweep(res: Results, sc: Scale) -> None:
    base, X2, y2 = pretrained(res, sc)
    sched = schedule(sc)
    configs = lc.config_grid(r=list(RANKS), lora_alpha=list(ALPHAS))
    subset = [{"r": r, "lora_alpha": a} for r, a in zip(RANKS, ALPHAS)][
        : sc.subset
    ]  # each rank, each alpha once
    histories = {}

    def many():
        runs = lc.train_many(base, X2, y2, configs, seed=0, progress=False, **sched)
        histories["many"] = {tuple(run.config.values()): run.history for run in runs}
        histories["layers"] = [run.layer for run in runs]

    def one_by_one():
        for cfg in subset:
            lc.seed_everything(0)
            layer = lc.LoRALinear(base, **cfg)
            histories[tuple(cfg.values())] = lc.train(layer, X2, y2, seed=0, progress=False, **sched)

    many_name, seed_name = "train_many, 25 configs", "seed-style, one adapter (r=1, α=1)"
    variants = {
        many_name: many,
        seed_name: lambda: seed_lora(copy.deepcopy(base), X2, y2, seed=0, **sched),
        f"train(), {len(subset)} configs one by one": one_by_one,
    }
    # The probe: a few of train_many's steps on a stack of its own, at one thread and two.
    stack = StackedAdapters([lc.LoRALinear(base, **cfg) for cfg in configs])
    target = lc.fast.frozen_residual(base, X2, y2)
    update = lean_step("adam", stack.parameters(), sc.lr)
    gen = torch.Generator().manual_seed(2)

    def probe_steps():
        batches = lc.training.batch_indices(X2.shape[0], 50, sc.batch_size, "with_replacement", gen)
        stack.run_steps(X2, target, batches, update)

    host: dict[str, list] = {}
    probe = functools.partial(second_core, probe_steps)
    times = interleaved(variants, sc.sweep_rounds, verbose=True, probe=probe, host=host)
    res.timings["sweep"] = times
    res.host["sweep"] = host
    for cfg in subset:
        key = tuple(cfg.values())
        alone, joint = histories[key].eval_losses.to_dict(), histories["many"][key].eval_losses.to_dict()
        res.check(
            f"sweep: train_many vs train(), r={cfg['r']}, α={cfg['lora_alpha']:g}, eval losses",
            curve_diff(joint, alone),
            1e-4,
        )
    res.profiles["sweep"] = step_profile(histories["layers"], base, X2, y2, sc)
    diverged = [k for k, h in histories["many"].items() if h.diverged]
    if diverged:
        res.notes.append(f"sweep: configs that diverged (still computed every step): {diverged}")
    scale_up = len(configs) / len(subset)
    many_t, seed_t = times[many_name], times[seed_name]
    one_t = [t * scale_up for t in times[f"train(), {len(subset)} configs one by one"]]
    res.ratio(
        "sweep",
        "25-config sweep with train_many / seed-style code training ONE adapter",
        many_t,
        seed_t,
        goal=0.4,
        judge="max",
        note="goal judged on the worst round",
    )
    res.ratio(
        "sweep",
        "25-config sweep with train_many / train() one by one",
        many_t,
        one_t,
        note=f"train() timed on {len(subset)} configs (one per rank), scaled by {scale_up:g}",
    )
    res.ratio(
        "sweep",
        "25-config sweep with train_many / seed-style code for all 25",
        many_t,
        [t * len(configs) for t in seed_t],
        note="seed-style timed on one adapter, scaled by 25",
    )
    # Read beside the goal, not instead of it: the rounds in which the host left the second
    # thread to both timed runs (benchmarks/README.md, "The host").
    both = (many_name, seed_name)
    steady = [i for i in range(len(many_t)) if min(min(host[n][i]) for n in both) >= SECOND_CORE_GIVEN]
    ratios = ", ".join(f"round {i + 1}: {many_t[i] / seed_t[i]:.3f}" for i in steady) or "none"
    res.notes.append(
        f"sweep: rounds in which a second thread gave train_many's step at least "
        f"×{SECOND_CORE_GIVEN} before and after both train_many and the seed-style run: {ratios} "
        f"({len(steady)} of {len(many_t)})"
    )


def step_profile(layers, base, X, y, sc: Scale) -> dict:
    """Where ``train_many``'s step spends its time: ``sc.profile_steps`` steps (gathers,
    gradients, Adam) over the trained configs of the last round, under torch.profiler.

    The profiler's own overhead inflates the small ops, so the rows are shares to compare,
    and the step's wall time is taken apart, without the profiler."""
    from torch.profiler import ProfilerActivity, profile

    stack = lc.fast.StackedAdapters(layers)
    update = lc.fast.lean_step("adam", stack.parameters(), sc.lr)
    target = lc.fast.frozen_residual(base, X, y)
    gen = torch.Generator().manual_seed(1)

    def steps(count):
        batches = lc.training.batch_indices(X.shape[0], count, sc.batch_size, "with_replacement", gen)
        stack.run_steps(X, target, batches, update)

    steps(max(1, sc.profile_steps // 4))  # the workspace made, the reference picked
    start = time.perf_counter()
    steps(sc.profile_steps)
    wall = (time.perf_counter() - start) / sc.profile_steps
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        steps(sc.profile_steps)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        {
            "op": e.key,
            "shapes": str(e.input_shapes),
            "us_per_step": e.self_cpu_time_total / sc.profile_steps,
            "calls_per_step": e.count / sc.profile_steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)
    ]
    reference = stack.reference
    return {
        "steps": sc.profile_steps,
        "wall_ms_per_step": wall * 1e3,
        "ops_per_step": sum(e.count for e in events) / sc.profile_steps,
        "reference_rank": None if reference is None else int(stack.ranks[reference]),
        "ops": rows,  # every operator and shape, largest first
    }


def part_scaling(res: Results, sc: Scale) -> None:
    base, X2, y2 = pretrained(res, sc)
    sched = schedule(sc, sc.scaling_epochs)
    variants = {
        f"train_many, {k} configs": (
            lambda k=k: lc.train_many(base, X2, y2, sweep_configs(k), seed=0, progress=False, **sched)
        )
        for k in SCALING_COUNTS
    }
    times = interleaved(variants, sc.rounds, verbose=True)
    res.timings["scaling"] = times
    one = times[f"train_many, {SCALING_COUNTS[0]} configs"]
    for k in SCALING_COUNTS[1:]:
        res.ratio(
            "scaling",
            f"cost of {k} configs / cost of 1",
            times[f"train_many, {k} configs"],
            one,
            note=f"{sc.scaling_epochs} epochs; linear growth would be {k}",
        )
    last = SCALING_COUNTS[-1]
    slope = [math.log(a / b) / math.log(last) for a, b in zip(times[f"train_many, {last} configs"], one)]
    # Reported as a ratio row: the log-log slope of cost against configs (1 = linear).
    res.ratio(
        "scaling",
        f"log-log slope of cost, 1 → {last} configs",
        slope,
        [1.0] * len(slope),
        goal=0.8,
        note="cost ∝ configs^slope; goal: clearly sublinear",
    )


# ---------------------------------------------------------------------------------------
# Part "transformer": a LoRA step inside notebook 05's model, lora_core against PEFT


def transformer_variants(sc: Scale):
    """lora_core and PEFT adapters holding the same A, B over copies of one frozen model."""
    cfg = lc.TransformerConfig() if sc.d_in == FULL.d_in else TRANSFORMER_QUICK  # notebook 05 default
    base = lc.build_transformer(cfg, seed=0).requires_grad_(False)
    X, y = lc.make_sequences("two_back", 64, cfg.seq_len, cfg.vocab_size, seed=0)
    ours = copy.deepcopy(base)
    lc.seed_everything(0)
    lc.add_lora(ours, TRANSFORMER_TARGETS, r=8, lora_alpha=16.0, init="kaiming")
    with torch.no_grad():
        for layer in lc.lora_modules(ours).values():
            layer.B.normal_(0.0, 0.1)  # B ≠ 0, so A's gradient is not zero and is checked too
    theirs = peers.peft_adapted(base, lc.lora_modules(ours), 16.0)
    full = copy.deepcopy(base).requires_grad_(True)
    return ours, theirs, full, X, y


TRANSFORMER_QUICK = lc.TransformerConfig(vocab_size=8, seq_len=8, d_model=16, n_heads=2, n_layers=1, d_mlp=32)
TRANSFORMER_TARGETS = ["q_proj", "v_proj"]


def _ce(model, X, y):
    logits = model(X)
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=lc.IGNORE_INDEX)


def part_transformer(res: Results, sc: Scale) -> None:
    ours, theirs, full, X, y = transformer_variants(sc)
    if theirs is None:
        res.notes.append(
            "transformer: PEFT is not importable; only lora_core and full fine-tuning were timed"
        )
    else:
        peft_model, factors = theirs
        _ce(ours, X, y).backward()
        loss_ours = _ce(ours, X, y)
        loss_theirs = _ce(peft_model, X, y)
        _ce(peft_model, X, y).backward()
        grads = [
            (layer.A.grad, factors[name][0].weight.grad.T, layer.B.grad, factors[name][1].weight.grad.T)
            for name, layer in lc.lora_modules(ours).items()
        ]
        diff = max(
            [rel_diff(loss_ours.detach(), loss_theirs.detach())]
            + [max(rel_diff(a, pa), rel_diff(b, pb)) for a, pa, b, pb in grads]
        )
        res.check(
            "transformer step: lora_core vs PEFT (loss, dA, dB of every adapted layer)", diff, CHECK_RTOL
        )

    def module_step(model):
        opt = make_optimizer("adamw", [p for p in model.parameters() if p.requires_grad], 1e-3)

        def run():
            for _ in range(sc.step_block):
                loss = _ce(model, X, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    variants = {"lora_core add_lora (q, v; r = 8)": module_step(ours), "full fine-tuning": module_step(full)}
    if theirs is not None:
        variants["PEFT LoraModel (q, v; r = 8)"] = module_step(theirs[0])
    interleaved(variants, 2)  # warm-up
    times = interleaved(variants, sc.step_rounds)
    times = {name: [t / sc.step_block for t in ts] for name, ts in times.items()}
    res.timings["transformer"] = times
    ours_t = times["lora_core add_lora (q, v; r = 8)"]
    if theirs is not None:
        res.ratio(
            "transformer",
            "transformer LoRA step: lora_core / PEFT",
            ours_t,
            times["PEFT LoraModel (q, v; r = 8)"],
            goal=1.0,
            note="same model, targets, rank, batch and fused AdamW",
        )
    res.ratio(
        "transformer",
        "transformer LoRA step (lora_core) / full fine-tuning step",
        ours_t,
        times["full fine-tuning"],
    )


def part_notebook05(res: Results, sc: Scale) -> None:
    from lora_core.suite import execute_notebook

    parameters = NOTEBOOK05_QUICK if sc.n != FULL.n else {}
    rounds = 1 if sc.n != FULL.n else sc.rounds
    seconds = []
    for i in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            # A cache folder of its own: every round pre-trains the transformer, as a first run does.
            previous = os.environ.get("LORA_CORE_CACHE")
            os.environ["LORA_CORE_CACHE"] = str(Path(scratch) / "cache")
            try:
                start = time.perf_counter()
                execute_notebook(NOTEBOOK05, Path(scratch) / "run", parameters, render_html=False)
                seconds.append(time.perf_counter() - start)
            finally:
                if previous is None:
                    os.environ.pop("LORA_CORE_CACHE")
                else:
                    os.environ["LORA_CORE_CACHE"] = previous
        print(f"  round {i + 1}/{rounds}: notebook 05, cold cache: {seconds[-1]:.1f} s", flush=True)
    res.timings["notebook05"] = {"notebook 05, cold cache": seconds}
    res.ratio(
        "notebook05",
        f"notebook 05 wall time, cold cache / its {NOTEBOOK05_GOAL_SECONDS:.0f} s goal",
        seconds,
        [NOTEBOOK05_GOAL_SECONDS] * len(seconds),
        goal=1.0,
        note="at its defaults; --quick runs the test's small size, so its ratio says nothing of the goal",
    )


# Part "mainjob": the README's main job as a user waits for it


# --quick: notebook 01 alone at the size of its small baseline, a smoke run of the part.
MAINJOB_QUICK = ["--only", "01_rank1_recovery", "--baselines", "small"] + [
    arg
    for p in ("n=512", "d_in=65", "d_out=64", "epochs=60", "batch_size=64", "lr=3e-2")
    for arg in ("--param", p)
]
MAINJOB_GOAL = 2.0  # the whole main job / the seed-style script's one experiment


def part_mainjob(res: Results, sc: Scale) -> None:
    quick = sc.n != FULL.n
    X, y, X2, y2 = blog_data(sc)
    sched = schedule(sc)
    runs, verdicts = {}, []

    def main_job():
        with tempfile.TemporaryDirectory(prefix="lora_core-mainjob-") as scratch:
            # A cache of its own: the run pre-trains every base, as on a fresh machine.
            env = {**os.environ, "LORA_CORE_CACHE": str(Path(scratch) / "cache")}
            command = [
                sys.executable,
                "-m",
                "lora_core",
                "reproduce",
                "--reports",
                str(Path(scratch) / "reports"),
            ]
            done = subprocess.run(
                command + (MAINJOB_QUICK if quick else []), env=env, capture_output=True, text=True
            )
            verdicts.append(done.returncode)
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            record_file = Path(scratch) / "reports" / "reproduce.json"
            record = json.loads(record_file.read_text()) if record_file.exists() else {"runs": {}}
            for name, run in record["runs"].items():
                runs.setdefault(name, []).append(run["seconds"])

    def seed_run():
        base, _ = seed_pretrain(X, y, seed=0, **sched)
        seed_lora(base, X2, y2, r=1, alpha=1.0, seed=0, **sched)

    variants = {"main job, cold cache": main_job, "seed-style script": seed_run}
    times = interleaved(variants, sc.mainjob_rounds, verbose=True)
    res.timings["mainjob"] = {**times, **{f"main job: {name}": seconds for name, seconds in runs.items()}}
    # Not an equivalence check but a precondition: a main job that failed is not timed.
    res.check("mainjob: every run finished and passed its baseline", float(any(verdicts)), 0.0)
    res.ratio(
        "mainjob",
        "main job (every notebook and the runner sweep), cold cache / seed-style script",
        times["main job, cold cache"],
        times["seed-style script"],
        goal=None if quick else MAINJOB_GOAL,
        note="--quick runs notebook 01 alone at its small size: says nothing of the goal" if quick else "",
    )


# ---------------------------------------------------------------------------------------
# Output


def machine() -> dict:
    info = environment_info("cpu")
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        **info,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def markdown(res: Results, env: dict, sc: Scale, command: str) -> str:
    lines = [
        "# lora_core benchmark",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
        f"{env['torch_threads']} threads, OMP_WAIT_POLICY={env['omp_wait_policy'] or 'unset'}; "
        f"{env.get('timestamp', '')}. Command: `{command}`.",
        "1-minute load average (before → after) by part: "
        + ", ".join(f"{p} {a:.1f} → {b:.1f}" for p, (a, b) in env["load_average_by_part"].items())
        + " (2 cores: above about 2, other processes were competing for them).",
        f"Sizes: n={sc.n}, d_in={sc.d_in}, d_out={sc.d_out}, batch {sc.batch_size}, {sc.epochs} epochs; "
        f"{sc.rounds} interleaved rounds per whole-run part ({sc.sweep_rounds} for sweep, "
        f"{sc.mainjob_rounds} for mainjob), {sc.step_rounds} × {sc.step_block} steps per step variant.",
        "",
    ]
    if res.checks:
        lines += [
            "## Equivalence checks (before timing)",
            "",
            "| check | max relative difference | tolerance | ok |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {c['check']} | {c['max_rel_diff']:.2e} | {c['tolerance']:g} | {'yes' if c['ok'] else 'NO'} |"
            for c in res.checks
        ]
        lines.append("")
    lines += [
        "## Ratios (median over rounds; spread = min–max over rounds)",
        "",
        "| part | ratio | median | spread | goal | met | part's peak memory | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res.ratios:
        goal = "" if r["goal"] is None else f"≤ {r['goal']:g}"
        if goal and r.get("judge") == "max":
            goal += " in every round"
        met = "" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(
            f"| {r['part']} | {r['ratio']} | {r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | "
            f"{goal} | {met} | {_memory_text(res.memory.get(r['part']))} | {r['note']} |"
        )
    if res.memory:
        lines += [
            "",
            "## Peak resident memory by part (MiB; each part runs in a process of its own)",
            "",
            "| part | the part's process | largest process it started (kernel, main-job worker) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {part} | {m['process_mib']:.0f} | {m['largest_child_mib']:.0f} |"
            for part, m in res.memory.items()
        ]
    lines += [
        "",
        "## Timings (seconds; per step for part step)",
        "",
        "| part | variant | median | min | max | samples |",
        "|---|---|---|---|---|---|",
    ]
    for part, times in res.timings.items():
        for name, samples in times.items():
            s = summary(samples)
            lines.append(
                f"| {part} | {name} | {s['median']:.4g} | {s['min']:.4g} | {s['max']:.4g} | {s['n']} |"
            )
    for part, host in res.host.items():
        names = list(host)
        lines += [
            "",
            f"## The host, round by round (part {part})",
            "",
            "Seconds, and how much a second thread sped up 50 of `train_many`'s steps just "
            "before and just after each call (`second_core()`: about 1.7 in some minutes, about "
            "1.0 in others). Rounds rotate the order of the variants.",
            "",
            "| round | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for i in range(len(host[names[0]])):
            cells = [
                f"{res.timings[part][name][i]:.3g} s (×{host[name][i][0]:.2f} → ×{host[name][i][1]:.2f})"
                for name in names
            ]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    for part, prof in res.profiles.items():
        rank = "none" if prof["reference_rank"] is None else f"r = {prof['reference_rank']}"
        lines += [
            "",
            f"## Where a `train_many` step's time goes (part {part}: the last round's trained "
            f"configs, {prof['steps']} steps under torch.profiler)",
            "",
            f"{prof['wall_ms_per_step']:.2f} ms per step without the profiler; "
            f"{prof['ops_per_step']:.0f} operator calls per step; reference at the end: {rank}. "
            "Self CPU time per step, the 12 largest (benchmark.json has every operator; the "
            "profiler inflates the small ops: read the shares).",
            "",
            "| operator | input shapes | µs per step | calls per step | share |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['op']} | {row['shapes']} | {row['us_per_step']:.1f} | "
            f"{row['calls_per_step']:.1f} | {100 * row['share']:.1f} % |"
            for row in prof["ops"][:12]
        ]
    notes = res.notes + list(peers.missing.values())
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


RUNNERS = {
    "step": part_step,
    "notebook": part_notebook,
    "sweep": part_sweep,
    "scaling": part_scaling,
    "transformer": part_transformer,
    "notebook05": part_notebook05,
    "mainjob": part_mainjob,
}


def peak_memory() -> dict[str, float]:
    """This process's peak resident memory and that of the largest process it waited for
    (a notebook kernel, the main job's workers), in MiB."""
    import resource

    from lora_core.suite import kernels

    # Kernels forked by a kernel server are its children: they count among ours once the
    # server, which waits for each of them, has been waited for in turn.
    kernels.close_servers()
    kib = 1024.0  # Linux reports ru_maxrss in KiB
    return {
        "process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        "largest_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
    }


def run_part(res: Results, part: str, args) -> None:
    """Run ``part`` in a process of its own, so that its peak memory is its own, and merge
    what it measured into ``res``."""
    with tempfile.TemporaryDirectory(prefix="lora_core-benchmark-part-") as scratch:
        record_file = Path(scratch) / "part.json"
        command = [sys.executable, "-m", "benchmarks.run", "--only", part, "--threads", str(args.threads)]
        command += ["--part-record", str(record_file), "--base-cache", res.cache_dir]
        command += ["--quick"] * args.quick + (["--repeats", str(args.repeats)] if args.repeats else [])
        code = subprocess.run(command).returncode
        if not record_file.exists():
            res.notes.append(f"part {part} stopped with exit status {code} before it wrote its results")
            res.checks.append(
                {"check": f"part {part} ran", "max_rel_diff": 1.0, "tolerance": 0.0, "ok": False}
            )
            return
        record = json.loads(record_file.read_text())
    res.checks += record["checks"]
    res.timings.update(record["timings"])
    res.ratios += record["ratios"]
    res.notes += record["notes"]
    res.load.update(record["load"])
    res.memory.update(record["memory"])
    res.profiles.update(record["profiles"])
    res.host.update(record["host"])


def _memory_text(memory: dict | None) -> str:
    if not memory:
        return ""
    return f"{max(memory['process_mib'], memory['largest_child_mib']):.0f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of seconds")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {PARTS}")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per part (default 3; 15 for step)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--output", default=None, help="folder for benchmark.md and benchmark.json")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="run with OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of "
        "spinning, which keeps 2-thread timings sane when other processes share the cores",
    )
    # Internal: how run_part starts a part in a child process.
    parser.add_argument("--part-record", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base-cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.omp_passive and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        # OpenMP reads its wait policy once, when torch loads it: start again with it set.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *argv], env)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only={args.only!r} is not allowed: expected parts among {list(PARTS)}")
    sc = replace(QUICK if args.quick else FULL)
    if args.repeats is not None:
        sc.rounds = sc.step_rounds = sc.sweep_rounds = sc.mainjob_rounds = max(1, args.repeats)
    torch.set_num_threads(args.threads)
    output = Path(args.output or ("reports/benchmarks/quick" if args.quick else "reports/benchmarks"))
    command = "python -m benchmarks.run " + " ".join(argv)

    res = Results()
    if args.part_record:  # a child of the run below: one part, its record to the parent
        res.cache_dir = args.base_cache or res.cache_dir
        # The first torch.optim optimizer a process builds imports torch._dynamo (about 2 s).
        # lora_core's loops build none and the seed-style code builds one per run: imported
        # here, it is in no variant's time, whichever runs first.
        importlib.import_module("torch._dynamo")

        before = os.getloadavg()[0]
        RUNNERS[parts[0]](res, sc)
        res.load[parts[0]] = [before, os.getloadavg()[0]]
        res.memory[parts[0]] = peak_memory()
        fields = ("checks", "timings", "ratios", "notes", "load", "memory", "profiles", "host")
        Path(args.part_record).write_text(json.dumps({k: getattr(res, k) for k in fields}))
        return 0
    for part in parts:
        print(f"[{part}]", flush=True)
        run_part(res, part, args)
    for note in peers.missing.values():
        print("note:", note)

    env = machine()
    env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    env["load_average_by_part"] = res.load
    output.mkdir(parents=True, exist_ok=True)
    (output / "benchmark.md").write_text(markdown(res, env, sc, command.strip()))
    record = {
        "command": command.strip(),
        "environment": env,
        "scale": asdict(sc),
        "parts": parts,
        "checks": res.checks,
        "ratios": res.ratios,
        "notes": res.notes + list(peers.missing.values()),
        "memory_mib": res.memory,
        "profiles": res.profiles,
        "second_core": res.host,
        "timings": {
            part: {name: {"samples": ts, **summary(ts)} for name, ts in times.items()}
            for part, times in res.timings.items()
        },
    }
    (output / "benchmark.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {output / 'benchmark.md'} and {output / 'benchmark.json'}")
    return 0 if all(c["ok"] for c in res.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
