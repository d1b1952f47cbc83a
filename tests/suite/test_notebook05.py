"""Notebook 05 under papermill: a small run against its baseline, its figures and claims,
parameter errors, and (slow) the default size against the full baseline and the issue's bars.

Every run uses a cache folder of its own (``LORA_CORE_CACHE``).
"""

from pathlib import Path

import nbformat
import pytest
from conftest import image_outputs

from lora_core.adapters import WEIGHTS_NAME
from lora_core.suite.execute import NotebookRunError, execute_notebook
from lora_core.suite.regression import check_metrics

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "05_transformer.ipynb"
BASELINES = REPO / "reports" / "baselines"
# A one-block model on short sequences: every section runs, in seconds of compute.
SMALL = dict(
    vocab_size=8, seq_len=8, d_model=16, n_heads=2, n_layers=1, d_mlp=32, n=256, n_test=128,
    epochs=3, finetune_epochs=2, batch_size=32, r=4, lora_alpha=8.0, ranks="1, 4", placements="q_v, all",
)  # fmt: skip
FIGURES = ("placement_accuracy.png", "rank_accuracy.png", "scaling_loss_curves.png")


@pytest.fixture(scope="module")
def small_run(fresh_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("small05")
    return out, execute_notebook(NOTEBOOK, out, SMALL, render_html=True)


def test_small_run_passes_the_small_baseline(small_run):
    _, record = small_run
    report = check_metrics(record, BASELINES / "05_transformer.small.json")
    assert report.ok, f"\n{report}"


def test_small_run_shows_the_walkthrough_defects_and_an_exact_add_lora(small_run):
    metrics = small_run[1]["metrics"]
    assert metrics["moduledict_refuses_dotted_names"] == 1 and metrics["replay_fails"] == 1
    assert metrics["init_max_abs_diff"] == 0.0


def test_small_run_switches_adapters_over_a_bit_identical_base(small_run):
    out, record = small_run
    metrics = record["metrics"]
    assert metrics["base_bit_identical"] == 1
    # Loading the first adapter again gives back exactly its first accuracy.
    for task in ("permuted", "two_back"):
        assert metrics[f"switch2_permuted_accuracy_{task}"] == metrics[f"switch0_permuted_accuracy_{task}"]
    assert metrics["merged_accuracy"] == pytest.approx(metrics["adapter_accuracy"], abs=1 / 128)
    assert metrics["lora_layers_left_after_merge"] == 0
    for task in ("permuted", "two_back"):
        assert (out / "adapters" / task / WEIGHTS_NAME).is_file()
        assert metrics[f"lora_file_bytes_{task}"] < metrics[f"full_file_bytes_{task}"]
        assert metrics[f"lora_optimizer_state_bytes_{task}"] < metrics[f"full_optimizer_state_bytes_{task}"]


def test_small_run_shows_its_figures_inline_and_saves_them(small_run):
    out, _ = small_run
    assert len(image_outputs(out / "05_transformer.ipynb")) == len(FIGURES)
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "05_transformer.html").read_text(encoding="utf-8").count("data:image/png;base64") >= 3


def validation_cell_index():
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    return [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])][0] + 1


@pytest.mark.parametrize(
    "name, value",
    [("n_heads", 3), ("tasks", "permuted"), ("tasks", "previous, add"), ("placements", "everything")],
)
def test_a_bad_parameter_stops_the_run_naming_it(fresh_cache, tmp_path, name, value):
    with pytest.raises(NotebookRunError) as caught:
        execute_notebook(NOTEBOOK, tmp_path, {**SMALL, name: value}, render_html=False)
    assert caught.value.ename == "ValueError"
    assert f"{name}={value!r} is not allowed" in caught.value.evalue
    assert caught.value.cell_index == validation_cell_index()
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_default_size_meets_the_issue_bars_and_the_full_baseline(fresh_cache, tmp_path):
    metrics = execute_notebook(NOTEBOOK, tmp_path, render_html=False)["metrics"]
    baseline = BASELINES / "05_transformer.full.json"
    if baseline.exists():
        report = check_metrics(metrics, baseline)
        assert report.ok, f"\n{report}"
    assert metrics["base_accuracy_previous"] >= 0.95
    for task in ("permuted", "two_back"):
        assert metrics[f"accuracy_{task}_full"] >= 0.95
        assert metrics[f"base_accuracy_{task}"] < metrics[f"accuracy_{task}_full"] - 0.5
