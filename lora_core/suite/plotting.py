"""Figures for the notebooks: loss curves, ΔΘ heatmaps, singular values, sweep results.

Every function returns a matplotlib ``Figure`` and never calls ``show()``: the notebooks
hand it to ``reports.show_figure``, which writes it to disk and shows the saved file (a
cell's last expression, or ``display(...)`` in a loop); ``reports.save_figure`` only
writes. Figures are released from pyplot as soon as they are made (see ``_new_figure``),
so Jupyter shows each once, where the notebook asks for it, and a sweep drawing hundreds
does not keep them all open. The backend is
whatever matplotlib picks (inline in Jupyter); nothing here chooses one.

The figures are teaching material, so their scales are honest: signed matrices (ΔΘ and
its error) use a diverging colormap centred on zero with symmetric limits, a log scale is
named in its axis or colour-bar label, and diverged runs are marked rather than dropped.
Matrices and curves may be torch tensors (any device or dtype) or numpy arrays.

Every function takes a ``subtitle``, a second line under its title: the notebooks pass
``params.size_note``, so a small run's figures say their size and are never mistaken for
the full-scale ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator

from ..validation import check_choice, check_int

DIVERGING = "RdBu_r"  # red > 0 > blue, white at zero: the sign of an update reads at a glance
SEQUENTIAL = "viridis"  # perceptually uniform for losses and errors
HATCH = dict(facecolor="0.85", edgecolor="0.45", hatch="///", linewidth=0)
# Words for the metric and parameter names that figure titles show; others lose their underscores.
LABELS = {
    "r": "rank r",
    "lora_alpha": "lora_alpha (α)",
    "scaling": "scaling rule",
    "final_loss": "final loss",
    "lora_final_loss": "LoRA final loss",
    "best_loss": "best loss",
    "delta_relative_error": "relative error of ΔΘ",
    "delta_cosine": "cosine of ΔΘ with the shift",
}


def metric_label(name: str) -> str:
    """The words a figure title uses for a metric or parameter name."""
    return LABELS.get(name, str(name).replace("_", " "))


# ---------------------------------------------------------------------------------------
# Inputs


def _array(name: str, x: Any, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; float64 also covers bfloat16, which numpy lacks
        x = x.detach().cpu().double().numpy()
    array = np.asarray(x, dtype=float)
    if array.ndim != ndim or array.size == 0:
        raise ValueError(f"{name} of shape {array.shape} is not allowed: expected a non-empty {ndim}-D array")
    return array


def _series(name: str, curve: Any) -> pd.Series:
    """A curve as a Series indexed by epoch; a bare array counts epochs from 1."""
    if isinstance(curve, pd.Series):
        series = curve.astype(float)
    elif isinstance(curve, Mapping):
        series = pd.Series(curve, dtype=float)
    else:
        values = _array(name, curve, 1)
        series = pd.Series(values, index=np.arange(1, len(values) + 1))
    # NaN marks epochs that were not evaluated; dropping them lets the line join the
    # logged epochs instead of leaving isolated, invisible points.
    return series[np.isfinite(series.to_numpy())].sort_index()


def _new_figure(**kwargs: Any) -> Figure:
    """A figure that pyplot does not keep.

    Made through pyplot so that the session's backend is set up (in Jupyter, that is what
    lets a Figure display as a cell's value), then closed in pyplot's registry, so the
    inline backend does not show it again at the end of the cell. Closing only forgets
    the figure: it still draws, displays and saves.
    """
    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig


def _mapping(name: str, value: Any) -> Mapping:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{name}={value!r} is not allowed: expected a non-empty dict label -> data")
    return value


def _symmetric_limit(*arrays: np.ndarray) -> float:
    """The largest finite |value|, so that zero sits in the middle of the colour bar."""
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays]
    limit = max((float(f.max()) for f in finite if f.size), default=0.0)
    return limit if limit > 0 else 1.0  # an all-zero ΔΘ (B at its zero init) still draws


def _titled(title: str, subtitle: str) -> str:
    return f"{title}\n{subtitle}" if subtitle else title


def _log_label(label: str, log: bool) -> str:
    return f"{label} (log scale)" if log else label


def _text_colour(rgba: tuple) -> str:
    """Black or white, whichever reads on a cell of this colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


