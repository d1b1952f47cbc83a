"""The main job, ``python -m lora_core reproduce``, on notebook 01 at small size: it writes
the run and the index wherever --reports points and checks the committed baseline."""

import pytest

from lora_core.suite.reproduce import main

SMALL = ["n=512", "d_in=65", "d_out=64", "epochs=60", "batch_size=64", "lr=3e-2"]


@pytest.fixture
def args(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_CORE_CACHE", str(tmp_path / "cache"))
    reports = tmp_path / "reports"

    def build(*params):
        # An override replaces the small value: the same name twice is refused.
        overridden = {p.partition("=")[0] for p in params}
        kept = [p for p in SMALL if p.partition("=")[0] not in overridden]
        chosen = [arg for p in [*kept, *params] for arg in ("--param", p)]
        return [
            "reproduce",
            "--only",
            "01_rank1_recovery",
            "--reports",
            str(reports),
            "--baselines",
            "small",
            *chosen,
        ]

    return reports, build


def test_reproduce_writes_the_run_and_checks_the_committed_baseline(args, capsys):
    reports, build = args
    assert main(build()) == 0
    out = capsys.readouterr().out
    assert "no baseline" not in out and "Drifted" not in out
    assert (reports / "01_rank1_recovery" / "metrics.json").is_file()
    assert (reports / "index.html").is_file()


def test_reproduce_exits_non_zero_when_a_number_drifts(args, capsys):
    reports, build = args
    assert main(build("lr=1e-4")) == 1  # too small a step to converge in 60 epochs
    assert "Drifted from the baseline: 01_rank1_recovery" in capsys.readouterr().out
