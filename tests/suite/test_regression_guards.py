"""lora-regress never writes or passes what it cannot vouch for.

A baseline records the parameters of the run it was made from: a run with other
parameters is reported as such, first. ``--update`` refuses (exit 2, file untouched) a
run of another notebook, a run with other parameters and a run whose new metrics are not
numbers, unless ``--force``. A baseline that no value could pass is refused when read.
"""

import json
import os
import stat

import pytest

from lora_core.suite import regression, reports

PARAMETERS = {"n": 10000, "lr": 0.001, "init": "gaussian"}
BASELINE = {
    "notebook": "01_rank1_recovery",
    "parameters": PARAMETERS,
    "metrics": {"loss": {"value": 1.0, "rtol": 0.1}, "mean": {"value": 1.0, "atol": 0.01}},
}
GOOD = {"loss": 1.02, "mean": 1.001}


@pytest.fixture
def files(tmp_path):
    baseline = reports.write_json_atomic(tmp_path / "base.json", BASELINE)
    return tmp_path / "run", baseline


def write_run(folder, metrics=GOOD, notebook="01_rank1_recovery", **parameters):
    all_parameters = {**PARAMETERS, "output_dir": str(folder), "device": "cpu", **parameters}
    reports.write_metrics(folder, notebook, all_parameters, metrics, environment={})
    return folder


def test_a_run_with_the_baselines_parameters_passes_whatever_its_folder_and_device(files):
    run, baseline = files
    assert regression.check_metrics(write_run(run, device="cuda"), baseline).ok


def test_a_run_with_other_parameters_says_so_before_any_metric(files, capsys):
    run, baseline = files
    write_run(run, {"loss": 5.0, "mean": 1.001}, n=400)
    assert regression.main([str(run), str(baseline)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "problem: parameters differ: n 400 vs 10000"


def test_a_baseline_without_parameters_checks_only_metrics(files, tmp_path):
    run, _ = files
    plain = reports.write_json_atomic(tmp_path / "plain.json", {"metrics": BASELINE["metrics"]})
    assert regression.check_metrics(write_run(run, n=400), plain).ok


def test_update_refuses_a_run_of_another_notebook_and_leaves_the_file(files, capsys):
    run, baseline = files
    before = baseline.read_bytes()
    write_run(run, {"loss": 3.0, "mean": 1.0}, notebook="02_rank_sweep")
    assert regression.main([str(run), str(baseline), "--update"]) == 2
    err = capsys.readouterr().err
    assert (
        "refusing to update the baseline: the run is from notebook '02_rank_sweep'" in err
        and "--force" in err
    )
    assert baseline.read_bytes() == before


def test_update_refuses_a_run_with_other_parameters_unless_forced(files, capsys):
    run, baseline = files
    before = baseline.read_bytes()
    write_run(run, {"loss": 3.0, "mean": 1.0}, n=400)
    assert regression.main([str(run), str(baseline), "--update"]) == 2
    assert "parameters differ: n 400 vs 10000" in capsys.readouterr().err
    assert baseline.read_bytes() == before
    assert regression.main([str(run), str(baseline), "--update", "--force"]) == 0
    written = json.loads(baseline.read_text())
    assert written["parameters"] == {**PARAMETERS, "n": 400}
    assert written["metrics"]["loss"] == {"value": 3.0, "rtol": 0.1}
    assert regression.main([str(run), str(baseline)]) == 0


def test_a_new_baseline_refuses_metrics_that_are_not_numbers_unless_forced(tmp_path, capsys):
    run = write_run(tmp_path / "run", {"loss": 1.0, "mean": float("nan"), "spread": None})
    fresh = tmp_path / "fresh.json"
    assert regression.main([str(run), str(fresh), "--update", "--rtol", "0.1"]) == 2
    assert "not a number in the run, so it would be left out: mean, spread" in capsys.readouterr().err
    assert not fresh.exists()
    assert regression.main([str(run), str(fresh), "--update", "--rtol", "0.1", "--force"]) == 0
    written = json.loads(fresh.read_text())
    assert set(written["metrics"]) == {"loss"}
    # The run's parameters are recorded, but not where it wrote nor on which device.
    assert written["parameters"] == PARAMETERS


def test_update_keeps_a_baselines_file_mode(files):
    run, baseline = files
    os.chmod(baseline, 0o640)
    write_run(run, {"loss": 1.05, "mean": 1.0})
    assert regression.main([str(run), str(baseline), "--update"]) == 0
    assert stat.S_IMODE(baseline.stat().st_mode) == 0o640


def test_a_spec_whose_min_exceeds_its_max_is_refused_when_read():
    spec = {"metrics": {"loss": {"min": 2.0, "max": 1.0}}}
    with pytest.raises(regression.BaselineError, match=r"metric 'loss': min 2 > max 1: no value can pass"):
        regression.load_baseline(spec)


def test_parameters_that_are_not_an_object_are_refused():
    with pytest.raises(regression.BaselineError, match=r'"parameters" must be an object'):
        regression.load_baseline({"parameters": ["n", 400], "metrics": {}})
