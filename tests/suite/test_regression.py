"""Regression checks: each spec kind passes inside its tolerance and fails just outside."""

import json
from xml.etree import ElementTree

import pytest

from lora_core.suite import regression, reports

BASELINE = {
    "notebook": "01_rank1_recovery",
    "scale": "small",
    "metrics": {
        "pretrain_loss": {"value": 100.0, "rtol": 0.15},
        "delta_mean": {"value": 1.0, "atol": 0.005},
        "lora_final_loss": {"max": 0.01},
        "cosine": {"min": 0.99},
        "merged_loss": {"value": 0.0013, "rtol": 0.001, "max": 0.01},
        "lora_parameters": {"value": 2001},
    },
}
GOOD = {
    "pretrain_loss": 110.0,
    "delta_mean": 0.9999,
    "lora_final_loss": 0.0013,
    "cosine": 0.999,
    "merged_loss": 0.0013,
    "lora_parameters": 2001,
    "lora_seconds": 3.2,
}


def check(**changes):
    metrics = {**GOOD, **changes}
    return regression.check_metrics({"notebook": "01_rank1_recovery", "metrics": metrics}, BASELINE)


def row(report, metric):
    return report.table.set_index("metric").loc[metric]


def test_metrics_within_every_tolerance_pass():
    report = check()
    assert report.ok
    assert list(report.table.columns[:5]) == ["metric", "baseline", "got", "tolerance", "ok"]
    assert len(report.table) == len(BASELINE["metrics"])
    assert report.unchecked == ["lora_seconds"]


@pytest.mark.parametrize(
    "metric, inside, outside",
    [
        ("pretrain_loss", 114.9, 115.1),  # rtol 15% of 100, above
        ("pretrain_loss", 85.1, 84.9),  # and below
        ("delta_mean", 1.0049, 1.0051),  # atol 0.005
        ("lora_final_loss", 0.01, 0.0101),  # max is inclusive
        ("cosine", 0.99, 0.9899),  # min is inclusive
        ("merged_loss", 0.00130125, 0.00130135),  # rtol 1e-3 combined with a max
        ("lora_parameters", 2001, 2002),  # a bare value must match exactly
    ],
)
def test_each_spec_kind_fails_just_outside_its_tolerance(metric, inside, outside):
    assert check(**{metric: inside}).ok
    report = check(**{metric: outside})
    assert not report.ok
    assert report.failed == [metric]
    assert row(report, metric)["got"] == pytest.approx(outside)


def test_every_bound_of_a_combined_spec_is_enforced():
    baseline = {"metrics": {"loss": {"value": 0.02, "rtol": 1.0, "max": 0.01}}}
    report = regression.check_metrics({"loss": 0.015}, baseline)  # within rtol, above max
    assert not report.ok
    assert "above max" in row(report, "loss")["note"]


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), "0.001"])
def test_a_value_that_is_not_a_finite_number_fails(value):
    report = check(lora_final_loss=value)
    assert report.failed == ["lora_final_loss"]
    assert "not a finite number" in row(report, "lora_final_loss")["note"]


def test_a_missing_metric_fails():
    metrics = {k: v for k, v in GOOD.items() if k != "cosine"}
    report = regression.check_metrics(metrics, BASELINE)
    assert report.failed == ["cosine"]
    assert row(report, "cosine")["note"] == "missing"
    assert "FAILED" in str(report) and "missing" in str(report)


def test_a_run_of_another_notebook_fails_against_the_baseline():
    report = regression.check_metrics({"notebook": "02_rank_sweep", "metrics": GOOD}, BASELINE)
    assert not report.ok
    assert "02_rank_sweep" in report.problems[0]


