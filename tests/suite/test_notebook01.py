"""Notebook 01 under papermill: small-size runs against their baseline, parameter errors,
reproducibility, and (slow) the full seed scale against the blog's published numbers.

Every run uses a cache folder of its own (``LORA_CORE_CACHE``), so the user's cached
bases are neither read nor written, and a "cold" run really trains its base. Runs go
through the package's pytest plugin (``run_notebook``, ``assert_baseline``), as a user's
own notebook tests would.
"""

import math
import re
from pathlib import Path

import nbformat
import pytest
import torch
import yaml
from conftest import bar_outputs, image_outputs, printed_text

import lora_core as lc
from lora_core.suite.execute import NotebookRunError
from lora_core.suite.pytest_plugin import assert_baseline
from lora_core.suite.reports import main as reports_main

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "01_rank1_recovery.ipynb"
BASELINES = REPO / "reports" / "baselines"
# The blog's experiment shrunk to d_in 65, d_out 64: it converges to ΔΘ ≈ 1 in seconds.
SMALL = dict(n=512, d_in=65, d_out=64, epochs=60, batch_size=64, lr=3e-2)
FIGURES = ("loss_curves.png", "delta_heatmap.png", "singular_values.png")


@pytest.fixture(scope="module")
def small_run(fresh_cache, run_notebook):
    return run_notebook(NOTEBOOK, render_html=True, **SMALL)


def without_timings(metrics):
    return {name: value for name, value in metrics.items() if not name.endswith("_seconds")}


def validation_cell_index():
    """The cell right after the parameters cell, counted in the notebook as written."""
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", [])]
    return tagged[0] + 1


# ---------------------------------------------------------------------------------------
# Small size: seconds


def test_small_run_passes_the_small_baseline(small_run):
    assert_baseline(small_run, BASELINES / "01_rank1_recovery.small.json")


def test_small_run_records_parameters_and_environment(small_run):
    record = small_run.record
    assert record["notebook"] == "01_rank1_recovery"
    assert {k: record["parameters"][k] for k in SMALL} == SMALL
    assert record["parameters"]["r"] == 1 and record["parameters"]["device"] == "cpu"
    assert record["environment"]["device"] == "cpu"
    assert record["environment"]["torch"]


def test_small_run_shows_its_figures_inline_and_saves_them(small_run):
    out = small_run.folder
    assert len(image_outputs(out / "01_rank1_recovery.ipynb")) == len(FIGURES)
    for name in FIGURES:
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = (out / "01_rank1_recovery.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") >= len(FIGURES)


def test_small_run_stores_no_progress_bar(small_run):
    assert bar_outputs(small_run.executed) == []


def test_small_run_saves_the_adapter_it_measured(small_run):
    out, record = small_run.folder, small_run.record
    delta = lc.adapter_deltas(out / "adapter")[""]
    assert tuple(delta.shape) == (SMALL["d_in"], SMALL["d_out"])
    recomputed = lc.compare_delta(delta, torch.ones_like(delta))
    for name in ("delta_mean", "delta_relative_error", "delta_max_abs_error"):
        assert recomputed[name] == pytest.approx(record["metrics"][name], rel=1e-9, abs=1e-12)


def test_same_small_parameters_give_identical_metrics(small_run, run_notebook):
    # cache_base=False: the base is trained again, not read back from the first run's cache.
    second = run_notebook(NOTEBOOK, **SMALL, cache_base=False)
    assert without_timings(second.metrics) == without_timings(small_run.metrics)


@pytest.mark.parametrize(
    "name, value",
    [("r", 0), ("device", "tpu"), ("scaling", "bogus")],
)
def test_a_bad_parameter_stops_the_run_naming_it(fresh_cache, run_notebook, tmp_path, name, value):
    with pytest.raises(NotebookRunError) as caught:
        run_notebook(NOTEBOOK, output_dir=tmp_path, **{**SMALL, name: value})
    error = caught.value
    assert error.ename == "ValueError"
    assert f"{name}={value!r} is not allowed" in error.evalue
    assert error.cell_index == validation_cell_index()
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "metrics.incomplete.json").exists()


# ---------------------------------------------------------------------------------------
# Full seed scale: the suite's claim (one cold run, one warm run)


@pytest.mark.slow
def test_full_scale_reproduces_the_blog(fresh_cache, run_notebook):
    cold_run = run_notebook(NOTEBOOK)
    assert_baseline(cold_run, BASELINES / "01_rank1_recovery.full.json")
    cold = cold_run.metrics

    # The fidelity claims, stated against the published numbers themselves.
    for epoch, published in lc.BLOG_PRETRAIN_LOSSES.items():
        got = cold[f"pretrain_loss_epoch_{epoch}"]
        assert abs(got / published - 1) <= 0.15, f"epoch {epoch}: {got:.6g} vs published {published}"
    assert abs(cold["shifted_base_loss"] / 1001 - 1) <= 0.05
    assert cold["lora_final_loss"] < 0.01
    assert abs(cold["delta_mean"] - 1) < 0.005
    assert math.isclose(cold["merged_loss"], cold["lora_final_loss"], rel_tol=1e-3)
    assert cold["trainable_parameters"] == 2001 and cold["base_parameters"] == 1001 * 1000

    # Warm: the base comes from the cache the cold run filled, and nothing else changes.
    warm = run_notebook(NOTEBOOK)
    assert "Loaded from the cache" in printed_text(warm.executed)
    assert without_timings(warm.metrics) == without_timings(cold)


# ---------------------------------------------------------------------------------------
# The run as a Markdown post


def test_small_run_exports_as_a_markdown_post(small_run, tmp_path):
    out, record = small_run.folder, small_run.record
    assert reports_main(["markdown", str(out), "--out", str(tmp_path / "post")]) == 0
    text = (tmp_path / "post" / "01_rank1_recovery.md").read_text(encoding="utf-8")

    _, matter, body = text.split("---\n", 2)
    front = yaml.safe_load(matter)
    assert front["title"] == "Rank-1 recovery: LoRA on a problem whose answer we know"
    assert front["date"] == record["environment"]["timestamp"]
    assert front["git_commit"] == record["environment"]["git_commit"]
    assert {k: front["parameters"][k] for k in SMALL} == SMALL
    assert "output_dir" not in front["parameters"]

    # No parameters cell, papermill's or the notebook's: the front matter has the values.
    assert "```python\n# Parameters" not in body and "d_in: int = 1001" not in body
    assert str(out) not in text and str(Path.home()) + "/" not in text

    figures = sorted(p.name for p in (tmp_path / "post" / "figures").iterdir())
    assert figures == sorted(FIGURES)
    for name in FIGURES:
        (alt,) = re.findall(rf"!\[([^\]]+)\]\(figures/{re.escape(name)}\)", body)
        assert len(alt) > len(name)  # says more than the file name
    # ΔΘ's corner and the summary as Markdown tables, not HTML.
    assert "<table" not in body
    assert re.search(r"^\| i \\ j \| 0 \| 1 \| 2 \| 3 \| 4 \|\n\|(---\|){6}$", body, re.M)
    assert body.count("|---|") >= 3
