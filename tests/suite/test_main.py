"""The main job, ``python -m lora_core reproduce``, on notebook 01 at small size: it writes
the run and the index wherever --reports points and checks the committed baseline."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lora_core.suite.reproduce import SWEEP, main, plan_runs, run_plan

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
    record = json.loads((reports / "reproduce.json").read_text())
    assert record["runs"]["01_rank1_recovery"]["status"] == "ok"
    assert record["runs"]["01_rank1_recovery"]["verdict"] == "pass"
    assert record["seconds"] >= record["runs"]["01_rank1_recovery"]["seconds"] > 0


def test_reproduce_exits_non_zero_when_a_number_drifts(args, capsys):
    reports, build = args
    assert main(build("lr=1e-4")) == 1  # too small a step to converge in 60 epochs
    assert "Drifted from the baseline: 01_rank1_recovery" in capsys.readouterr().out


def test_the_plan_waits_for_the_base_and_for_what_notebook_04_reads():
    needs = plan_runs()
    assert list(needs)[:2] == ["05_transformer", "01_rank1_recovery"]  # the two that need nothing
    assert needs["05_transformer"] == set() and needs["01_rank1_recovery"] == set()
    for name in ("02_rank_sweep", "03_alpha_sweep", SWEEP):
        assert needs[name] == {"01_rank1_recovery"}
    assert needs["04_sweep_report"] == {SWEEP, "03_alpha_sweep"}
    # Without notebook 01, the first of the others that uses the base trains it.
    needs = plan_runs(["02_rank_sweep", "03_alpha_sweep", "04_sweep_report"])
    assert needs["03_alpha_sweep"] == set()
    assert needs["02_rank_sweep"] == needs[SWEEP] == {"03_alpha_sweep"}
    assert plan_runs(["05_transformer"]) == {"05_transformer": set()}


def test_run_plan_starts_a_run_only_after_what_it_needs_and_goes_on_after_a_failure():
    needs = plan_runs()
    events, pool = [], ThreadPoolExecutor(2)
    ended = set()

    def start(name):
        events.append(("start", name, frozenset(ended)))

        def work():
            time.sleep(0.05 if name == "05_transformer" else 0.01)
            if name == "01_rank1_recovery":
                raise RuntimeError("the base could not be trained")
            return name

        return pool.submit(work)

    def finish(name, future):
        ended.add(name)
        events.append(("end", name, future.exception() is not None))

    run_plan(needs, start, finish)
    pool.shutdown()
    starts = {name: before for kind, name, before in events if kind == "start"}
    assert set(starts) == set(needs)  # every run started once, 01's failure stopped nothing
    for name, before in starts.items():
        assert needs[name] <= before
    assert ("end", "01_rank1_recovery", True) in events
