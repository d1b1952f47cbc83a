"""What a papermill sweep costs: notebook 01's 9-config sweep on each route, side by side.

Commands, from the repository root (needs ``lora_core[dask]``):

    python -m benchmarks.sweep_routes            # seed scale, base cached (about 10 min on 2 cores)
    python -m benchmarks.sweep_routes --quick    # smoke run at small sizes

The 9 configs are r ∈ {1, 2, 4} × lora_alpha ∈ {1, 8, 64}, every other parameter at its
default, with the data and the pre-trained base already in the disk cache (a fresh
temporary cache, filled once before timing). Three ways to get the same results:

    jobs1     lora-sweep --jobs 1: one kernel per config, one after another
    dask      the same sweep on a running 2-worker LocalCluster, one thread per worker
              (the cluster's start is timed apart: a user starts it once per session)
    inline    one process: train_many over the 9 configs, then each config's three figures
              written as the notebook writes them (the floor: no kernels, no HTML)

Each is run once per round, in an order rotated by the round; ratios are taken within a
round. Also reported: where a config's wall time goes on the jobs1 route (kernel start,
cells, LoRA training, kernel stop, and what the runner does outside papermill, from the
executed notebook's papermill times). Writes ``sweep_routes.md``
and ``sweep_routes.json`` into ``--output``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_rank1_recovery.ipynb"
GRID = {"r": [1, 2, 4], "lora_alpha": [1.0, 8.0, 64.0]}
QUICK = {"n": 512, "d_in": 65, "d_out": 64, "epochs": 5, "eval_every": 5}  # fixed parameters of --quick
CONFIGS = len(GRID["r"]) * len(GRID["lora_alpha"])
GOALS = {"dask / jobs1": 0.65, "jobs1 / inline": 2.5}


def fill_cache(fixed: dict) -> None:
    """Draw the data and pre-train the base once, as the notebook does, so that every
    config of every route finds both in the cache."""
    import lora_core as lc

    p = {"n": 10000, "d_in": 1001, "d_out": 1000, "epochs": 100, "eval_every": 10, **fixed}
    X, y, theta = lc.cached_regression(p["n"], p["d_in"], p["d_out"], seed=0)
    lc.cached_regression(p["n"], p["d_in"], p["d_out"], seed=1, theta=lc.shift_theta(theta, "ones")[0])
    lc.pretrain_base(
        X, y, epochs=p["epochs"], batch_size=128, lr=1e-3, sampling="with_replacement",
        eval_every=p["eval_every"], seed=0, device="cpu", progress=False, cache=True,
    )  # fmt: skip


def inline(fixed: dict, output: Path) -> None:
    """The 9 configs in this process: data, cached base, train_many, the notebook's figures."""
    import torch

    import lora_core as lc
    from lora_core import suite
    from lora_core.suite.sweep import config_name

    p = {"n": 10000, "d_in": 1001, "d_out": 1000, "epochs": 100, "eval_every": 10, **fixed}
    X, y, theta = lc.cached_regression(p["n"], p["d_in"], p["d_out"], seed=0)
    schedule = dict(
        epochs=p["epochs"], batch_size=128, lr=1e-3, sampling="with_replacement", eval_every=p["eval_every"]
    )
    base, pretrain = lc.pretrain_base(X, y, seed=0, device="cpu", progress=False, cache=True, **schedule)
    theta2, shift = lc.shift_theta(theta, "ones")
    X2, y2, _ = lc.cached_regression(p["n"], p["d_in"], p["d_out"], seed=1, theta=theta2)
    runs = lc.train_many(
        base, X2, y2, lc.config_grid(**GRID), seed=0, device="cpu", progress=False, **schedule
    )
    for run in runs:
        folder = output / config_name(run.config)
        curves = {"pre-training": pretrain.eval_losses, "LoRA fine-tuning": run.history.eval_losses}
        suite.save_figure(suite.plot_loss_curves(curves), folder, "loss_curves")
        delta = run.layer.delta_weight().detach()
        lc.compare_delta(delta, shift)
        suite.save_figure(
            suite.plot_delta_heatmap(delta, true_delta=shift, corner=5), folder, "delta_heatmap"
        )
        if bool(torch.isfinite(delta).all()):
            top = min(20, p["d_in"], p["d_out"])
            suite.save_figure(suite.plot_singular_values({"ΔΘ": delta}, top=top), folder, "singular_values")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep_routes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three routes")
    parser.add_argument("--output", help="folder for sweep_routes.md/.json (default reports/benchmarks)")
    args = parser.parse_args(argv)
    output = Path(args.output or ROOT / "reports" / "benchmarks" / ("quick" if args.quick else ""))
    fixed = dict(QUICK) if args.quick else {}

    # A cache of our own, inherited by every kernel and Dask worker started from here.
    cache = tempfile.TemporaryDirectory(prefix="lora_core-bench-cache-")
    os.environ["LORA_CORE_CACHE"] = cache.name
    from lora_core.suite.cluster import dask_executor
    from lora_core.suite.sweep import run_sweep

    fill_cache(fixed)
    samples: dict[str, list[float]] = {"jobs1": [], "dask": [], "inline": []}
    per_config = []
    start = time.perf_counter()
    with dask_executor("local:2") as executor:
        cluster_start = time.perf_counter() - start
        for i in range(args.rounds):
            order = list(samples)[i % 3 :] + list(samples)[: i % 3]
            for route in order:
                with tempfile.TemporaryDirectory(prefix=f"lora_core-bench-{route}-") as folder:
                    t = time.perf_counter()
                    if route == "inline":
                        inline(fixed, Path(folder))
                    else:
                        kwargs = {"executor": executor} if route == "dask" else {}
                        result = run_sweep(NOTEBOOK, GRID, fixed, folder, progress=False, **kwargs)
                        if not result.ok:
                            print(f"{route}: {len(result.failed)} configs failed", file=sys.stderr)
                            return 1
                    samples[route].append(time.perf_counter() - t)
                    if route == "jobs1":
                        per_config += _where_time_goes(Path(folder), result.summary)
                print(f"round {i + 1}: {route} {samples[route][-1]:.1f} s", flush=True)

    ratios = {
        "dask / jobs1": [d / j for d, j in zip(samples["dask"], samples["jobs1"])],
        "jobs1 / inline": [j / m for j, m in zip(samples["jobs1"], samples["inline"])],
    }
    text = _markdown(samples, ratios, per_config, cluster_start, args)
    output.mkdir(parents=True, exist_ok=True)
    (output / "sweep_routes.md").write_text(text)
    record = {"samples": samples, "ratios": ratios, "per_config": per_config, "cluster_start": cluster_start}
    (output / "sweep_routes.json").write_text(json.dumps(record, indent=1))
    print(text)
    return 0


