"""The general property for the suite's public functions: a call that raises leaves its
arguments and every file under its folders as they were (nothing half-written)."""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from lora_core import suite
from lora_core.suite import regression, reports

QUADRATIC = Path(__file__).resolve().parents[1] / "data" / "quadratic.ipynb"
BASELINE = {"notebook": "nb", "metrics": {"loss": {"value": 1.0, "rtol": 0.1}}}


def run_folder(t):
    reports.write_metrics(t / "run", "other_notebook", {"n": 4}, {"loss": 2.0}, environment={})
    return t / "run"


def baseline(t):
    return reports.write_json_atomic(t / "base.json", BASELINE)


def namespace_with_bad_value(t):
    return {"n": 0, "output_dir": str(t / "out"), "__annotations__": {"n": int, "output_dir": str}}


# name -> a function of tmp_path giving (callable, args, kwargs) that must raise
# ValueError (TypeError for a value JSON cannot hold, as write_json_atomic documents).
CASES = {
    "update_baseline": lambda t: (suite.update_baseline, [run_folder(t), baseline(t)], {}),
    "check_metrics": lambda t: (
        suite.check_metrics,
        [run_folder(t), {"metrics": {"loss": {"min": 2, "max": 1}}}],
        {},
    ),
    "write_metrics": lambda t: (suite.write_metrics, [t / "new", "nb", {"n": 1}, ["loss"]], {}),
    "write_json_atomic": lambda t: (suite.write_json_atomic, [t / "x.json", {"a": object()}], {}),
    "read_parameters": lambda t: (suite.read_parameters, [namespace_with_bad_value(t)], {}),
    "parse_list": lambda t: (suite.parse_list, ["ranks", "1, 1"], {}),
    "save_figure": lambda t: (suite.save_figure, [None, t, "../escape"], {}),
    "show_figure": lambda t: (suite.show_figure, [None, t, "../escape"], {}),
    "execute_notebook": lambda t: (suite.execute_notebook, [QUADRATIC, t / "out", {"nope": 1}], {}),
    "run_sweep": lambda t: (suite.run_sweep, [QUADRATIC, {"x": [1, 1]}, {}, t / "sweep"], {}),
    "plot_metric_vs": lambda t: (
        suite.plot_metric_vs,
        [pd.DataFrame({"r": [1, 2], "loss": [1.0, 2.0]}), "r", "nope"],
        {},
    ),
}


def tree(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def comparable(value):
    if isinstance(value, pd.DataFrame):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, dict):
        return json.dumps({k: repr(v) for k, v in value.items()}, sort_keys=True)
    return repr(copy.copy(value))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_suite_call_that_raises_leaves_its_arguments_and_files_unchanged(name, tmp_path):
    function, args, kwargs = CASES[name](tmp_path)
    files, arguments = tree(tmp_path), comparable([args, kwargs])
    with pytest.raises((ValueError, TypeError)):
        function(*args, **kwargs)
    assert tree(tmp_path) == files, f"{name} wrote or changed files before raising"
    assert comparable([args, kwargs]) == arguments, f"{name} changed its arguments before raising"


def test_update_baseline_of_another_notebook_is_refused_by_name(tmp_path):
    with pytest.raises(regression.BaselineError, match="the run is from notebook 'other_notebook'"):
        suite.update_baseline(run_folder(tmp_path), baseline(tmp_path))