# ---------------------------------------------------------------------------------------
# Training


def plot_loss_curves(
    curves: Mapping[str, Any],
    reference: Mapping[str, Mapping[int, float]] | None = None,
    logy: bool = True,
    title: str | None = None,
    ylabel: str = "loss (MSE)",
    subtitle: str = "",
    bands: Mapping[str, pd.DataFrame] | None = None,
    band_label: str = "band",
) -> Figure:
    """Loss against epoch, one line per curve, published numbers overlaid as markers.

    ``curves``: label -> Series indexed by epoch (``History.eval_losses``), a dict epoch ->
    loss, or a 1-D array. ``reference``: label -> {epoch: loss}, e.g. the blog's table;
    a reference whose label matches a curve takes that curve's colour. ``bands``: label ->
    a frame indexed by epoch with columns ``min`` and ``max`` (the spread over seeds, say),
    shaded in the colour of the curve with the same label; ``band_label`` names it.
    """
    _mapping("curves", curves)
    fig = _new_figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = {}
    for i, (label, curve) in enumerate(curves.items()):
        series = _series(f"curves[{label!r}]", curve)
        marker = "." if len(series) <= 30 else None  # show where few logged epochs lie
        (line,) = ax.plot(series.index, series.to_numpy(), marker=marker, color=f"C{i}", label=str(label))
        colours[label] = line.get_color()
    for j, (label, band) in enumerate((bands or {}).items()):
        if not isinstance(band, pd.DataFrame) or not {"min", "max"} <= set(band.columns) or band.empty:
            raise ValueError(
                f"bands[{label!r}] is not allowed: expected a non-empty DataFrame with columns min and max"
            )
        band = band.sort_index()
        ax.fill_between(
            band.index.to_numpy(dtype=float),
            band["min"].to_numpy(dtype=float),
            band["max"].to_numpy(dtype=float),
            color=colours.get(label, f"C{len(curves) + j}"),
            alpha=0.2,
            linewidth=0,
            label=f"{label}: {band_label}",
        )
    for j, (label, points) in enumerate((reference or {}).items()):
        series = _series(f"reference[{label!r}]", points)
        colour = colours.get(label, f"C{len(curves) + j}")
        ax.plot(
            series.index,
            series.to_numpy(),
            linestyle="none",
            marker="o",
            markersize=8,
            markerfacecolor="none",
            markeredgecolor=colour,
            markeredgewidth=1.5,
            label=f"{label} (published)",
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(_log_label(ylabel, logy))
    ax.set_title(_titled(title or "Loss during training", subtitle))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


# ---------------------------------------------------------------------------------------
# ΔΘ matrices


def plot_delta_heatmap(
    delta: Any, true_delta: Any = None, corner: int = 5, title: str | None = None, subtitle: str = ""
) -> Figure:
    """ΔΘ as a heatmap, its top-left corner with values, and its error when the truth is known.

    ``delta`` has shape (d_in, d_out). With ``true_delta`` a third panel shows ΔΘ − true
    on its own symmetric scale, so errors far smaller than ΔΘ stay visible.
    """
    d = _array("delta", delta, 2)
    # A corner larger than the matrix shows the whole matrix: small test sizes keep the default.
    corner = min(check_int("corner", corner, 1), *d.shape)
    truth = None if true_delta is None else _array("true_delta", true_delta, 2)
    if truth is not None and truth.shape != d.shape:
        raise ValueError(
            f"true_delta of shape {truth.shape} is not allowed: expected delta's shape {d.shape}"
        )
    ratios = [1.0, 0.8] + ([1.0] if truth is not None else [])
    fig = _new_figure(figsize=(5.2 * len(ratios), 4.6), layout="constrained")
    axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    norm = Normalize(-_symmetric_limit(d), _symmetric_limit(d))

    ax = axes[0]
    image = ax.imshow(d, cmap=DIVERGING, norm=norm, aspect="auto")
    ax.add_patch(Rectangle((-0.5, -0.5), corner, corner, fill=False, edgecolor="black", linewidth=1.2))
    ax.set_title(f"ΔΘ, all {d.shape[0]} × {d.shape[1]} entries")
    ax.set_xlabel("output index j (d_out)")
    ax.set_ylabel("input index i (d_in)")
    fig.colorbar(image, ax=ax, label="ΔΘ[i, j] (scale symmetric about 0)")

    ax = axes[1]
    block = d[:corner, :corner]
    ax.imshow(block, cmap=DIVERGING, norm=norm)  # same scale as the full map: a true zoom
    for (i, j), value in np.ndenumerate(block):
        colour = _text_colour(image.cmap(norm(value)))
        ax.text(j, i, f"{value:.4f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_title(f"ΔΘ[:{corner}, :{corner}] (values)")
    ax.set_xticks(range(corner))
    ax.set_yticks(range(corner))
    ax.set_xlabel("j")
    ax.set_ylabel("i")

    if truth is not None:
        ax = axes[2]
        error = d - truth
        limit = _symmetric_limit(error)
        image = ax.imshow(error, cmap=DIVERGING, vmin=-limit, vmax=limit, aspect="auto")
        norm_truth = float(np.linalg.norm(truth))
        relative = f", relative error {np.linalg.norm(error) / norm_truth:.2g}" if norm_truth else ""
        ax.set_title(f"ΔΘ − true shift: max |error| {limit:.2g}{relative}", fontsize=10)
        ax.set_xlabel("output index j (d_out)")
        ax.set_ylabel("input index i (d_in)")
        fig.colorbar(image, ax=ax, label="ΔΘ − true (own scale, symmetric about 0)")

    fig.suptitle(_titled(title or "The update LoRA learned, ΔΘ", subtitle))
    return fig


def plot_singular_values(
    deltas: Mapping[str, Any],
    top: int | None = None,
    logy: bool = True,
    title: str | None = None,
    subtitle: str = "",
) -> Figure:
    """Singular values of each ΔΘ, largest first: a rank-k update shows k values, then a cliff.

    A ΔΘ with non-finite entries (a diverged run) has no singular values; it keeps its
    colour and legend entry, marked "not finite", so the figure still shows every run.
    """
    _mapping("deltas", deltas)
    if top is not None:
        top = check_int("top", top, 1)
    fig = _new_figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    shown: list[int] = []
    for label, delta in deltas.items():
        matrix = _array(f"deltas[{label!r}]", delta, 2)
        if not np.isfinite(matrix).all():
            ax.plot([], [], marker="x", linestyle="none", label=f"{label}: not finite (diverged)")
            continue
        values = np.linalg.svd(matrix, compute_uv=False)[:top]
        k = np.arange(1, len(values) + 1)
        shown.append(len(values))
        ax.plot(k, values, marker="o", markersize=3 if len(values) > 30 else 5, label=str(label))
    if logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(_k_ticks(max(shown, default=1))))
    ax.set_xlabel("index k (largest first)")
    ax.set_ylabel(_log_label("singular value σ_k", logy))
    ax.set_title(_titled(title or "Singular values of ΔΘ" + (f" (top {top})" if top else ""), subtitle))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def _k_ticks(n: int) -> list[int]:
    """Integer ticks for k = 1..n that always include k = 1, the value a rank-1 update is about."""
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if n / s <= 10)
    return sorted({1, *range(step, n + 1, step)})


