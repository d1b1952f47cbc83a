"""What a run leaves behind: atomic metrics.json, environment, figures, HTML, the index."""

import base64
import hashlib
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nbformat
import numpy as np
import pandas as pd
import pytest
import safetensors
import torch
from matplotlib.figure import Figure

from lora_core.suite import reports


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# ---- atomic writes ----------------------------------------------------------------------


def test_write_metrics_round_trips_through_read_metrics(tmp_path):
    path = reports.write_metrics(
        tmp_path,
        "01_rank1_recovery",
        {"r": 1, "lr": 1e-3},
        {"final_loss": np.float32(0.5), "delta_mean": torch.tensor(0.9999), "count": 2001},
        environment={"torch": "x"},
    )
    assert path == tmp_path / "metrics.json"
    content = reports.read_metrics(tmp_path)  # the run folder is enough
    assert list(content) == ["notebook", "parameters", "environment", "metrics", "headline"]
    assert content["headline"] == []
    assert content["notebook"] == "01_rank1_recovery"
    assert content["parameters"] == {"r": 1, "lr": 1e-3}
    assert content["metrics"]["count"] == 2001
    assert content["metrics"]["delta_mean"] == pytest.approx(0.9999)


def test_non_finite_metrics_are_written_as_null_so_the_file_is_strict_json(tmp_path):
    reports.write_metrics(
        tmp_path, "nb", {}, {"loss": float("nan"), "peak": math.inf, "none": None}, environment={}
    )
    text = (tmp_path / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    assert reports.read_metrics(tmp_path)["metrics"] == {"loss": None, "peak": None, "none": None}


def test_failed_serialisation_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    reports.write_json_atomic(target, {"complete": True})
    before = target.read_text()
    # The bad value sits after good ones: the failure happens part-way through the object.
    half = {"a": list(range(1000)), "b": {"c": 1.0, "d": object()}}
    with pytest.raises(TypeError, match=r"\['b'\]\['d'\]"):
        reports.write_json_atomic(target, half)
    assert target.read_text() == before
    assert _files(tmp_path) == ["metrics.json"]


def test_failed_write_to_disk_removes_the_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    reports.write_json_atomic(target, {"complete": True})

    def interrupted(src, dst):
        raise KeyboardInterrupt  # the user stops the run between write and rename

    monkeypatch.setattr(reports.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reports.write_json_atomic(target, {"complete": False})
    assert json.loads(target.read_text()) == {"complete": True}
    assert _files(tmp_path) == ["metrics.json"]


def test_interrupted_first_write_leaves_no_metrics_file(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(reports.os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        reports.write_metrics(tmp_path / "run", "nb", {}, {"loss": 1.0}, environment={})
    assert _files(tmp_path / "run") == []


def test_write_metrics_refuses_non_numeric_metrics(tmp_path):
    with pytest.raises(ValueError, match=r"metrics\['note'\]='text' is not allowed"):
        reports.write_metrics(tmp_path, "nb", {}, {"note": "text"}, environment={})
    assert not (tmp_path / "metrics.json").exists()


def test_read_metrics_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        reports.read_metrics(tmp_path)


# ---- environment --------------------------------------------------------------------------


def test_environment_info_records_versions_device_threads_and_utc_time():
    info = reports.environment_info(device="cpu")
    assert info["torch"] == torch.__version__
    assert info["device"] == "cpu"
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["timestamp"].endswith("+00:00")
    assert info["git_commit"] is None or len(info["git_commit"]) == 40
    assert {"lora_core", "python", "platform"} <= set(info)
    assert (info["numpy"], info["pandas"]) == (np.__version__, pd.__version__)
    assert info["safetensors"] == safetensors.__version__
    assert {"matplotlib", "papermill", "nbclient"} <= set(info)
    lock = Path(reports.__file__).resolve().parents[2] / "requirements.lock"
    assert info["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    json.dumps(info)  # goes into metrics.json as it is


def test_environment_info_records_the_device_auto_resolves_to():
    from lora_core.training import resolve_device

    picked = str(resolve_device("auto"))
    assert reports.environment_info(device="auto")["device"] == picked
    assert reports.environment_info()["device"] == picked


def test_write_metrics_fills_the_environment_when_not_given(tmp_path):
    reports.write_metrics(tmp_path, "nb", {}, {"loss": 1.0})
    assert reports.read_metrics(tmp_path)["environment"]["torch"] == torch.__version__


# ---- figures and HTML ---------------------------------------------------------------------


def test_save_figure_writes_a_png_and_refuses_folder_names(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    path = reports.save_figure(fig, tmp_path / "figs", "loss_curves")
    assert path == tmp_path / "figs" / "loss_curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="without folders"):
        reports.save_figure(fig, tmp_path, "../elsewhere")


def test_show_figure_saves_once_and_shows_the_file_at_the_inline_size(tmp_path):
    fig = Figure(figsize=(4, 3), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    image = reports.show_figure(fig, tmp_path, "curve")
    saved = (tmp_path / "curve.png").read_bytes()
    assert image.data == saved  # the output is the file, not a second rendering
    pixels = int.from_bytes(saved[16:20], "big")
    assert pixels > 400 and image.width == round(
        pixels * 100 / reports.FIGURE_DPI
    )  # 4 in at 100 dpi, cropped
    assert image._repr_png_() is not None


def test_render_html_is_one_file_with_every_image_embedded(tmp_path):
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    png_path = reports.save_figure(fig, tmp_path, "side")
    png = base64.b64encode(png_path.read_bytes()).decode()
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_markdown_cell("A figure from disk: ![side](side.png)"))
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "fig"})]
    notebook.cells.append(cell)
    nb_path = tmp_path / "run.ipynb"
    nbformat.write(notebook, nb_path)

    html_path = reports.render_html(nb_path)
    png_path.unlink()  # the page must not need the file any more
    assert html_path == tmp_path / "run.html"
    page = html_path.read_text()
    assert page.count(f"data:image/png;base64,{png}") == 2
    assert 'src="side.png"' not in page
    assert _files(tmp_path) == ["run.html", "run.ipynb"]


# ---- index --------------------------------------------------------------------------------


def _run(folder, notebook, metrics, timestamp="2024-05-01T10:00:00+00:00"):
    reports.write_metrics(folder, notebook, {}, metrics, environment={"timestamp": timestamp})
    (folder / f"{notebook}.html").write_text("<html></html>")
    (folder / f"{notebook}.ipynb").write_text("{}")
    (folder / "loss_curves.png").write_bytes(b"png")


@pytest.fixture()
def reports_root(tmp_path):
    root = tmp_path / "reports"
    _run(
        root / "01_run",
        "01_rank1_recovery",
        {"lora_final_loss": 0.0013, "train_seconds": 12.0, "delta_mean": 0.9999},
    )
    sweep = root / "alpha_sweep"
    sweep.mkdir(parents=True)
    (sweep / "summary.csv").write_text("r,lora_alpha,status\n1,1,ok\n2,1,failed\n")
    _run(sweep / "r=1,lora_alpha=1", "01_rank1_recovery", {"lora_final_loss": 0.002})
    (root / "baselines").mkdir()
    (root / "baselines" / "metrics.json").write_text("{}")
    (root / "unfinished").mkdir()
    (root / "unfinished" / "01_rank1_recovery.ipynb").write_text("{}")
    return root


def test_index_links_runs_and_sweeps_and_skips_baselines(reports_root):
    page = reports.build_index(reports_root).read_text()
    assert 'href="01_run/01_rank1_recovery.html"' in page
    assert 'href="01_run/01_rank1_recovery.ipynb"' in page
    assert 'href="01_run/loss_curves.png"' in page
    assert 'href="alpha_sweep/summary.csv"' in page
    assert "2 configs (1 ok, 1 failed)" in page
    # The run inside the sweep is linked too, its folder name percent-encoded in the href.
    assert "alpha_sweep/r%3D1%2Clora_alpha%3D1/01_rank1_recovery.html" in page
    assert "baselines" not in page
    assert "unfinished" not in page  # no metrics.json: not a complete run


def test_index_shows_key_metrics_without_timings_and_the_run_date(reports_root):
    page = (reports.build_index(reports_root)).read_text()
    assert "lora_final_loss = 0.0013" in page
    assert "delta_mean = 0.9999" in page
    assert "train_seconds" not in page
    assert "2024-05-01 10:00" in page
    assert "Runs (1)" in page and "Sweeps (1)" in page


def test_index_survives_a_corrupt_metrics_file(reports_root):
    (reports_root / "broken").mkdir()
    (reports_root / "broken" / "metrics.json").write_text('{"notebook": ')
    page = reports.build_index(reports_root).read_text()
    assert "unreadable metrics.json" in page
    assert "Runs (2)" in page


def test_index_shows_the_headline_the_notebook_declared(reports_root):
    folder = reports_root / "declared"
    metrics = {"shifted_base_loss": 1001.0, "lora_final_loss": 0.0013, "delta_mean": 0.9999}
    reports.write_metrics(folder, "01_rank1_recovery", {}, metrics, {}, headline=["delta_mean"])
    page = reports.build_index(reports_root).read_text()
    row = next(line for line in page.splitlines() if ">declared<" in line)
    assert "delta_mean = 0.9999" in row and "shifted_base_loss" not in row
    with pytest.raises(ValueError, match=r"headline=\['typo'\].*\['typo'\] are not among the metrics"):
        reports.write_metrics(folder, "01_rank1_recovery", {}, metrics, {}, headline=["typo"])


def _sized_run(root, name, scale, loss):
    parameters = dict(reports.SCALES["small"]) if scale == "small" else dict(n=100, d_in=9, d_out=8, epochs=5)
    reports.write_metrics(
        root / name, "01_rank1_recovery", parameters, {"lora_final_loss": loss}, {}, ["lora_final_loss"]
    )


def test_index_gives_each_run_its_size_and_baseline_verdict(tmp_path):
    root = tmp_path / "reports"
    (root / "baselines").mkdir(parents=True)
    baseline = {
        "notebook": "01_rank1_recovery",
        "metrics": {"lora_final_loss": {"value": 0.0013, "rtol": 0.1}},
    }
    (root / "baselines" / "01_rank1_recovery.small.json").write_text(json.dumps(baseline))
    _sized_run(root, "close", "small", 0.00131)
    _sized_run(root, "far", "small", 0.01)
    _sized_run(root, "tiny", "custom", 0.00131)
    rows = {
        name: next(line for line in reports.build_index(root).read_text().splitlines() if f">{name}<" in line)
        for name in ("close", "far", "tiny")
    }
    assert "<td>small</td>" in rows["close"] and ">pass<" in rows["close"]
    assert ">drift (1 of 1 metrics)<" in rows["far"]
    assert "<td>custom</td>" in rows["tiny"] and ">not checked<" in rows["tiny"]


@pytest.mark.parametrize(
    "content",
    [
        {"notebook": "01_rank1_recovery", "environment": "x", "metrics": {"loss": 1.0}},
        {"notebook": "01_rank1_recovery", "metrics": [1, 2]},
        {"notebook": "01_rank1_recovery", "parameters": None, "metrics": {}},
        [1, 2, 3],
    ],
)
def test_one_malformed_metrics_file_is_noted_and_every_other_run_still_indexed(reports_root, content, capsys):
    # Issue 12, item 7: `"environment": "x"` used to raise and leave no index at all.
    (reports_root / "hand_edited").mkdir()
    (reports_root / "hand_edited" / "metrics.json").write_text(json.dumps(content))
    assert reports.main(["index", str(reports_root)]) == 0
    page = (reports_root / "index.html").read_text()
    row = next(line for line in page.splitlines() if ">hand_edited<" in line)
    assert "unreadable metrics.json, skipped" in row
    assert "lora_final_loss = 0.0013" in page  # the good run is there as before
    assert "Runs (2)" in page


def test_index_names_a_sweeps_notebook_and_best_config(tmp_path):
    sweep = tmp_path / "reports" / "sweeps" / "r_sweep"
    sweep.mkdir(parents=True)
    record = {"notebook": "notebooks/01_rank1_recovery.ipynb", "grid": {"r": [1, 2, 4]}, "fixed": {}}
    (sweep / "sweep.json").write_text(json.dumps(record))
    rows = ["r,lora_final_loss,status,path", "1,0.004,ok,r=1", "2,0.001,ok,r=2", "4,,failed,r=4"]
    (sweep / "summary.csv").write_text("\n".join(rows) + "\n")
    for r, loss in ((1, 0.004), (2, 0.001)):
        reports.write_metrics(
            sweep / f"r={r}",
            "01_rank1_recovery",
            {"r": r},
            {"lora_final_loss": loss},
            {},
            ["lora_final_loss"],
        )
    page = reports.build_index(tmp_path / "reports").read_text()
    row = next(line for line in page.splitlines() if ">sweeps/r_sweep<" in line)
    assert "<td>01_rank1_recovery</td>" in row
    assert "best (r=2): lora_final_loss = 0.001" in row
    assert "<td>full</td>" in row  # no size parameter fixed: the notebook's defaults


def test_reports_cli_writes_the_index(reports_root, capsys):
    assert reports.main(["index", str(reports_root)]) == 0
    assert capsys.readouterr().out.strip() == str(reports_root / "index.html")
    assert (reports_root / "index.html").is_file()


def test_reports_cli_reports_a_missing_folder(tmp_path, capsys):
    assert reports.main(["index", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
