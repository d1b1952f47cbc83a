"""The sweep runner on a tiny notebook that computes loss = (x - 3)**2 with the stdlib.

Each run costs about one kernel start, so the tests share one finished sweep and copy it
where they need to change it.
"""

import json
import shutil
import subprocess
import sys
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from lora_core.suite.sweep import config_name, load_sweep, run_sweep

NOTEBOOK = Path(__file__).parents[1] / "data" / "quadratic.ipynb"
REPO = Path(__file__).resolve().parents[2]
GRID = {"x": [1, 3], "repeats": [1, 2]}


def sweep(output_dir, grid, fixed=None, **kwargs):
    kwargs = {"render_html": False, "progress": False, **kwargs}
    return run_sweep(NOTEBOOK, grid, fixed or {}, output_dir, **kwargs)


def cell_index(text):
    """Index of the fixture's cell whose source contains ``text``, read independently."""
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    return next(i for i, cell in enumerate(cells) if text in cell.source)


def executions(folder):
    """When each config's executed notebook was last written: changes iff it ran again."""
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(folder).glob("*/quadratic.ipynb")}


def without_seconds(frame):
    return frame.drop(columns="seconds").reset_index(drop=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps") / "finished"
    return folder, sweep(folder, GRID)


def copy_of(finished, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(finished[0], folder)
    return folder


# ---------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize(
    "grid, fixed, message",
    [
        ({"rank": [1, 2]}, {}, r"no parameter rank; it declares x: float, repeats: int"),
        ({"repeats": ["1", "abc"]}, {}, r"repeats='abc' is not allowed: expected an int"),
        ({"x": [1]}, {"label": 5}, r"label=5 is not allowed: expected a str"),
        ({"output_dir": ["a", "b"]}, {}, r"output_dir is set by the sweep runner"),
        ({"x": [1, 1.0]}, {}, r"expected distinct values"),
        ({"x": []}, {}, r"expected a non-empty list"),
        ({"x": [1]}, {"x": 2}, r"x given both as a grid axis and as a fixed value"),
    ],
)
def test_bad_grid_is_refused_before_anything_runs(tmp_path, grid, fixed, message):
    with pytest.raises(ValueError, match=message):
        sweep(tmp_path / "out", grid, fixed)
    assert not (tmp_path / "out").exists()


def test_config_names_are_readable_and_unique():
    assert config_name({"r": 4, "lora_alpha": 8}) == "r=4__lora_alpha=8"
    assert config_name({"lr": 0.001, "rslora": True}) == "lr=0.001__rslora=True"
    slash, underscore = config_name({"label": "a/b"}), config_name({"label": "a_b"})
    assert "/" not in slash and slash != underscore
    assert len(config_name({f"p{i}": "v" * 60 for i in range(10)})) <= 150


# ---------------------------------------------------------------------------------------
# Running a sweep


def test_tiny_grid_runs_every_config_into_its_own_folder(finished):
    folder, result = finished
    summary = result.summary
    assert result.ok and list(summary["status"]) == ["ok"] * 4
    assert list(zip(summary["x"], summary["repeats"])) == [(1.0, 1), (1.0, 2), (3.0, 1), (3.0, 2)]
    assert list(summary["loss"]) == [(x - 3) ** 2 for x in summary["x"]]
    assert list(summary["path"]) == [
        "x=1.0__repeats=1",
        "x=1.0__repeats=2",
        "x=3.0__repeats=1",
        "x=3.0__repeats=2",
    ]
    for name in summary["path"]:
        assert {p.name for p in (folder / name).iterdir()} == {"quadratic.ipynb", "metrics.json"}
    assert without_seconds(load_sweep(folder)).equals(without_seconds(summary))
    record = json.loads((folder / "sweep.json").read_text())
    assert record["grid"] == {"x": [1.0, 3.0], "repeats": [1, 2]} and record["finished"] >= record["started"]


def test_runs_start_in_the_notebook_folder_on_this_interpreter(finished):
    folder, _ = finished
    record = json.loads((folder / "x=1.0__repeats=1" / "metrics.json").read_text())
    assert record["environment"] == {"cwd": str(NOTEBOOK.parent.resolve()), "python": sys.executable}
    assert record["parameters"]["output_dir"] == str(folder / "x=1.0__repeats=1")


def test_finished_sweep_started_again_redoes_nothing(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    before = executions(folder)
    result = sweep(folder, GRID)
    assert list(result.summary["status"]) == ["skipped"] * 4
    assert list(result.summary["loss"]) == list(finished[1].summary["loss"])
    assert executions(folder) == before


def test_changed_fixed_parameter_reruns_the_configs(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    result = sweep(folder, {"x": [1], "repeats": [1]}, {"label": "relabelled"})
    assert list(result.summary["status"]) == ["ok"]


def test_half_written_run_is_redone_and_the_rest_skipped(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    (folder / "x=3.0__repeats=2" / "metrics.json").unlink()
    before = executions(folder)
    result = sweep(folder, GRID)
    assert list(result.summary["status"]) == ["skipped", "skipped", "skipped", "ok"]
    after = executions(folder)
    assert [name for name in before if after[name] != before[name]] == ["x=3.0__repeats=2"]


class Killed(Exception):
    pass


class DiesAfterOneRun(Executor):
    """Runs the first config in the caller, then fails as a sweep killed mid-way would."""

    def __init__(self):
        self.runs = 0

    def submit(self, fn, *args, **kwargs):
        if self.runs == 1:
            raise Killed
        self.runs += 1
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_killed_sweep_is_readable_and_finishes_the_rest_on_restart(tmp_path):
    folder = tmp_path / "killed"
    with pytest.raises(Killed):
        sweep(folder, {"x": [1, 2, 4]}, executor=DiesAfterOneRun())
    # The kill came before the finished run was recorded; its metrics.json still counts.
    assert list(load_sweep(folder)["status"]) == ["ok", "pending", "pending"]
    first_run = executions(folder)
    assert list(first_run) == ["x=1.0"]

    result = sweep(folder, {"x": [1, 2, 4]})
    assert list(result.summary["status"]) == ["skipped", "ok", "ok"]
    assert executions(folder)["x=1.0"] == first_run["x=1.0"]
    assert list(load_sweep(folder)["loss"]) == [4.0, 1.0, 1.0]


def test_each_kind_of_failure_is_recorded_and_the_others_go_on(tmp_path):
    result = sweep(
        tmp_path / "failures", {"mode": ["crash", "sleep", "silent", "ok"]}, {"x": 1000}, timeout=1
    )
    summary = result.summary.set_index("mode")
    assert summary.loc["crash", "error"].startswith("DeadKernelError")
    assert summary.loc["sleep", "error"].startswith("CellTimeoutError")
    assert summary.loc["silent", "error"].startswith("MissingMetrics")
    assert (
        summary.loc["crash", "failed_cell"] == summary.loc["sleep", "failed_cell"] == cell_index("os._exit")
    )
    # A diverged run finished: it is ok, and says it diverged.
    assert summary.loc["ok", "status"] == "ok" and summary.loc["ok", "diverged"] == True  # noqa: E712
    assert not result.ok and [f["config"]["mode"] for f in result.failed] == ["crash", "sleep", "silent"]


def test_command_line_reports_a_failing_cell_and_exits_non_zero(tmp_path):
    (tmp_path / "grid.yaml").write_text("x: [1, 2]\nlabel: from a file\n")
    command = [
        sys.executable,
        "-m",
        "lora_core.suite.sweep",
        str(NOTEBOOK),
        "-f",
        str(tmp_path / "grid.yaml"),
        "--param",
        "fail_when=2",
        "--grid",
        "repeats=1",
        "--output",
        str(tmp_path / "cli"),
        "--no-html",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "raise ValueError" in done.stdout  # the failing cell's source, in the summary

    summary = load_sweep(tmp_path / "cli")
    assert list(summary["status"]) == ["ok", "failed"]
    failed = summary.iloc[1]
    assert failed["error"] == "ValueError: x=2.0 was asked to fail"
    assert failed["failed_cell"] == cell_index("raise ValueError")
    assert set(summary["label"]) == {"from a file"} and list(summary["path"]) == [
        "x=1.0__repeats=1",
        "x=2.0__repeats=1",
    ]


def test_command_line_refuses_an_unknown_parameter(tmp_path, capsys):
    from lora_core.suite.sweep import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(NOTEBOOK), "--grid", "rank=1,2", "--output", str(tmp_path / "cli")])
    assert exit_info.value.code == 2 and "no parameter rank" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_two_jobs_in_separate_processes_give_the_same_summary(finished, tmp_path):
    result = sweep(tmp_path / "parallel", GRID, jobs=2)
    assert without_seconds(result.summary).equals(without_seconds(finished[1].summary))


def test_a_given_executor_runs_the_configs(tmp_path):
    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn, *args, **kwargs):
            CountingPool.submitted += 1
            return super().submit(fn, *args, **kwargs)

    with CountingPool(max_workers=2) as pool:
        result = sweep(tmp_path / "threads", {"x": [0, 5]}, executor=pool)
    assert CountingPool.submitted == 2 and list(result.summary["loss"]) == [9.0, 4.0]
    # Runs on threads share one process; each must still start in the notebook's folder.
    for name in result.summary["path"]:
        record = json.loads((tmp_path / "threads" / name / "metrics.json").read_text())
        assert record["environment"]["cwd"] == str(NOTEBOOK.parent.resolve())


def test_sweep_inside_a_reports_folder_appears_in_its_index(finished, tmp_path):
    folder = tmp_path / "reports" / "sweeps" / "quadratic"
    shutil.copytree(finished[0], folder)
    sweep(folder, GRID)  # everything is skipped; only the index is written
    assert "sweeps/quadratic" in (tmp_path / "reports" / "index.html").read_text()