def test_flat_metrics_of_a_users_own_notebook_are_accepted(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"accuracy": 0.93}))
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"accuracy": {"min": 0.9}}}))
    assert regression.check_metrics(tmp_path / "mine.json", tmp_path / "base.json").ok


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"rtol": 0.1}, 'need a "value"'),
        ({"value": 1.0, "tol": 0.1}, "unknown spec keys"),
        ({"value": 1.0, "rtol": -0.1}, "rtol"),
        ({}, "non-empty"),
    ],
)
def test_malformed_specs_are_refused_with_the_metric_named(spec, message):
    with pytest.raises(regression.BaselineError, match=message):
        regression.check_metrics(GOOD, {"metrics": {"delta_mean": spec}})


# ---- update_baseline ----------------------------------------------------------------------


def test_update_rewrites_values_and_keeps_every_tolerance(tmp_path):
    path = reports.write_json_atomic(tmp_path / "base.json", BASELINE)
    new = {**GOOD, "pretrain_loss": 200.0, "merged_loss": 0.002, "new_metric": 5.0}
    regression.update_baseline(new, path)
    written = json.loads(path.read_text())
    assert written["scale"] == "small" and written["notebook"] == "01_rank1_recovery"
    assert written["metrics"]["pretrain_loss"] == {"value": 200.0, "rtol": 0.15}
    assert written["metrics"]["merged_loss"] == {"value": 0.002, "rtol": 0.001, "max": 0.01}
    assert written["metrics"]["lora_final_loss"] == {"max": 0.01}
    assert "new_metric" not in written["metrics"]  # no default spec: not added
    assert regression.check_metrics(new, path).ok


def test_update_adds_new_metrics_with_the_default_spec_but_not_timings(tmp_path):
    path = reports.write_json_atomic(tmp_path / "base.json", BASELINE)
    regression.update_baseline({**GOOD, "new_metric": 5.0}, path, default_spec={"rtol": 0.05})
    written = json.loads(path.read_text())["metrics"]
    assert written["new_metric"] == {"value": 5.0, "rtol": 0.05}
    assert "lora_seconds" not in written


def test_update_refuses_when_a_baselined_metric_is_missing_and_changes_nothing(tmp_path):
    path = reports.write_json_atomic(tmp_path / "base.json", BASELINE)
    before = path.read_text()
    with pytest.raises(regression.BaselineError, match="cosine"):
        regression.update_baseline({**GOOD, "cosine": None}, path)
    assert path.read_text() == before


# ---- command line -------------------------------------------------------------------------


@pytest.fixture()
def files(tmp_path):
    run = tmp_path / "run"
    reports.write_metrics(run, "01_rank1_recovery", {}, GOOD, environment={})
    baseline = reports.write_json_atomic(tmp_path / "base.json", BASELINE)
    return run, baseline


def test_cli_exits_0_and_prints_the_table_when_everything_passes(files, capsys):
    run, baseline = files
    assert regression.main([str(run / "metrics.json"), str(baseline)]) == 0
    out = capsys.readouterr().out
    assert "pretrain_loss" in out and "rtol 0.15" in out and "<= 0.01" in out


def test_cli_exits_1_on_drift(files, capsys):
    run, baseline = files
    reports.write_metrics(run, "01_rank1_recovery", {}, {**GOOD, "delta_mean": 1.1}, environment={})
    assert regression.main([str(run), str(baseline)]) == 1
    assert "FAILED: 1 of 6" in capsys.readouterr().out


def test_cli_exits_2_with_a_message_on_bad_input(files, tmp_path, capsys):
    run, baseline = files
    assert regression.main([str(tmp_path / "nowhere.json"), str(baseline)]) == 2
    assert "no metrics file" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"metrics": {"a": ')
    assert regression.main([str(run), str(tmp_path / "broken.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lora-regress: error:") and "Traceback" not in err
    assert "broken.json is not valid JSON" in err
    with pytest.raises(SystemExit) as stop:
        regression.main([str(run)])  # argparse's own usage error
    assert stop.value.code == 2


def test_cli_update_rewrites_the_baseline_and_the_next_check_passes(files, capsys):
    run, baseline = files
    reports.write_metrics(run, "01_rank1_recovery", {}, {**GOOD, "delta_mean": 1.1}, environment={})
    assert regression.main([str(run), str(baseline), "--update"]) == 0
    assert json.loads(baseline.read_text())["metrics"]["delta_mean"] == {"value": 1.1, "atol": 0.005}
    assert regression.main([str(run), str(baseline)]) == 0


def test_cli_update_creates_a_baseline_only_with_a_tolerance(files, tmp_path, capsys):
    run, _ = files
    fresh = tmp_path / "fresh.json"
    assert regression.main([str(run), str(fresh), "--update"]) == 2
    assert not fresh.exists()
    assert regression.main([str(run), str(fresh), "--update", "--rtol", "0.01"]) == 0
    written = json.loads(fresh.read_text())
    assert written["notebook"] == "01_rank1_recovery"
    assert set(written["metrics"]) == set(GOOD) - {"lora_seconds"}


# ---- output formats for CI ----------------------------------------------------------------


def test_cli_junit_has_one_test_case_per_metric_and_names_the_drifted_one(files, capsys):
    run, baseline = files
    reports.write_metrics(run, "01_rank1_recovery", {}, {**GOOD, "delta_mean": 1.1}, environment={})
    assert regression.main([str(run), str(baseline), "--format", "junit"]) == 1
    suite = ElementTree.fromstring(capsys.readouterr().out).find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == set(BASELINE["metrics"])
    assert (suite.get("tests"), suite.get("failures")) == ("6", "1")
    failed = [name for name, case in cases.items() if case.find("failure") is not None]
    assert failed == ["delta_mean"]
    assert "off by 0.1" in cases["delta_mean"].find("failure").get("message")
    assert {case.get("classname") for case in cases.values()} == {"base"}


def test_cli_markdown_is_a_table_with_a_row_per_metric(files, capsys):
    run, baseline = files
    reports.write_metrics(run, "01_rank1_recovery", {}, {**GOOD, "cosine": None}, environment={})
    assert regression.main([str(run), str(baseline), "--format", "markdown"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "### base: FAILED: 1 of 6 metrics"
    table = [line for line in lines if line.startswith("|")]
    header, rule, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert header == ["metric", "baseline", "got", "tolerance", "ok", "note"]
    assert set(rule) == {"---"} and all(len(row) == len(header) for row in rows)
    by_metric = {row[0]: row for row in rows}
    assert set(by_metric) == set(BASELINE["metrics"])
    assert by_metric["cosine"][1:] == ["", "", ">= 0.99", "**FAILED**", "not a finite number: None"]
    assert by_metric["delta_mean"][1:5] == ["1", "0.9999", "atol 0.005", "ok"]
    assert "Not in the baseline (unchecked): `lora_seconds`" in lines


def test_markdown_cells_escape_pipes_and_line_breaks():
    report = regression.check_metrics({"a|b": 1.0}, {"metrics": {"a|b": {"max": 0.5}}})
    row = [line for line in report.to_markdown().splitlines() if line.startswith("| a")][0]
    assert row.startswith("| a\\|b | ") and len(row.replace("\\|", "").split("|")) == 8


def test_cli_json_round_trips_the_table(files, capsys):
    run, baseline = files
    assert regression.main([str(run), str(baseline), "--format", "json"]) == 0
    content = json.loads(capsys.readouterr().out)
    assert content["ok"] is True and content["failed"] == [] and content["name"] == "base"
    assert [row["metric"] for row in content["metrics"]] == list(BASELINE["metrics"])
    assert content["metrics"][2] == {
        "metric": "lora_final_loss",
        "baseline": None,
        "got": 0.0013,
        "tolerance": "<= 0.01",
        "ok": True,
        "note": "",
    }
    assert content["unchecked"] == ["lora_seconds"]


def test_cli_refuses_a_format_with_update(files, capsys):
    run, baseline = files
    with pytest.raises(SystemExit) as stop:
        regression.main([str(run), str(baseline), "--update", "--format", "json"])
    assert stop.value.code == 2
    assert "--format applies to the check" in capsys.readouterr().err
