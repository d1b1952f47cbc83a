"""Figures: right panels and colour bars, honest scales, diverged configs marked."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from lora_core.suite import plotting


def colourbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def rank_one(d_in=12, d_out=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(d_in, 1, generator=generator) @ torch.randn(1, d_out, generator=generator)


# ---- loss curves --------------------------------------------------------------------------


def test_loss_curves_overlay_reference_markers_distinct_from_lines():
    epochs = np.arange(1, 51)
    curves = {
        "pre-training": pd.Series(np.exp(-epochs / 10), index=epochs),
        "LoRA": torch.exp(-torch.arange(1, 51) / 8.0),  # a bare tensor counts epochs from 1
    }
    fig = plotting.plot_loss_curves(curves, reference={"pre-training": {10: 0.4, 20: 0.15}})
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    reference = lines["pre-training (published)"]
    assert reference.get_linestyle() == "None" and reference.get_marker() == "o"
    assert list(reference.get_xdata()) == [10, 20]
    assert reference.get_markeredgecolor() == lines["pre-training"].get_color()
    assert lines["LoRA"].get_xdata()[0] == 1
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()


def test_loss_curves_join_logged_epochs_across_unevaluated_nan():
    logged = pd.Series([np.nan] * 9 + [5.0] + [np.nan] * 9 + [1.0], index=range(1, 21))
    (ax,) = plotting.plot_loss_curves({"eval": logged}, logy=False).axes
    assert list(ax.get_lines()[0].get_xdata()) == [10, 20]
    assert "log" not in ax.get_ylabel()


# ---- ΔΘ -----------------------------------------------------------------------------------


def test_delta_heatmap_has_full_corner_and_error_panels_with_two_colourbars():
    truth = rank_one()
    delta = truth + 0.01 * torch.randn(12, 10)
    fig = plotting.plot_delta_heatmap(delta, true_delta=truth, corner=3)
    assert len(panels(fig)) == 3 and len(colourbars(fig)) == 2
    corner = panels(fig)[1]
    assert len(corner.texts) == 9
    assert corner.texts[0].get_text() == f"{delta[0, 0].item():.4f}"


def test_delta_heatmap_scales_are_symmetric_about_zero():
    truth = torch.ones(8, 6)
    delta = truth + torch.linspace(-0.001, 0.003, 48).reshape(8, 6)  # lopsided error
    full, _, error = panels(plotting.plot_delta_heatmap(delta, truth, corner=2))
    low, high = error.images[0].get_clim()
    assert low == pytest.approx(-high) and high == pytest.approx(0.003, rel=1e-3)
    low, high = full.images[0].get_clim()
    assert low == pytest.approx(-high)
    assert "RdBu" in error.images[0].get_cmap().name


def test_delta_heatmap_without_truth_has_two_panels_and_one_colourbar():
    fig = plotting.plot_delta_heatmap(np.zeros((4, 3)))  # B at its zero init still draws
    assert len(panels(fig)) == 2 and len(colourbars(fig)) == 1
    assert len(panels(fig)[1].texts) == 9  # the default 5 x 5 corner shrinks to the matrix


def test_delta_heatmap_refuses_mismatched_truth_and_an_empty_corner():
    with pytest.raises(ValueError, match="true_delta"):
        plotting.plot_delta_heatmap(np.ones((4, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="corner=0 is not allowed"):
        plotting.plot_delta_heatmap(np.ones((4, 3)), corner=0)


def test_singular_values_of_a_rank_one_delta_drop_after_the_first():
    fig = plotting.plot_singular_values({"r=1": rank_one(), "bf16": rank_one().bfloat16()}, top=5)
    (ax,) = fig.axes
    values = ax.get_lines()[0].get_ydata()
    assert len(values) == 5
    assert values[1] < 1e-5 * values[0]
    assert "log scale" in ax.get_ylabel()


def test_singular_values_mark_a_diverged_delta_instead_of_failing():
    diverged = rank_one()
    diverged[0, 0] = float("nan")
    fig = plotting.plot_singular_values({"r=1": rank_one(), "r=4": diverged})
    (ax,) = fig.axes
    healthy, marked = ax.get_lines()
    assert len(healthy.get_ydata()) == 10 and len(marked.get_ydata()) == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["r=1", "r=4: not finite (diverged)"]


def test_delta_grid_shares_one_symmetric_colourbar_or_gives_each_its_own():
    deltas = {f"r={r}": torch.randn(6, r) @ torch.randn(r, 5) for r in (1, 2, 4, 8, 16)}
    shared = plotting.plot_delta_grid(deltas, ncols=3)
    assert len(panels(shared)) == 5 and len(colourbars(shared)) == 1  # the 6th cell removed
    limits = {ax.images[0].get_clim() for ax in panels(shared)}
    assert len(limits) == 1
    low, high = limits.pop()
    assert low == -high
    separate = plotting.plot_delta_grid(deltas, shared_scale=False)
    assert len(panels(separate)) == 5 and len(colourbars(separate)) == 5


def test_delta_grid_names_what_its_panels_show_and_centres_where_asked():
    errors = {f"r={r}": torch.randn(6, 5) * 1e-3 for r in (1, 2)}
    (bar,) = colourbars(plotting.plot_delta_grid(errors, label="ΔΘ − S"))
    assert bar.get_ylabel().startswith("ΔΘ − S (one scale")
    # All entries near 1: centred on 1 each panel's scale spans its own small deviations.
    near_one = {name: 1 + e for name, e in errors.items()}
    fig = plotting.plot_delta_grid(near_one, shared_scale=False, center=1.0)
    for ax, e in zip(panels(fig), errors.values()):
        low, high = ax.images[0].get_clim()
        assert low + high == pytest.approx(2.0) and high - 1 == pytest.approx(e.abs().max().item(), rel=1e-3)


@pytest.mark.parametrize("top", [5, 20, 60])
def test_singular_value_plot_labels_k_1(top):
    fig = plotting.plot_singular_values({"ΔΘ": torch.randn(70, 65)}, top=top)
    ticks = list(fig.axes[0].get_xticks())
    assert ticks[0] == 1 and ticks[-1] <= top and len(ticks) <= 11


def test_sweep_titles_use_words_not_column_names(sweep):
    fig = plotting.plot_metric_heatmap(sweep, index="r", columns="lora_alpha", values="final_loss")
    assert panels(fig)[0].get_title() == "final loss over rank r × lora_alpha (α)"


# ---- sweeps -------------------------------------------------------------------------------


@pytest.fixture()
def sweep():
    rows = [
        {"r": r, "lora_alpha": a, "final_loss": 10.0 ** -(r + a), "diverged": False}
        for r in (1, 2, 4)
        for a in (1, 8)
    ]
    rows[1].update(final_loss=float("nan"), diverged=True)  # r=1, alpha=8
    rows[4].update(final_loss=1e30, diverged=True)  # r=4, alpha=1: a number, but diverged
    return pd.DataFrame(rows[:-1])  # r=4, alpha=8 never ran


def test_metric_heatmap_marks_diverged_configs_instead_of_dropping_them(sweep):
    fig = plotting.plot_metric_heatmap(sweep, "r", "lora_alpha", "final_loss", diverged="diverged")
    assert len(panels(fig)) == 1 and len(colourbars(fig)) == 1
    (ax,) = panels(fig)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("×") == 2 and texts.count("no run") == 1
    assert len([p for p in ax.patches if p.get_hatch()]) == 2
    assert "diverged" in fig.legends[0].get_texts()[0].get_text()
    # The diverged 1e30 does not stretch the colour scale.
    assert ax.images[0].norm.vmax < 1
    assert "log scale" in colourbars(fig)[0].get_ylabel()


def test_metric_heatmap_marks_nan_even_without_a_diverged_column(sweep):
    (ax,) = panels(plotting.plot_metric_heatmap(sweep, "r", "lora_alpha", "final_loss"))
    assert [t.get_text() for t in ax.texts].count("×") == 1


def test_metric_heatmap_refuses_duplicates_and_unknown_columns(sweep):
    with pytest.raises(ValueError, match="aggregate them first"):
        plotting.plot_metric_heatmap(pd.concat([sweep, sweep]), "r", "lora_alpha", "final_loss")
    with pytest.raises(ValueError, match="values='loss' is not allowed"):
        plotting.plot_metric_heatmap(sweep, "r", "lora_alpha", "loss")


def test_metric_vs_draws_one_line_per_hue_a_dashed_reference_and_marks_diverged(sweep):
    fig = plotting.plot_metric_vs(
        sweep,
        "r",
        "final_loss",
        hue="lora_alpha",
        reference={1: 1e-2, 4: 1e-5},
        logy=True,
        reference_label="best rank-r error",
    )
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"lora_alpha = 1", "lora_alpha = 8", "best rank-r error"} <= set(lines)
    assert lines["best rank-r error"].get_linestyle() == "--"
    assert "diverged / no number" in lines
    assert "log scale" in ax.get_ylabel() and "log" not in ax.get_xlabel()


def test_figures_are_not_left_open_in_pyplot(sweep):
    # Jupyter's inline backend shows every figure pyplot still holds at the end of a
    # cell: a kept figure would appear twice, and a sweep would pile them up.
    import matplotlib.pyplot as plt

    plt.close("all")
    fig = plotting.plot_metric_heatmap(sweep, "r", "lora_alpha", "final_loss")
    plotting.plot_delta_heatmap(rank_one())
    assert plt.get_fignums() == []
    fig.canvas.draw()  # released, yet still draws


# ---- what every figure shares -------------------------------------------------------------


def test_every_figure_shows_its_subtitle_under_its_title(sweep):
    note = "n = 512, d_in × d_out = 65 × 64, 60 epochs"
    axes_titles = [
        plotting.plot_loss_curves({"a": [3.0, 2.0, 1.0]}, title="Loss", subtitle=note),
        plotting.plot_singular_values({"ΔΘ": rank_one()}, subtitle=note),
        plotting.plot_metric_heatmap(sweep, "r", "lora_alpha", "final_loss", subtitle=note),
        plotting.plot_metric_vs(sweep, "r", "final_loss", subtitle=note),
    ]
    for fig in axes_titles:
        title, subtitle = panels(fig)[0].get_title().split("\n")
        assert title and subtitle == note
    suptitled = [
        plotting.plot_delta_heatmap(rank_one(), subtitle=note),
        plotting.plot_delta_grid({"a": rank_one(), "b": rank_one(seed=1)}, subtitle=note),
    ]
    for fig in suptitled:
        assert fig.get_suptitle().split("\n")[1] == note
    # At the full size the note is "": the title is left as it was.
    assert (
        plotting.plot_loss_curves({"a": [3.0, 2.0]}, title="Loss", subtitle="").axes[0].get_title() == "Loss"
    )


def test_loss_curves_shade_each_band_in_its_curve_colour():
    epochs = [10, 20, 30]
    curves = {
        "pre-training": pd.Series([4.0, 2.0, 1.0], index=epochs),
        "LoRA": pd.Series([8.0, 3.0, 1.5], index=epochs),
    }
    band = pd.DataFrame({"min": [3.0, 1.5, 0.5], "max": [5.0, 2.5, 1.2]}, index=epochs)
    fig = plotting.plot_loss_curves(curves, bands={"LoRA": band}, band_label="seeds 0-9")
    (ax,) = fig.axes
    (shaded,) = ax.collections
    assert shaded.get_label() == "LoRA: seeds 0-9"
    lora = next(line for line in ax.get_lines() if line.get_label() == "LoRA")
    assert np.allclose(shaded.get_facecolor()[0][:3], matplotlib.colors.to_rgb(lora.get_color()))
    vertices = shaded.get_paths()[0].vertices
    assert vertices[:, 0].min() == 10 and vertices[:, 0].max() == 30
    assert vertices[:, 1].min() == 0.5 and vertices[:, 1].max() == 5.0
    assert "LoRA: seeds 0-9" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_a_band_without_min_and_max_is_refused():
    with pytest.raises(ValueError, match=r"bands\['a'\] is not allowed: expected a non-empty DataFrame"):
        plotting.plot_loss_curves({"a": [2.0, 1.0]}, bands={"a": pd.DataFrame({"low": [1.0], "high": [2.0]})})