def plot_delta_grid(
    deltas: Mapping[str, Any],
    ncols: int | None = None,
    shared_scale: bool = True,
    title: str | None = None,
    label: str = "ΔΘ",
    center: float = 0.0,
    subtitle: str = "",
) -> Figure:
    """One heatmap per entry, e.g. each config's ΔΘ, or its error ΔΘ − S.

    With ``shared_scale`` one colour bar serves every panel, so magnitudes compare across
    panels; without it each panel gets its own, so each one's structure shows. ``label``
    says what the panels hold (the colour bar's text). The scale is symmetric about
    ``center``: 0 for updates and errors; the true value (1 for the all-ones shift) shows
    how panels that are all close to it differ.
    """
    _mapping("deltas", deltas)
    matrices = {label: _array(f"deltas[{label!r}]", d, 2) for label, d in deltas.items()}
    ncols = min(len(matrices), 4) if ncols is None else check_int("ncols", ncols, 1)
    nrows = math.ceil(len(matrices) / ncols)
    fig = _new_figure(figsize=(3.4 * ncols + 1.2, 3.1 * nrows + 0.7), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    used = grid.flat[: len(matrices)]
    for ax in grid.flat[len(matrices) :]:
        fig.delaxes(ax)
    shared = _symmetric_limit(*(m - center for m in matrices.values()))
    for n, (ax, (name, matrix)) in enumerate(zip(used, matrices.items())):
        limit = shared if shared_scale else _symmetric_limit(matrix - center)
        image = ax.imshow(matrix, cmap=DIVERGING, vmin=center - limit, vmax=center + limit, aspect="auto")
        ax.set_title(str(name))
        if n % ncols == 0:
            ax.set_ylabel("input i")
        if n + ncols >= len(matrices):  # nothing below it
            ax.set_xlabel("output j")
        if not shared_scale:
            fig.colorbar(image, ax=ax, label=f"{label} (own scale, symmetric about {center:g})")
    if shared_scale:
        fig.colorbar(image, ax=list(used), label=f"{label} (one scale for all, symmetric about {center:g})")
    fig.suptitle(_titled(title or "Recovered ΔΘ", subtitle))
    return fig


# ---------------------------------------------------------------------------------------
# Sweeps


def plot_metric_heatmap(
    df: pd.DataFrame,
    index: str,
    columns: str,
    values: str,
    log: bool = True,
    diverged: str | None = None,
    fmt: str = ".3g",
    title: str | None = None,
    subtitle: str = "",
) -> Figure:
    """A metric over a two-parameter grid (e.g. final loss over rank × lora_alpha).

    One row of ``df`` per config. A config whose ``diverged`` column is true, or whose
    value is NaN/missing, is drawn hatched with a ×, so a failed corner of the grid is
    seen, not silently left blank. Grid points with no row at all say "no run".
    """
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError(f"df={df!r} is not allowed: expected a non-empty DataFrame")
    for name, column in (("index", index), ("columns", columns), ("values", values)):
        check_choice(name, column, list(df.columns))
    if diverged is not None:
        check_choice("diverged", diverged, list(df.columns))
    if df.duplicated([index, columns]).any():
        raise ValueError(
            f"several rows share the same ({index}, {columns}); aggregate them first "
            f"(e.g. df.groupby([{index!r}, {columns!r}], as_index=False).mean())"
        )
    flags = df[diverged].eq(True) if diverged is not None else False
    cells = df.assign(_value=pd.to_numeric(df[values], errors="coerce"), _present=1.0, _diverged=flags)
    grid = cells.pivot(index=index, columns=columns, values="_value")
    present = cells.pivot(index=index, columns=columns, values="_present").notna().to_numpy()
    flagged = cells.pivot(index=index, columns=columns, values="_diverged").eq(True).to_numpy()
    numbers = grid.to_numpy(dtype=float)
    bad = present & (flagged | ~np.isfinite(numbers))
    good = present & ~bad
    if log and (numbers[good] <= 0).any():
        raise ValueError(f"log=True is not allowed: {values} has values <= 0; pass log=False")

    shown = np.ma.masked_array(numbers, mask=~good)
    norm = _heatmap_norm(numbers[good], log)
    fig = _new_figure(figsize=(1.1 * grid.shape[1] + 3.5, 0.7 * grid.shape[0] + 2.8), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps[SEQUENTIAL].with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, norm=norm, origin="lower", aspect="auto")
    for (i, j), value in np.ndenumerate(numbers):
        if good[i, j]:
            colour = _text_colour(cmap(norm(value)))
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=9, color=colour)
        elif bad[i, j]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, **HATCH))
            ax.text(j, i, "×", ha="center", va="center", fontsize=16, color="darkred")
        else:
            ax.text(j, i, "no run", ha="center", va="center", fontsize=8, color="0.5")
    ax.set_xticks(range(grid.shape[1]), labels=[f"{c:g}" if _is_number(c) else str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), labels=[f"{r:g}" if _is_number(r) else str(r) for r in grid.index])
    ax.set_xlabel(columns)
    ax.set_ylabel(index)
    default = f"{metric_label(values)} over {metric_label(index)} × {metric_label(columns)}"
    ax.set_title(_titled(title or default, subtitle))
    fig.colorbar(image, ax=ax, label=_log_label(values, log))
    if bad.any():
        handles = [Patch(**HATCH, label=f"× diverged or no number ({int(bad.sum())} configs)")]
        fig.legend(handles=handles, loc="outside lower center", frameon=False)
    return fig


