"""The seed band: how far one notebook's numbers move from seed to seed.

The blog ran its experiment once, with no seed, so its published numbers are one draw.
Whether a run "matches" them can only be judged against the spread of many draws. A
sweep over seeds alone (``lora-sweep NOTEBOOK --grid seed=0,1,...``) gives those draws;
``summarise_seed_band`` reduces them to, per logged epoch of every loss curve
(``*_epoch_N`` metrics) and for the headline numbers, the min, median and max over the
seeds, with the seeds and the parameters they share. ``lora-reports seed-band SWEEP_DIR
--out FILE`` writes that file; notebook 01 reads the committed one
(``reports/baselines/01_rank1_recovery.seeds.json``) and draws it under its loss curves.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..tasks import BLOG_LORA_LOSSES, BLOG_MERGED_LOSS, BLOG_PRETRAIN_LOSSES, BLOG_SHIFTED_BASE_LOSS
from .notebook import resolve_folder
from .regression import UNRECORDED_PARAMETERS
from .reports import METRICS_FILE, SWEEP_FILE, read_json, read_metrics, write_json_atomic

# The numbers of notebook 01 the blog also published, or that say whether LoRA worked.
HEADLINE = ("pretrain_final_loss", "shifted_base_loss", "lora_final_loss", "merged_loss", "delta_mean")
_EPOCH_METRIC = re.compile(r"^(?P<curve>.+)_epoch_(?P<epoch>\d+)$")


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    """min, median and max of the finite values (None when there is none), and how many."""
    finite = [float(v) for v in values if isinstance(v, numbers.Real) and math.isfinite(v)]
    if not finite:
        return {"min": None, "median": None, "max": None, "runs": 0}
    return {"min": min(finite), "median": float(np.median(finite)), "max": max(finite), "runs": len(finite)}


def _shared(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that decide the numbers: not the seed, nor where or how fast a run went."""
    return {
        name: value
        for name, value in parameters.items()
        if name != "seed" and not any(fnmatch.fnmatch(name, p) for p in UNRECORDED_PARAMETERS)
    }


def summarise_seed_band(
    sweep_dir: str | os.PathLike, metrics: Sequence[str] = HEADLINE, finished_only: bool = False
) -> dict[str, Any]:
    """The band of a sweep over seeds: see the module docstring for what it holds.

    Raises ``ValueError`` when the folder is not a sweep, a config has not finished (its
    seed would silently narrow the band; ``finished_only`` takes the finished ones and
    lists the others under "unfinished"), fewer than two seeds finished, two runs share a
    seed, or the runs differ in anything but the seed.
    """
    folder = Path(sweep_dir)
    if not (folder / SWEEP_FILE).is_file():
        raise ValueError(
            f"sweep_dir={str(sweep_dir)!r} is not allowed: expected a lora-sweep folder holding {SWEEP_FILE}"
        )
    configs = read_json(folder / SWEEP_FILE).get("configs") or []
    unfinished = [c["path"] for c in configs if not (folder / c["path"] / METRICS_FILE).is_file()]
    if unfinished and not finished_only:
        raise ValueError(
            f"sweep_dir={str(sweep_dir)!r} is not allowed: {len(unfinished)} config(s) have no {METRICS_FILE} "
            f"({', '.join(unfinished)}); finish the sweep (run it again: it resumes) or pass --finished-only"
        )
    runs = [read_metrics(folder / c["path"]) for c in configs if c["path"] not in unfinished]
    if len(runs) < 2:
        raise ValueError(
            f"sweep_dir={str(sweep_dir)!r} is not allowed: a band needs at least two seeds, it holds {len(runs)}"
        )
    seeds = [run["parameters"].get("seed") for run in runs]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"sweep_dir={str(sweep_dir)!r} is not allowed: its runs repeat seeds {seeds}")
    shared = _shared(runs[0]["parameters"])
    for run, seed in zip(runs[1:], seeds[1:]):
        differ = sorted(
            k
            for k in {*shared, *_shared(run["parameters"])}
            if _shared(run["parameters"]).get(k) != shared.get(k)
        )
        if differ:
            raise ValueError(
                f"sweep_dir={str(sweep_dir)!r} is not allowed: the run of seed {seed} differs from the "
                f"run of seed {seeds[0]} in {', '.join(differ)}; a band varies the seed alone"
            )
    order = np.argsort(seeds)
    runs, seeds = [runs[i] for i in order], [seeds[i] for i in order]

    curves: dict[str, dict[int, list]] = {}
    for run in runs:
        for name in run["metrics"]:
            match = _EPOCH_METRIC.match(name)
            if match:
                curves.setdefault(match["curve"], {}).setdefault(int(match["epoch"]), [])
    for curve, epochs in curves.items():
        for epoch, values in epochs.items():
            values.extend(run["metrics"].get(f"{curve}_epoch_{epoch}") for run in runs)
    band_curves = {}
    for curve, epochs in sorted(curves.items()):
        rows = [_spread(epochs[epoch]) for epoch in sorted(epochs)]
        band_curves[curve] = {"epoch": sorted(epochs), **{k: [row[k] for row in rows] for k in rows[0]}}
    band_metrics = {}
    for name in metrics:
        values = [run["metrics"].get(name) for run in runs]
        band_metrics[name] = {**_spread(values), "by_seed": {str(s): v for s, v in zip(seeds, values)}}
    return {
        "notebook": runs[0].get("notebook"),
        "about": "min, median and max over one run per seed; made by lora-reports seed-band",
        "seeds": seeds,
        "unfinished": unfinished,
        "parameters": shared,
        "curves": band_curves,
        "metrics": band_metrics,
    }


