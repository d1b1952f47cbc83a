"""The sweep runner on a tiny notebook that computes loss = (x - 3)**2 with the stdlib.

Each run costs about one kernel start, so the tests share one finished sweep and copy it
where they need to change it. Tests that take the ``route`` fixture run twice: on the
local route and on a two-worker Dask LocalCluster, whose workers ship the files back.
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from lora_core.suite import reports
from lora_core.suite import sweep as sweep_module
from lora_core.suite.sweep import LOCK_FILE, SweepBusyError, config_name, load_sweep, main, run_sweep

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
def dask_pool():
    pytest.importorskip("distributed")
    from lora_core.suite.cluster import dask_executor

    with dask_executor("local:2") as executor:
        yield executor


@pytest.fixture(scope="module", params=["local", "dask"])
def route(request):
    """run_sweep's keyword arguments for one route: the local one, or a Dask cluster."""
    return {} if request.param == "local" else {"executor": request.getfixturevalue("dask_pool")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, route):
    folder = tmp_path_factory.mktemp("sweeps") / "finished"
    return folder, sweep(folder, GRID, **route)


def wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.2)


def sweep_process(output, *arguments):
    """A lora-sweep of the fixture in a process (and process group) of its own."""
    command = [sys.executable, "-m", "lora_core.suite.sweep", str(NOTEBOOK), "--output", str(output)]
    return subprocess.Popen(
        [*command, "--no-html", *arguments],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


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


def test_runs_start_in_the_notebook_folder_on_this_interpreter(finished, route):
    folder, _ = finished
    record = json.loads((folder / "x=1.0__repeats=1" / "metrics.json").read_text())
    assert record["environment"]["python"] == sys.executable
    if not route:
        assert record["environment"]["cwd"] == str(NOTEBOOK.parent.resolve())
        assert record["parameters"]["output_dir"] == str(folder / "x=1.0__repeats=1")
    else:
        # Shipped: the run saw only the worker's scratch copy of the notebook, since removed.
        cwd, output_dir = Path(record["environment"]["cwd"]), Path(record["parameters"]["output_dir"])
        assert output_dir.parent == cwd.parent and not cwd.exists() and folder not in output_dir.parents


def test_finished_sweep_started_again_redoes_nothing(finished, tmp_path, route):
    folder = copy_of(finished, tmp_path)
    before = executions(folder)
    result = sweep(folder, GRID, **route)
    assert list(result.summary["status"]) == ["skipped"] * 4
    assert list(result.summary["loss"]) == list(finished[1].summary["loss"])
    assert executions(folder) == before


def test_changed_fixed_parameter_reruns_the_configs(finished, tmp_path, route):
    folder = copy_of(finished, tmp_path)
    result = sweep(folder, {"x": [1], "repeats": [1]}, {"label": "relabelled"}, **route)
    assert list(result.summary["status"]) == ["ok", "skipped", "skipped", "skipped"]
    assert list(result.summary["label"])[0] == "relabelled"


def test_an_unrecorded_parameter_does_not_stop_a_finished_config_being_skipped(tmp_path):
    first = sweep(tmp_path / "quiet", {"x": [1]}, {"progress": False})
    again = sweep(tmp_path / "quiet", {"x": [1]}, {"progress": False})
    assert list(first.summary["status"]) == ["ok"] and list(again.summary["status"]) == ["skipped"]


def test_sweep_with_another_grid_keeps_the_earlier_configs(finished, tmp_path, route):
    folder = copy_of(finished, tmp_path)
    result = sweep(folder, {"x": [5, 1]}, {"label": "new"}, **route)
    summary = result.summary
    # This sweep's configs first, in grid order; then the earlier sweep's, none dropped.
    assert list(summary["path"]) == ["x=5.0", "x=1.0", *finished[1].summary["path"]]
    assert list(summary["status"]) == ["ok", "ok"] + ["skipped"] * 4
    assert list(summary["loss"]) == [4.0, 4.0, *finished[1].summary["loss"]]
    assert list(summary["repeats"][2:]) == list(finished[1].summary["repeats"])
    assert without_seconds(load_sweep(folder)).equals(without_seconds(summary))
    recorded = json.loads((folder / "sweep.json").read_text())["configs"]
    assert [c["path"] for c in recorded] == list(summary["path"])


def test_half_written_run_is_redone_and_the_rest_skipped(finished, tmp_path, route):
    folder = copy_of(finished, tmp_path)
    (folder / "x=3.0__repeats=2" / "metrics.json").unlink()
    before = executions(folder)
    result = sweep(folder, GRID, **route)
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


def test_each_kind_of_failure_is_recorded_and_the_others_go_on(tmp_path, route):
    result = sweep(
        tmp_path / "failures", {"mode": ["crash", "sleep", "silent", "ok"]}, {"x": 1000}, timeout=1, **route
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


def test_progress_bar_counts_skipped_and_run_configs(finished, tmp_path, route, capsys):
    folder = copy_of(finished, tmp_path)
    (folder / "x=1.0__repeats=2" / "metrics.json").unlink()
    sweep(folder, GRID, progress=True, **route)
    captured = capsys.readouterr()
    assert "3/4" in captured.err and "4/4" in captured.err  # starts at the 3 skipped, ends at 4
    lines = [line.split()[0] for line in captured.out.splitlines() if line.startswith(("ok", "skipped"))]
    assert sorted(lines) == ["ok", "skipped", "skipped", "skipped"]


# ---------------------------------------------------------------------------------------
# Reliability: folder lock, HTML, Ctrl-C, lost workers


def test_second_sweep_into_a_busy_folder_is_refused_and_the_first_is_unharmed(tmp_path, route):
    folder = tmp_path / "busy"
    first = sweep_process(folder, "--grid", "mode=sleep,ok", "--timeout", "6")
    try:
        wait_for(lambda: (folder / "sweep.json").exists() and "pid" in (folder / LOCK_FILE).read_text())
        with pytest.raises(
            SweepBusyError, match=rf"output_dir='{folder}' is in use by another sweep \(pid {first.pid}"
        ):
            sweep(folder, {"mode": ["ok"]}, **route)
        out, err = first.communicate(timeout=180)
    finally:
        first.kill()
    # The first sweep's configs are its own: a timeout and a success, no false failure.
    summary = load_sweep(folder)
    assert first.returncode == 1, err
    assert list(summary["status"]) == ["failed", "ok"] and summary["error"][0].startswith("CellTimeoutError")
    # Once the first has finished, the folder is free again.
    assert list(sweep(folder, {"mode": ["ok"]}, **route).summary["status"])[0] == "skipped"


def test_command_line_names_the_busy_folder(tmp_path, capsys):
    folder = tmp_path / "busy"
    folder.mkdir()
    with open(folder / LOCK_FILE, "w") as held:
        held.write("pid 1 on elsewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit) as exit_info:
            main([str(NOTEBOOK), "--grid", "x=1,2", "--output", str(folder)])
    assert (
        exit_info.value.code == 2
        and "in use by another sweep (pid 1 on elsewhere)" in capsys.readouterr().err
    )
    assert not (folder / "x=1.0").exists()


def test_config_whose_html_failed_is_not_finished_and_runs_again(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(reports, "render_html", broken)
        result = sweep(tmp_path / "html", {"x": [1]}, render_html=True)
    assert list(result.summary["error"]) == ["HTMLRenderError: OSError: disk full"]
    assert not (tmp_path / "html" / "x=1.0" / "metrics.json").exists()
    assert (tmp_path / "html" / "x=1.0" / "metrics.incomplete.json").exists()

    result = sweep(tmp_path / "html", {"x": [1]}, render_html=True)
    assert list(result.summary["status"]) == ["ok"]
    assert (tmp_path / "html" / "x=1.0" / "quadratic.html").exists()
    # Finished with its HTML: a third run skips it; without the HTML it would run again.
    assert list(sweep(tmp_path / "html", {"x": [1]}, render_html=True).summary["status"]) == ["skipped"]


def test_ctrl_c_cancels_queued_configs_at_once_with_one_line(tmp_path):
    folder = tmp_path / "interrupted"
    process = sweep_process(folder, "--grid", "x=1,2,4", "--param", "mode=sleep", "--jobs", "2")
    try:
        running = [folder / "x=1.0" / "quadratic.ipynb", folder / "x=2.0" / "quadratic.ipynb"]
        wait_for(lambda: all(path.exists() for path in running))
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        # Each config sleeps 60 s: an exit well before that means nothing was waited for.
        out, err = process.communicate(timeout=40)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in err and "interrupted" in err
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1
    assert not (folder / "x=4.0").exists()  # the queued config never started
    assert list(load_sweep(folder)["status"]) == ["pending"] * 3


def test_ctrl_c_on_a_local_dask_cluster_exits_with_one_line(tmp_path):
    pytest.importorskip("distributed")
    folder = tmp_path / "interrupted"
    process = sweep_process(folder, "--grid", "x=1,2,4", "--param", "mode=sleep", "--dask", "local:2")
    try:
        # Shipped runs write nothing into the folder until they finish: give the cluster
        # and two kernels time to start (each config then sleeps 60 s).
        time.sleep(15)
        os.killpg(process.pid, signal.SIGINT)  # the whole group, workers included, as a terminal does
        out, err = process.communicate(timeout=40)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert len([line for line in err.splitlines() if "interrupted" in line]) == 1
    assert list(load_sweep(folder)["status"]) == ["pending"] * 3


def test_config_whose_worker_is_killed_is_retried_once_then_recorded(tmp_path, dask_pool):
    marker = tmp_path / "killed-once"
    grid = {"mode": ["kill_worker", "kill_worker_once", "ok"]}
    result = sweep(tmp_path / "lost", grid, {"label": str(marker)}, executor=dask_pool)
    summary = result.summary.set_index("mode")
    assert summary.loc["kill_worker", "status"] == "failed"
    assert summary.loc["kill_worker", "error"].startswith("KilledWorker")
    assert "submitted 2 times" in summary.loc["kill_worker", "error"]
    # Killed on its first worker, finished on the retry; the other config unaffected.
    assert marker.exists() and list(summary.loc[["kill_worker_once", "ok"], "status"]) == ["ok", "ok"]
    # A rerun resumes as on the local route: what finished is skipped.
    again = sweep(
        tmp_path / "lost", {"mode": ["kill_worker_once", "ok"]}, {"label": str(marker)}, executor=dask_pool
    )
    assert list(again.summary["status"])[:2] == ["skipped", "skipped"]


def test_kernels_on_a_local_cluster_get_one_thread_and_no_malloc_trim(finished, route):
    folder, _ = finished
    env = json.loads((folder / "x=1.0__repeats=1" / "metrics.json").read_text())["environment"]["env"]
    if route:
        # One thread per worker; Dask's trim threshold made every kernel train ~1.7x slower.
        assert env == {"OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": None}
    else:
        assert env == {name: os.environ.get(name) for name in env}


def test_starting_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    pytest.importorskip("distributed")
    from lora_core.suite.cluster import dask_executor

    # What Dask's nanny would write here (cleared first: an earlier cluster may have leaked).
    for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with dask_executor("local:1") as executor:
        inside = dict(os.environ)
        assert executor.submit(lambda: os.environ.get("OMP_NUM_THREADS")).result() == "1"
    assert inside == before and dict(os.environ) == before


def test_a_shipped_config_kernel_leaves_out_a_workers_malloc_trim(tmp_path, monkeypatch):
    from lora_core.suite.sweep import run_shipped_config

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as Dask's nanny sets it on a worker
    outcome = run_shipped_config(NOTEBOOK.name, NOTEBOOK.read_text(), {"x": 2.0}, None, False, None)
    record = json.loads(outcome["files"]["metrics.json"])
    assert record["metrics"]["loss"] == 1.0
    assert record["environment"]["env"]["MALLOC_TRIM_THRESHOLD_"] is None


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dask", "bogus"], r"--dask bogus is not allowed: expected local, local:N, a scheduler address"),
        (["--dask", "local:0"], r"--dask local:0 is not allowed: expected local:N with N >= 1"),
        (["--dask", "local:2", "--jobs", "2"], r"--jobs 2 with --dask is not allowed"),
    ],
)
def test_command_line_refuses_a_bad_dask_cluster_before_anything_runs(tmp_path, capsys, arguments, message):
    pytest.importorskip("distributed")
    with pytest.raises(SystemExit) as exit_info:
        main([str(NOTEBOOK), "--grid", "x=1,2", "--output", str(tmp_path / "cli"), *arguments])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "cli").exists()


def test_a_shipped_run_that_cannot_be_written_fails_alone(tmp_path, monkeypatch):
    # Shipped files are written by the client: a write that fails (a full disk, a
    # folder it may not write to) is that config's failure, as on the local route.
    write = sweep_module._write_shipped

    def failing(folder, files):
        if folder.name == "x=1.0":
            raise OSError(28, "No space left on device")
        write(folder, files)

    monkeypatch.setattr(sweep_module, "_write_shipped", failing)
    with ThreadPoolExecutor(max_workers=1) as pool:
        result = sweep(tmp_path / "shipped", {"x": [1, 5]}, executor=pool, ship_files=True)
    summary = result.summary.set_index("x")
    assert list(summary["status"]) == ["failed", "ok"] and summary.loc[5.0, "loss"] == 4.0
    assert summary.loc[1.0, "error"].startswith("OSError: its files could not be written into")
    assert not (tmp_path / "shipped" / "x=1.0" / "metrics.json").exists()  # a rerun redoes it
    monkeypatch.undo()
    with ThreadPoolExecutor(max_workers=1) as pool:
        again = sweep(tmp_path / "shipped", {"x": [1, 5]}, executor=pool, ship_files=True)
    assert list(again.summary["status"]) == ["ok", "skipped"]


class _FailingExecutor(Executor):
    """Every submitted config fails in the executor itself, never in the notebook."""

    def __init__(self, error):
        self.error, self.submitted = error, 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        future = Future()
        future.set_exception(self.error)
        return future


def test_a_config_the_executor_cannot_run_is_not_retried(tmp_path):
    # A worker without the suite installed cannot unpickle the task: no retry helps, and
    # the error must not read as a lost worker.
    executor = _FailingExecutor(ModuleNotFoundError("No module named 'papermill'"))
    result = sweep(tmp_path / "broken", {"x": [1]}, executor=executor)
    assert executor.submitted == 1
    error = result.summary["error"].iloc[0]
    assert error == "ModuleNotFoundError: No module named 'papermill' (the executor could not run the config)"


def test_a_config_whose_process_was_lost_is_retried_once(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    executor = _FailingExecutor(BrokenProcessPool("a process of the pool died"))
    result = sweep(tmp_path / "lost", {"x": [1]}, executor=executor)
    assert executor.submitted == 2
    assert result.summary["error"].iloc[0].endswith("(the executor lost the config, submitted 2 times)")


def test_command_line_names_a_scheduler_that_does_not_answer(tmp_path, capsys):
    pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(NOTEBOOK),
                "--grid",
                "x=1,2",
                "--output",
                str(tmp_path / "cli"),
                "--dask",
                "tcp://127.0.0.1:9",
            ]
        )
    assert exit_info.value.code == 2
    assert "--dask tcp://127.0.0.1:9 is not allowed: no scheduler answered there" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_a_local_worker_killed_mid_config_is_retried_in_a_fresh_pool(tmp_path):
    # A pool process that dies breaks the whole pool, and the configs running beside it
    # are lost with it: each is retried once in a fresh pool, and the queued ones still run.
    marker = tmp_path / "killed-once"
    grid = {"mode": ["kill_worker_once", "ok"], "x": [1, 2]}
    result = sweep(tmp_path / "lost", grid, {"label": str(marker)}, jobs=2)
    assert marker.exists() and list(result.summary["status"]) == ["ok"] * 4
    lost = sweep(tmp_path / "lost-twice", {"mode": ["kill_worker"]}, jobs=2)
    error = lost.summary["error"].iloc[0]
    assert error.startswith("BrokenProcessPool") and error.endswith(
        "(the executor lost the config, submitted 2 times)"
    )


