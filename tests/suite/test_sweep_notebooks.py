"""The sweep notebooks under papermill at a small size: 02 (rank), 03 (alpha), 04 (report).

Each runs at the small size of notebook 01's tests (d_in 65, d_out 64: seconds) and is
checked against its committed small baseline; its figures must be shown inline and saved;
02's claim (r < k cannot recover a rank-k shift, r ≥ k does) must hold; 03 must mark the
configs that diverge; 04 aggregates a real grid-runner sweep of notebook 01, failed
configs included, and finds notebook 03's numbers (train_many) for the same configs.
Kernels get a cache folder of their own (``LORA_CORE_CACHE``) and one thread: at this
size one thread is faster than two, and a fixed count keeps the numbers the baselines'.

Runs go through the package's pytest plugin (``run_notebook``, ``assert_baseline``).
Baselines are rewritten on purpose with ``lora-regress RUN_DIR BASELINE --update``.
"""

from pathlib import Path

import nbformat
import pytest
from conftest import image_outputs, printed_text

from lora_core import suite
from lora_core.suite.markdown import export_markdown
from lora_core.suite.pytest_plugin import assert_baseline

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
BASELINES = REPO / "reports" / "baselines"
NOTEBOOK01 = NOTEBOOKS / "01_rank1_recovery.ipynb"

# Notebook 01's small size, so that every notebook here reuses one cached base.
SMALL_DATA = dict(n=512, d_in=65, d_out=64, epochs=60, batch_size=64, lr=3e-2)
SMALL = {
    "02_rank_sweep": dict(SMALL_DATA),
    # SGD, unlike Adam, lets a large alpha blow the loss up: some configs diverge.
    "03_alpha_sweep": dict(SMALL_DATA, optimizer="sgd"),
}
SMALL_SWEEP_GRID = {"r": [1, 2], "lora_alpha": [1.0, 8.0]}
BAD_RANK = 100  # more than the small layer's 64 outputs: notebook 01 refuses it
# The same configs by the in-notebook route, for 04 to compare the two routes.
SMALL_SAME_CONFIGS = dict(SMALL_DATA, ranks="1, 2", lora_alphas="1, 8", scalings="standard")
FIGURES = {
    "02_rank_sweep": (
        "loss_curves",
        "delta_error_vs_r",
        "final_loss_vs_r",
        "delta_grid",
        "delta_error_grid",
        "singular_values",
    ),
    "03_alpha_sweep": (
        "final_loss_heatmap",
        "loss_curves_standard",
        "loss_curves_rslora",
        "final_loss_vs_scale",
    ),
    "04_sweep_report": ("metric_heatmap", "loss_curves", "delta_grid", "delta_error_grid", "singular_values"),
}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORA_CORE_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def small_runs(kernel_env, run_notebook):
    """Each small run, made once: stem -> NotebookRun (folder, metrics.json content)."""
    runs = {}

    def get(stem):
        if stem not in runs:
            runs[stem] = run_notebook(NOTEBOOKS / f"{stem}.ipynb", **SMALL[stem])
        return runs[stem]

    return get


@pytest.fixture(scope="module")
def small_sweep(kernel_env, tmp_path_factory):
    """A grid-runner sweep of notebook 01 at the small size: a 2 × 2 grid of configs that
    run, plus a row of a rank the small layer cannot take, which fail in notebook 01's
    validation cell as a real failure would be recorded."""
    if not NOTEBOOK01.is_file():
        pytest.skip("notebooks/01_rank1_recovery.ipynb is not there yet: no sweep of it to report on")
    out = tmp_path_factory.mktemp("sweep") / "01_r_x_alpha"
    grid = {"r": [*SMALL_SWEEP_GRID["r"], BAD_RANK], "lora_alpha": SMALL_SWEEP_GRID["lora_alpha"]}
    result = suite.run_sweep(NOTEBOOK01, grid, SMALL_DATA, out, jobs=2, render_html=False, progress=False)
    assert list(result.summary["status"]) == ["ok"] * 4 + ["failed"] * 2
    return out


@pytest.fixture(scope="module")
def small_report(small_sweep, run_notebook):
    in_notebook = run_notebook(NOTEBOOKS / "03_alpha_sweep.ipynb", **SMALL_SAME_CONFIGS)
    return run_notebook(
        NOTEBOOKS / "04_sweep_report.ipynb", sweep_dir=str(small_sweep), compare_with=str(in_notebook.folder)
    )


def assert_figures_inline_and_saved(stem, out):
    assert len(image_outputs(out / f"{stem}.ipynb")) == len(FIGURES[stem])
    for name in FIGURES[stem]:
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def validation_cell_index(stem):
    cells = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4).cells
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", [])]
    return tagged[0] + 1


# ---------------------------------------------------------------------------------------
# 02 and 03: what every notebook owes


@pytest.mark.parametrize("stem", ["02_rank_sweep", "03_alpha_sweep"])
def test_sweep_notebook_passes_its_small_baseline(small_runs, stem):
    assert_baseline(small_runs(stem), BASELINES / f"{stem}.small.json")


@pytest.mark.parametrize("stem", ["02_rank_sweep", "03_alpha_sweep"])
def test_sweep_notebook_shows_its_figures_inline_and_saves_them(small_runs, stem):
    assert_figures_inline_and_saved(stem, small_runs(stem).folder)


