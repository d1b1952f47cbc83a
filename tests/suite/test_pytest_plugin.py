"""The pytest plugin, run as a user would: pytest in a fresh folder with a small notebook.

Each test starts pytest in a subprocess (``pytester``) with the plugin named by ``-p``, on
a notebook made here: it writes ``metrics.json`` with ``loss = (x - 3)**2`` and appends a
line to ``runs.log`` beside it, so a test can count how often it really ran.
"""

import json
from pathlib import Path

import nbformat
import pytest

from lora_core.suite.pytest_plugin import NotebookRun, assert_baseline

PLUGIN = ("-p", "lora_core.suite.pytest_plugin", "-p", "no:cacheprovider")
PARAMETERS = 'x: float = 1.0  # where (x - 3)**2 is evaluated\noutput_dir: str = "out"  # metrics folder'
BODY = """\
import json, os
loss = (x - 3) ** 2
with open("runs.log", "a") as log:
    log.write(f"{x}\\n")
os.makedirs(output_dir, exist_ok=True)
with open(os.path.join(output_dir, "metrics.json"), "w") as f:
    json.dump({"notebook": NAME, "metrics": {"loss": loss, "x": x}}, f)
"""


def make_notebook(folder: Path, name: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})
    notebook.cells = [parameters, nbformat.v4.new_code_cell(BODY.replace("NAME", repr(name)))]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


def write_baseline(folder: Path, name: str, loss: float, size: str = "full") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{size}.json"
    specs = {"loss": {"value": loss, "rtol": 0.01}, "x": {"min": 0.0}}
    path.write_text(json.dumps({"notebook": name, "metrics": specs}))
    return path


@pytest.fixture
def project(pytester):
    """A user's repository: notebooks/square.ipynb and its full baseline (loss 4 at x = 1)."""
    make_notebook(pytester.path / "notebooks", "square")
    write_baseline(pytester.path / "baselines", "square", loss=4.0)
    return pytester


def run_plugin(pytester, *args):
    options = ("--lora-notebooks", "notebooks", "--lora-baselines", "baselines", "--lora-output", "out")
    return pytester.runpytest_subprocess(*PLUGIN, *options, "-v", *args)


def runs_logged(pytester):
    log = pytester.path / "notebooks" / "runs.log"
    return log.read_text().split() if log.exists() else []


def test_a_notebook_is_collected_run_once_and_each_metric_checked(project):
    result = run_plugin(project)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*square.ipynb::run PASSED*", "*::loss PASSED*", "*::x PASSED*"])
    assert runs_logged(project) == ["1.0"]
    kept = project.path / "out" / "notebooks" / "square"
    for name in ("square.ipynb", "square.html", "metrics.json", "regression.md"):
        assert (kept / name).is_file(), name
    assert "| loss | 4 | 4 | rtol 0.01 | ok |" in (project.path / "out" / "summary.md").read_text()


def test_an_injected_drift_fails_naming_the_metric(project):
    result = run_plugin(project, "--lora-param", "x=2")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*::loss FAILED*", "*loss: off by 3 (75.00%), allowed 0.04*"])
    assert "**FAILED**" in (project.path / "out" / "summary.md").read_text()


def test_regen_rewrites_values_keeps_tolerances_and_fails_the_run(project):
    baseline = project.path / "baselines" / "square.full.json"
    result = run_plugin(project, "--lora-param", "x=6", "--lora-regen")
    # The run fails, so regenerating is never silent; the metrics fit the new values.
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*::run FAILED*", "*baseline regenerated from this run*"])
    specs = json.loads(baseline.read_text())["metrics"]
    assert specs == {"loss": {"value": 9.0, "rtol": 0.01}, "x": {"min": 0.0}}
    run_plugin(project, "--lora-param", "x=6").assert_outcomes(passed=3)