def test_a_shipped_run_arrives_with_its_html_and_its_subfolders(tmp_path, dask_pool):
    result = sweep(tmp_path / "html", {"x": [1]}, executor=dask_pool, render_html=True)
    folder = tmp_path / "html" / result.summary["path"].iloc[0]
    assert (folder / "quadratic.html").stat().st_size > 0 and (folder / "metrics.json").exists()
    # Files in subfolders (a notebook's adapter/) land where they were written, and
    # metrics.json, which marks the run finished, is written last.
    order = []
    replace = os.replace
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", lambda src, dst: order.append(Path(dst).name) or replace(src, dst))
        sweep_module._write_shipped(tmp_path / "nested", {"metrics.json": b"{}", "adapter/weights.bin": b"w"})
    assert (tmp_path / "nested" / "adapter" / "weights.bin").read_bytes() == b"w"
    assert order == ["weights.bin", "metrics.json"]


@pytest.mark.parametrize("how", ["address", "scheduler file"])
def test_command_line_runs_on_a_running_scheduler(tmp_path, dask_pool, how):
    client = dask_pool._client
    if how == "address":
        cluster = client.scheduler.address
    else:
        cluster = str(tmp_path / "scheduler.json")  # what `dask scheduler --scheduler-file` writes
        Path(cluster).write_text(json.dumps({"type": "Scheduler", "address": client.scheduler.address}))
    output = tmp_path / "cli"
    code = main([str(NOTEBOOK), "--grid", "x=1,5", "--output", str(output), "--no-html", "--dask", cluster])
    summary = load_sweep(output)
    assert code == 0 and list(summary["loss"]) == [4.0, 4.0] and list(summary["status"]) == ["ok", "ok"]
    assert client.status == "running"  # the sweep's own client closed, the cluster left running


def test_workers_that_cannot_warm_up_still_run_the_sweep(tmp_path, monkeypatch):
    # Warming each worker's kernel server as the sweep connects is only a saving: a
    # worker on which it fails (another lora_core version, say) still runs its configs.
    pytest.importorskip("distributed")
    from lora_core.suite import cluster

    def fails_on_the_worker():
        raise RuntimeError("this worker cannot warm up")

    monkeypatch.setattr(cluster, "warm_worker", fails_on_the_worker)
    with cluster.dask_executor("local:1") as executor:
        result = sweep(tmp_path / "cold", {"x": [1, 2]}, executor=executor)
    assert list(result.summary["status"]) == ["ok", "ok"]