# ---------------------------------------------------------------------------------------
# 02: the rank sweep


def test_rank_below_k_cannot_recover_the_shift_and_rank_k_or_more_does(small_runs):
    record = small_runs("02_rank_sweep").record
    metrics, k = record["metrics"], record["parameters"]["shift_rank"]
    ranks = [int(r) for r in record["parameters"]["ranks"].split(",")]
    assert min(ranks) < k <= max(ranks)
    for r in ranks:
        error, floor = metrics[f"delta_relative_error_r{r}"], metrics[f"best_error_r{r}"]
        if r < k:
            # Far from the shift, yet as close as any rank-r matrix can be.
            assert floor > 0.3 and floor <= error <= 1.02 * floor, (r, error, floor)
        else:
            assert floor < 1e-6 and error < 1e-3, (r, error, floor)
    assert metrics["min_error_below_k"] > 100 * metrics["max_error_at_least_k"]
    assert "cannot be recovered" in printed_text(small_runs("02_rank_sweep").executed)


# ---------------------------------------------------------------------------------------
# 03: the alpha sweep


def test_alpha_sweep_marks_diverged_configs_instead_of_dropping_them(small_runs):
    run = small_runs("03_alpha_sweep")
    metrics = run.metrics
    flags = {
        name[len("diverged_") :]: value for name, value in metrics.items() if name.startswith("diverged_")
    }
    assert len(flags) == metrics["configs"] == 30  # 2 scalings × 3 ranks × 5 alphas, none dropped
    diverged = [config for config, flag in flags.items() if flag]
    assert 0 < len(diverged) == metrics["configs_diverged"] < len(flags)
    for config in diverged:
        assert metrics[f"final_loss_{config}"] is None  # no number stands in for a diverged run
    text = printed_text(run.executed)
    assert f"{len(diverged)} of {len(flags)} configs diverged" in text


# ---------------------------------------------------------------------------------------
# 04: the report of a grid-runner sweep of notebook 01


def test_sweep_report_passes_its_small_baseline(small_report):
    assert_baseline(small_report, BASELINES / "04_sweep_report.small.json")


def test_sweep_report_shows_its_figures_inline_and_saves_them(small_report):
    assert_figures_inline_and_saved("04_sweep_report", small_report.folder)
    # The adapters it read are the ones whose numbers the runs reported.
    assert small_report.metrics["adapter_vs_metrics_max_diff"] < 1e-9


def test_grid_runner_and_train_many_give_the_same_numbers(small_report):
    assert small_report.metrics["routes_compared"] == 4
    assert small_report.metrics["routes_max_relative_diff"] < 1e-3


def test_sweep_report_lists_failed_configs_with_their_error(small_report):
    metrics = small_report.metrics
    assert (metrics["configs"], metrics["configs_ok"], metrics["configs_failed"]) == (6, 4, 2)
    assert metrics[f"lora_final_loss_r{BAD_RANK}_alpha1"] is None
    executed = nbformat.read(small_report.executed, as_version=4)
    tables = "".join(
        output.get("data", {}).get("text/html", "")
        for cell in executed.cells
        for output in cell.get("outputs", [])
    )
    assert "failed" in tables and f"r={BAD_RANK} is not allowed" in tables


# ---------------------------------------------------------------------------------------
# Bad parameters stop the run in the validation cell, naming the parameter


@pytest.mark.parametrize(
    "stem, name, value",
    [
        ("02_rank_sweep", "ranks", "1, two"),
        ("03_alpha_sweep", "lora_alphas", "-1"),
        ("04_sweep_report", "sweep_dir", "no/such/sweep"),
    ],
)
def test_a_bad_parameter_stops_the_run_naming_it(kernel_env, run_notebook, tmp_path, stem, name, value):
    with pytest.raises(suite.NotebookRunError) as caught:
        run_notebook(NOTEBOOKS / f"{stem}.ipynb", output_dir=tmp_path, **{**SMALL.get(stem, {}), name: value})
    error = caught.value
    assert error.ename == "ValueError"
    assert f"{name}=" in error.evalue and "is not allowed" in error.evalue
    assert error.cell_index == validation_cell_index(stem)
    assert not (tmp_path / "metrics.json").exists()


def assert_exports_as_a_post_with_its_headline(stem, run, tmp_path):
    out, record = run.folder, run.record
    assert record["headline"] and set(record["headline"]) <= set(record["metrics"])
    text = export_markdown(out, tmp_path).read_text(encoding="utf-8")
    assert text.startswith("---\n") and str(out) not in text and "<table" not in text
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == sorted(f"{name}.png" for name in FIGURES[stem])
    assert all(f"](figures/{name})" in text for name in figures)


@pytest.mark.parametrize("stem", ["02_rank_sweep", "03_alpha_sweep"])
def test_sweep_notebook_exports_as_a_markdown_post_with_its_headline(small_runs, stem, tmp_path):
    assert_exports_as_a_post_with_its_headline(stem, small_runs(stem), tmp_path)


def test_report_notebook_exports_as_a_markdown_post_with_its_headline(small_report, tmp_path):
    assert_exports_as_a_post_with_its_headline("04_sweep_report", small_report, tmp_path)