def write_seed_band(
    sweep_dir: str | os.PathLike, out: str | os.PathLike, finished_only: bool = False
) -> Path:
    """Summarise the sweep in ``sweep_dir`` into the JSON file ``out``; returns its path."""
    band = summarise_seed_band(sweep_dir, finished_only=finished_only)
    return write_json_atomic(Path(out), band)


def load_seed_band(path: str | os.PathLike, parameters: Mapping[str, Any] | None = None) -> dict | None:
    """The band stored at ``path`` (relative: from the repository root), or None.

    None when there is no such file, or when ``parameters`` (a run's recorded ones) differ
    from the band's in anything but the seed: a band of another setup says nothing here.
    """
    file = resolve_folder(str(path))
    if not file.is_file():
        # Said, not only returned: a notebook copied out of the repository (or shipped to a
        # cluster worker without its checkout) would otherwise just lose its band.
        warnings.warn(f"no seed band at {file}: figures and tables go without one", stacklevel=2)
        return None
    band = read_json(file)
    if parameters is not None and _shared(parameters) != band.get("parameters"):
        return None
    return band


def band_frame(band: Mapping[str, Any], curve: str) -> pd.DataFrame:
    """One curve of a band as a frame indexed by epoch, columns min, median and max."""
    data = band["curves"][curve]
    frame = pd.DataFrame({k: data[k] for k in ("min", "median", "max")}, index=data["epoch"], dtype=float)
    return frame.rename_axis("epoch")


def published_in_band(band: Mapping[str, Any]) -> pd.DataFrame:
    """Each number the blog published beside the band of notebook 01, and whether it lies inside.

    Rows: the pre-training and LoRA losses at each logged epoch, the base model's loss on
    the shifted task and the merged model's loss. Columns: published, min, median, max,
    inside (min <= published <= max).
    """
    rows = []
    for curve, label, published in (
        ("pretrain_loss", "pre-training loss", BLOG_PRETRAIN_LOSSES),
        ("lora_loss", "LoRA loss", BLOG_LORA_LOSSES),
    ):
        frame = band_frame(band, curve)
        for epoch, value in published.items():
            if epoch in frame.index:
                rows.append((f"{label}, epoch {epoch}", value, *frame.loc[epoch]))
    for name, label, value in (
        ("shifted_base_loss", "base model on the shifted task", BLOG_SHIFTED_BASE_LOSS),
        ("merged_loss", "merged model", BLOG_MERGED_LOSS),
    ):
        spread = band["metrics"][name]
        rows.append((label, value, spread["min"], spread["median"], spread["max"]))
    table = pd.DataFrame(rows, columns=["", "published", "min", "median", "max"]).set_index("")
    table["inside"] = (table["min"] <= table["published"]) & (table["published"] <= table["max"])
    return table
