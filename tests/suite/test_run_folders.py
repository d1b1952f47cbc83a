"""Where a notebook writes: checked before any work, the same from any directory, one run per folder.

A relative folder parameter is taken from the repository root, so plain papermill run
from elsewhere writes into the repository's reports/, not next to the working directory.
A folder holding a finished run with other parameters is refused in the validation cell,
so a small interactive run never overwrites half of a full run's outputs. Two tests run
notebook 01 under plain papermill and check that it stops in that cell, before training.
"""

import json
from pathlib import Path

import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from lora_core.suite import notebook, read_parameters, reports

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK01 = REPO / "notebooks" / "01_rank1_recovery.ipynb"
SMALL = dict(n=512, d_in=65, d_out=64, epochs=60, batch_size=64, lr=3e-2)


def _cell(**declared):
    namespace = {name: value for name, (_, value) in declared.items()}
    namespace["__annotations__"] = {name: kind for name, (kind, _) in declared.items()}
    return namespace


def test_relative_folders_are_taken_from_the_repository_root_and_written_back(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)  # anywhere but the repository
    namespace = _cell(output_dir=(str, "reports/run"), compare_with=(str, "reports/other"))
    params = read_parameters(namespace)
    expected = tmp_path / "repo" / "reports" / "run"
    assert expected.is_dir() and not (tmp_path / "reports").exists()
    assert namespace["output_dir"] == params["output_dir"] == params.recorded["output_dir"] == str(expected)
    assert namespace["compare_with"] == str(tmp_path / "repo" / "reports" / "other")


def test_the_repository_root_is_this_checkout():
    assert notebook.REPO_ROOT == REPO


def test_an_output_dir_holding_a_run_with_other_parameters_is_refused(tmp_path):
    out = tmp_path / "run"
    reports.write_metrics(out, "nb", {"n": 10000, "lr": 0.001, "output_dir": "elsewhere"}, {"loss": 1.0}, {})
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(
        ValueError, match=r"holds a run with other parameters \(n 400 vs 10000; lr 0.03 vs 0.001"
    ):
        read_parameters(_cell(n=(int, 400), lr=(float, 0.03), output_dir=(str, str(out))))
    assert (out / "metrics.json").read_bytes() == before
    # The same parameters may rewrite their own run, wherever it was first written from.
    read_parameters(_cell(n=(int, 10000), lr=(float, 0.001), output_dir=(str, str(out))))


def test_an_unreadable_metrics_file_in_output_dir_is_named(tmp_path):
    (tmp_path / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"holds a metrics.json that cannot be read"):
        read_parameters(_cell(n=(int, 4), output_dir=(str, str(tmp_path))))


def run_plain_papermill(tmp_path, monkeypatch, **parameters):
    """Notebook 01 under plain papermill, started from a folder outside the repository."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORA_CORE_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    executed = tmp_path / "executed.ipynb"
    with pytest.raises(PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(NOTEBOOK01), str(executed), parameters={**SMALL, **parameters}, progress_bar=False
        )
    cells = json.loads(executed.read_text())["cells"]
    failed = [c for c in cells if c.get("metadata", {}).get("papermill", {}).get("exception")]
    # Nothing was pre-trained: the cache was never written.
    assert not cache.exists() or not any(cache.iterdir())
    return caught.value, failed[0]["source"]


def test_an_unwritable_output_dir_stops_notebook_01_in_its_validation_cell(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    error, cell = run_plain_papermill(tmp_path, monkeypatch, output_dir=str(blocker / "run"))
    assert error.ename == "ValueError" and "the folder cannot be created" in error.evalue
    assert "read_parameters(globals())" in "".join(cell)


def test_a_small_run_into_a_full_runs_folder_stops_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "full"
    full = {"n": 10000, "d_in": 1001, "d_out": 1000, "epochs": 100, "batch_size": 128, "lr": 0.001}
    reports.write_metrics(out, "01_rank1_recovery", full, {"lora_final_loss": 0.0013}, {})
    (out / "loss_curves.png").write_bytes(b"full-size figure")
    error, cell = run_plain_papermill(tmp_path, monkeypatch, output_dir=str(out))
    assert "holds a run with other parameters (n 512 vs 10000" in error.evalue
    assert "read_parameters(globals())" in "".join(cell)
    assert (out / "loss_curves.png").read_bytes() == b"full-size figure"
    assert json.loads((out / "metrics.json").read_text())["parameters"] == full