def _where_time_goes(folder: Path, summary) -> list[dict]:
    """Per config: the runner's seconds, split by the executed notebook's papermill times."""
    import nbformat

    rows = []
    for path, seconds in zip(summary["path"], summary["seconds"]):
        metrics = json.loads((folder / path / "metrics.json").read_text())["metrics"]
        notebook = nbformat.read(folder / path / NOTEBOOK.name, as_version=4)
        run = notebook.metadata.papermill
        cells = [c.metadata.papermill for c in notebook.cells if c.cell_type == "code"]
        first, last = _time(cells[0]["start_time"]), _time(cells[-1]["end_time"])
        rows.append(
            {
                "config": path,
                "runner": seconds,
                "kernel start": first - _time(run["start_time"]),
                "cells": last - first,
                "lora training": metrics["lora_seconds"],
                "kernel stop": _time(run["end_time"]) - last,
                "outside papermill": seconds - run["duration"],
            }
        )
    return rows


def _time(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def _markdown(samples, ratios, per_config, cluster_start, args) -> str:
    med = statistics.median
    lines = [
        f"# Sweep routes: notebook 01, 9 configs{' (--quick)' if args.quick else ''}",
        "",
        f"{args.rounds} round(s); LocalCluster start (not in the dask time): {cluster_start:.1f} s",
        "",
        "| route | median wall time (s) | per config (s) |",
        "|---|---|---|",
        *(f"| {route} | {med(times):.1f} | {med(times) / CONFIGS:.1f} |" for route, times in samples.items()),
        "",
        "| ratio | median (min–max) | goal |",
        "|---|---|---|",
    ]
    for name, values in ratios.items():
        met = "met" if med(values) <= GOALS[name] else "not met"
        lines.append(
            f"| {name} | {med(values):.2f} ({min(values):.2f}–{max(values):.2f}) | ≤ {GOALS[name]}: {met} |"
        )
    columns = ["runner", "kernel start", "cells", "lora training", "kernel stop", "outside papermill"]
    means = {c: statistics.mean(row[c] for row in per_config) for c in columns}
    lines += [
        "",
        "Where a jobs1 config's time goes (mean seconds per config, from the executed notebook's",
        "papermill times): the runner's wall time; the kernel's start (until the first cell",
        "starts); the cells, of which the LoRA training; the kernel's stop and papermill's last",
        "save; outside papermill (parameter checks, the HTML rendering, reading metrics.json).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        "| " + " | ".join(f"{means[c]:.2f}" for c in columns) + " |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