def _heatmap_norm(finite: np.ndarray, log: bool) -> Normalize:
    if finite.size == 0:  # every config diverged: nothing to scale, keep a valid norm
        return LogNorm(1, 10) if log else Normalize(0, 1)
    low, high = float(finite.min()), float(finite.max())
    if low == high:  # a single value still needs a non-empty range
        low, high = (low / 2, high * 2) if log else (low - 0.5, high + 0.5)
    return LogNorm(low, high) if log else Normalize(low, high)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def plot_metric_vs(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    reference: pd.Series | Mapping[float, float] | None = None,
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
    reference_label: str = "reference",
    subtitle: str = "",
) -> Figure:
    """A metric against one parameter, one line per value of ``hue``.

    ``reference`` (x -> y) is drawn as a dashed black line, e.g. the best error any rank-r
    matrix can reach. Configs with no finite ``y`` (diverged) are marked × along the top
    edge at their x rather than dropped.
    """
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError(f"df={df!r} is not allowed: expected a non-empty DataFrame")
    check_choice("x", x, list(df.columns))
    check_choice("y", y, list(df.columns))
    if hue is not None:
        check_choice("hue", hue, list(df.columns))
    fig = _new_figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    groups = df.groupby(hue, sort=True) if hue is not None else [(None, df)]
    missing_any = False
    for i, (key, group) in enumerate(groups):
        group = group.sort_values(x)
        ys = pd.to_numeric(group[y], errors="coerce").to_numpy(dtype=float)
        xs = group[x].to_numpy()
        finite = np.isfinite(ys)
        label = y if hue is None else f"{hue} = {key}"
        ax.plot(xs[finite], ys[finite], marker="o", color=f"C{i}", label=label)
        if (~finite).any():
            missing_any = True
            # x in data units, y at the top edge of the axes: visible whatever the scale.
            ax.plot(
                xs[~finite],
                np.full((~finite).sum(), 0.97),
                linestyle="none",
                marker="x",
                markersize=9,
                color=f"C{i}",
                transform=ax.get_xaxis_transform(),
            )
    if reference is not None:
        ref = pd.Series(reference, dtype=float).sort_index()
        ax.plot(ref.index, ref.to_numpy(), linestyle="--", color="black", label=reference_label)
    if missing_any:
        ax.plot([], [], linestyle="none", marker="x", color="0.3", label="diverged / no number")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(_log_label(x, logx))
    ax.set_ylabel(_log_label(y, logy))
    ax.set_title(_titled(title or f"{metric_label(y)} against {metric_label(x)}", subtitle))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig
