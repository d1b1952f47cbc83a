"""Command lines that would silently drop a value are refused before anything runs.

lora-sweep: the same --grid axis twice, or a name given as both --grid and --param.
python -m lora_core reproduce: a --param that no selected notebook declares (a typo), a
value of the wrong type, the same name twice, or a sweep axis of notebook 04's sweep.
Both: a torch device this machine does not have (on a local route).
Each exits with status 2, a one-line message naming the value, and an untouched folder.
"""

from pathlib import Path

import pytest

from lora_core.suite import reproduce, sweep

REPO = Path(__file__).resolve().parents[2]
QUADRATIC = Path(__file__).resolve().parents[1] / "data" / "quadratic.ipynb"


def refused(main, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--grid", "x=1,2", "--grid", "x=3"], "--grid 'x=3': x is already given by --grid 'x=1,2'"),
        (["--grid", "x=1,2", "--param", "x=3"], "--grid 'x=1,2': x is already given by --param 'x=3'"),
        (["--param", "repeats=1", "--param", "repeats=2"], "--param 'repeats=2': repeats is already given"),
    ],
)
def test_sweep_refuses_a_value_it_would_drop(tmp_path, capsys, options, message):
    out = tmp_path / "sweep"
    assert message in refused(sweep.main, [str(QUADRATIC), "--output", str(out), *options], capsys)
    assert not out.exists()


def test_sweep_still_lets_the_command_line_override_a_parameters_file(tmp_path):
    parameters = tmp_path / "p.yaml"
    parameters.write_text("x: [1.0, 2.0]\nrepeats: 1\n")

    class Args:
        notebook, parameters_file, param, grid = str(QUADRATIC), str(parameters), ["repeats=2"], ["x=3"]

    grid, fixed = sweep._cli_parameters(Args)
    assert grid == {"x": ["3"]} and fixed == {"repeats": "2"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["--param", "learning_rate=0.1"], "--param learning_rate: no notebook selected (01_rank1_recovery)"),
        (["--param", "n=abc"], "n='abc' is not allowed: expected an int"),
        (
            ["--param", "n=400", "--param", "n=500"],
            "--param 'n=500': n is already given by an earlier --param",
        ),
        (["--param", "device=cuda"], "--param 'device=cuda': device is already given by --device"),
    ],
)
def test_reproduce_refuses_a_parameter_it_cannot_use(tmp_path, capsys, params, message):
    reports = tmp_path / "reports"
    argv = ["reproduce", "--only", "01_rank1_recovery", "--reports", str(reports), *params]
    assert message in refused(reproduce.main, argv, capsys)
    assert not reports.exists()


def test_reproduce_accepts_a_name_declared_by_any_selected_notebook_only(tmp_path, capsys):
    reports = tmp_path / "reports"
    argv = ["reproduce", "--only", "02_rank_sweep", "--reports", str(reports), "--param", "r=2"]
    assert "declares 'r'" in refused(reproduce.main, argv, capsys)
    # 04's sweep runs notebook 01 over r: a fixed r would clash with that axis.
    argv = ["reproduce", "--only", "04_sweep_report", "--reports", str(reports), "--param", "r=2"]
    assert "notebook 04's sweep runs notebook 01 over r" in refused(reproduce.main, argv, capsys)
    notebooks = REPO / "notebooks"
    reproduce.check_plan(notebooks, {"device": "cpu", "n": "400", "shift_rank": "2"}, None)


NOTEBOOK_01 = REPO / "notebooks" / "01_rank1_recovery.ipynb"
MISSING = "cuda:99"  # no machine has a hundredth GPU, so this is refused everywhere


@pytest.mark.parametrize("options", [["--param", f"device={MISSING}"], ["--grid", f"device=cpu,{MISSING}"]])
def test_sweep_refuses_a_device_this_machine_lacks_before_any_config_starts(tmp_path, capsys, options):
    out = tmp_path / "sweep"
    message = refused(sweep.main, [str(NOTEBOOK_01), "--output", str(out), *options], capsys)
    assert f"device={MISSING}: device='{MISSING}' is not allowed: it is not available" in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("device", "allowed"), [(MISSING, "it is not available"), ("tpu", "expected 'auto'")]
)
def test_reproduce_refuses_a_device_this_machine_lacks_before_any_notebook_starts(
    tmp_path, capsys, device, allowed
):
    reports = tmp_path / "reports"
    argv = ["reproduce", "--device", device, "--reports", str(reports)]
    message = refused(reproduce.main, argv, capsys)
    assert f"--device {device}: device='{device}' is not allowed: {allowed}" in message
    assert not reports.exists()