def test_a_missing_baseline_fails_saying_how_to_create_it(project):
    make_notebook(project.path / "notebooks", "cube")
    result = run_plugin(project, "-k", "cube")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*no baseline at baselines/cube.full.json*",
            "*lora-regress */out/notebooks/cube baselines/cube.full.json --update*",
        ]
    )


def test_size_picks_the_baseline_and_params_reach_the_notebook(project):
    write_baseline(project.path / "baselines", "square", loss=1.0, size="small")
    run_plugin(project, "--lora-size", "small", "--lora-param", "x=2").assert_outcomes(passed=3)


def test_bad_parameters_are_refused_naming_them(project):
    result = run_plugin(project, "--lora-param", "y=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lora-param y: no collected notebook declares it*"])
    result = run_plugin(project, "--lora-param", "x=two")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*x='two' is not allowed: expected a float*"])
    assert runs_logged(project) == []


def test_the_output_folder_is_emptied_only_when_the_plugin_made_it(project):
    (project.path / "mine").mkdir()
    (project.path / "mine" / "keep.txt").write_text("a user's file")
    result = project.runpytest_subprocess(
        *PLUGIN, "--lora-notebooks", "notebooks", "--lora-baselines", "baselines", "--lora-output", "mine"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (project.path / "mine" / "keep.txt").exists()


def test_xdist_workers_run_each_notebook_once_in_its_own_folder(project):
    pytest.importorskip("xdist")
    make_notebook(project.path / "notebooks", "cube")
    write_baseline(project.path / "baselines", "cube", loss=4.0)
    result = run_plugin(project, "-n", "2")
    result.assert_outcomes(passed=6)
    # Each notebook ran once, although its three items were spread over two workers.
    assert sorted(runs_logged(project)) == ["1.0", "1.0"]
    summary = (project.path / "out" / "summary.md").read_text()
    assert summary.count("### square: ok") == 1
    assert "### cube: ok" in summary


# ---------------------------------------------------------------------------------------
# For hand-written tests: the fixture and the assertion helper


def test_run_notebook_fixture_and_assert_baseline_in_a_users_test(project):
    project.makepyfile(
        test_mine="""
        from lora_core.suite.pytest_plugin import assert_baseline

        def test_square(run_notebook):
            run = run_notebook("notebooks/square.ipynb", x=4.0)
            assert run.metrics["loss"] == 1.0 and run.executed.is_file()
            assert_baseline(run, "baselines/square.full.json")
        """
    )
    result = project.runpytest_subprocess(*PLUGIN, "test_mine.py", "--lora-output", "out")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*the run does not fit the baseline:*", "*loss*4*1*rtol 0.01*False*off by 3*"]
    )
    assert (project.path / "out" / "run_notebook" / "square" / "regression.md").is_file()


def test_assert_baseline_passes_quietly_and_fails_with_the_table(tmp_path):
    baseline = write_baseline(tmp_path, "square", loss=4.0)
    assert_baseline({"loss": 4.02, "x": 1.0}, baseline)
    run = NotebookRun(tmp_path / "square.ipynb", tmp_path, {"metrics": {"loss": 5.0, "x": -1.0}})
    with pytest.raises(AssertionError) as failure:
        assert_baseline(run, baseline)
    message = str(failure.value)
    assert "FAILED: 2 of 2 metrics" in message
    assert "off by 1 (25.00%), allowed 0.04" in message and "below min 0" in message
    assert "**FAILED**" in (tmp_path / "regression.md").read_text()


def test_without_its_options_the_plugin_loads_no_notebook_machinery(pytester):
    # Loaded in every pytest run of the environment: papermill and nbformat must wait
    # until a notebook is actually asked for.
    pytester.makepyfile(
        test_other="""
        import sys

        def test_nothing_heavy_was_imported():
            assert not {"papermill", "nbformat", "nbclient", "filelock"} & set(sys.modules)
        """
    )
    pytester.runpytest_subprocess(*PLUGIN).assert_outcomes(passed=1)
