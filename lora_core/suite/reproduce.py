"""The main job: reproduce every notebook of the suite into reports/.

    python -m lora_core reproduce                  # all notebooks, full seed scale, CPU
    python -m lora_core reproduce --device cuda    # the same on a GPU
    python -m lora_core reproduce --only 01_rank1_recovery
    python -m lora_core reproduce --jobs 1         # one run at a time, with every core
    python -m lora_core reproduce --param n=512 --param d_in=65 --param d_out=64 --baselines small

Each notebook runs with its defaults (the blog's full scale) under papermill into
``reports/<notebook>/``; notebook 01 is also swept over r × lora_alpha with the grid runner
into ``reports/sweeps/01_r_x_alpha/``, which notebook 04 then aggregates. Runs go
``--jobs`` at a time (default 2 where there are two cores), each kernel with its share of
the cores, in an order that respects what each needs: notebook 01 pre-trains the base
that 02, 03 and the sweep then load from the cache, and 04 waits for 03 and the sweep.
Every run is checked against its committed baseline
(``reports/baselines/<notebook>.full.json``, or ``.small.json`` with ``--baselines
small``), the reports index is rebuilt, ``reports/reproduce.json`` records each run's
status, verdict and seconds, and the command exits non-zero if a notebook failed or a
metric drifted. A failing notebook does not stop the others. ``--param NAME=VALUE`` sets
a parameter in every notebook that declares it; a name no selected notebook declares, a
value of the wrong type or a name given twice is refused before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..validation import check_int
from .execute import (
    NotebookRunError,
    check_parameters,
    execute_notebook,
    notebook_parameters,
    terminate_pool,
    worker_pool,
)
from .regression import check_metrics
from .reports import BASELINES_DIR, build_index, write_json_atomic
from .sweep import check_device_here, parse_assignment, run_sweep

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ("01_rank1_recovery", "02_rank_sweep", "03_alpha_sweep", "04_sweep_report", "05_transformer")
# The batch route's sweep: notebook 01 over a grid, aggregated by notebook 04.
SWEEP_NAME = "sweeps/01_r_x_alpha"
SWEEP_GRID = {"r": [1, 2, 4], "lora_alpha": [0.5, 1.0, 8.0]}
# The committed baselines: runs are checked against them wherever they are written.
COMMITTED_BASELINES = ROOT / "reports" / BASELINES_DIR


def _declared(notebook: Path, params: dict) -> dict:
    """The subset of ``params`` that ``notebook`` declares (text is converted by the runner)."""
    declared = notebook_parameters(notebook)
    return {k: v for k, v in params.items() if k in declared}


def check_plan(notebooks_dir: Path, params: dict, only: list[str] | None = None) -> None:
    """Refuse, before anything runs, a parameter that no selected notebook would use or
    that one of them cannot take (a ``ValueError`` naming it)."""
    names = list(only or NOTEBOOKS)
    unknown = [name for name in names if name not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"notebook {unknown[0]!r} is not allowed: expected one of {', '.join(NOTEBOOKS)}")
    declared = {name: notebook_parameters(notebooks_dir / f"{name}.ipynb") for name in names}
    if "04_sweep_report" in names:  # its sweep runs notebook 01 too
        declared.setdefault(NOTEBOOKS[0], notebook_parameters(notebooks_dir / f"{NOTEBOOKS[0]}.ipynb"))
    used = set().union(*declared.values())
    for key in params:
        if key not in used:
            raise ValueError(
                f"--param {key}: no notebook selected ({', '.join(names)}) declares {key!r}; "
                f"they declare: {', '.join(sorted(used - {'output_dir', 'sweep_dir'}))}"
            )
        if key in ("output_dir", "sweep_dir"):
            raise ValueError(f"--param {key}: set by the main job; choose the folder with --reports")
    for name, parameters in declared.items():
        check_parameters(
            notebooks_dir / f"{name}.ipynb", {}, {k: v for k, v in params.items() if k in parameters}
        )
    if "04_sweep_report" in names:
        axes = sorted(set(SWEEP_GRID) & set(params))
        if axes:
            raise ValueError(
                f"--param {axes[0]}: notebook 04's sweep runs notebook 01 over {axes[0]} = "
                f"{SWEEP_GRID[axes[0]]}; leave it out, or run without 04 (--only)"
            )


# The runs of a plan, in the order they are started when several could start (the
# longest first, so that the last to finish is a short one), and what each waits for.
# Notebook 01 pre-trains the blog's base into the disk cache: 02, 03 and the sweep's
# configs then load it rather than each training it again at the same time.
SWEEP = "sweep"
START_ORDER = (
    "05_transformer",
    "01_rank1_recovery",
    "03_alpha_sweep",
    "02_rank_sweep",
    SWEEP,
    "04_sweep_report",
)
BASE_USERS = ("01_rank1_recovery", "03_alpha_sweep", "02_rank_sweep", SWEEP)
RECORD_FILE = "reproduce.json"
# Two at a time, where there are two cores: a kernel's imports, figures and HTML run on one
# core while another trains.
DEFAULT_JOBS = min(2, os.cpu_count() or 1)


def plan_runs(only: list[str] | None = None) -> dict[str, set[str]]:
    """The runs of a plan (notebooks, and the sweep when notebook 04 is in it), each with
    the runs it must wait for, in ``START_ORDER``."""
    names = set(only or NOTEBOOKS)
    if "04_sweep_report" in names:
        names.add(SWEEP)
    runs = [name for name in START_ORDER if name in names]
    needs = {name: set() for name in runs}
    trainer = next((name for name in runs if name in BASE_USERS), None)
    for name in runs:
        if name in BASE_USERS and name != trainer:
            needs[name].add(trainer)
    if "04_sweep_report" in needs:
        needs["04_sweep_report"] |= {SWEEP} | ({"03_alpha_sweep"} & set(runs))
    return needs


def run_plan(
    needs: dict[str, set[str]], start: Callable[[str], Future], finish: Callable[[str, Future], None]
):
    """Start each run once those it needs have ended (failed or not: a run whose input
    is missing says so itself), in the plan's order, and hand each to ``finish`` as it ends."""
    pending, running, ended = list(needs), {}, set()
    while pending or running:
        for name in [name for name in pending if needs[name] <= ended]:
            pending.remove(name)
            running[start(name)] = name
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            name = running.pop(future)
            finish(name, future)
            ended.add(name)


def reproduce(
    notebooks_dir: Path,
    reports_dir: Path,
    params: dict,
    only: list[str] | None = None,
    jobs: int = 1,
    baselines: str = "full",
    baselines_dir: Path = COMMITTED_BASELINES,
) -> int:
    """Run the plan, ``jobs`` notebooks (or sweep configs) at a time; return the exit status.

    With ``jobs`` > 1 the runs share the cores: each kernel gets cpu_count / jobs threads.
    ``reports/reproduce.json`` records each run's status, verdict and seconds.
    """
    check_plan(notebooks_dir, params, only)
    jobs = check_int("jobs", jobs, low=1)
    needs = plan_runs(only)
    failures, drifts, record = [], [], {"jobs": jobs, "runs": {}}
    pool = worker_pool(jobs)
    sweep_thread = ThreadPoolExecutor(1)  # the sweep waits on the pool for its configs
    progress = jobs == 1  # one cell-progress bar at a time, or none
    started, begin = {}, time.perf_counter()

    def start(name: str) -> Future:
        started[name] = time.perf_counter()
        if name == SWEEP:
            source = notebooks_dir / f"{NOTEBOOKS[0]}.ipynb"
            sweep_dir = reports_dir / SWEEP_NAME
            print(f"\n== sweep: {source} over {SWEEP_GRID} -> {sweep_dir}", flush=True)
            fixed = _declared(source, params)
            return sweep_thread.submit(
                run_sweep, source, SWEEP_GRID, fixed, sweep_dir, executor=pool, progress=progress
            )
        notebook = notebooks_dir / f"{name}.ipynb"
        parameters = _declared(notebook, params)
        if name == "04_sweep_report":
            parameters["sweep_dir"] = str((reports_dir / SWEEP_NAME).resolve())
            # Notebook 03's run of this plan, wherever --reports put it: the notebook's own
            # default is the repository's reports folder, which may hold another run or none.
            parameters["compare_with"] = str((reports_dir / "03_alpha_sweep").resolve())
        out = reports_dir / name
        print(f"\n== {notebook} -> {out}", flush=True)
        return pool.submit(_execute, str(notebook), str(out), parameters, progress)

    def finish(name: str, future: Future) -> None:
        seconds = time.perf_counter() - started[name]
        entry = record["runs"][name] = {"seconds": round(seconds, 1)}
        try:
            result = future.result()
        except Exception as err:  # the pool lost the run (its process died), or the sweep raised
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        if name == SWEEP:
            if isinstance(result, dict):  # it raised
                entry.update(result)
                failures.append(SWEEP_NAME)
                print(f"\n== sweep FAILED after {seconds:.0f} s: {result['error']}", flush=True)
                return
            entry["status"] = "ok" if result.ok else "failed"
            failures.extend(f"{SWEEP_NAME}/{f['path']}" for f in result.failed)
            print(f"\n== sweep done in {seconds:.0f} s: {len(result.summary) - len(result.failed)} configs "
                  f"finished, {len(result.failed)} failed", flush=True)  # fmt: skip
            return
        entry["status"] = result["status"]
        if result["status"] != "ok":
            print(f"\n== {name} FAILED after {seconds:.0f} s: {result['error']}", flush=True)
            failures.append(name)
            return
        print(f"\n== {name} done in {seconds:.0f} s: {reports_dir / name / (name + '.html')}", flush=True)
        baseline = baselines_dir / f"{name}.{baselines}.json"
        if not baseline.exists():
            entry["verdict"] = "not checked"
            print(f"(no baseline at {baseline}: not checked)", flush=True)
            return
        report = check_metrics(result["record"], baseline)
        entry["verdict"] = "pass" if report.ok else "drift"
        print(report, flush=True)
        if not report.ok:
            drifts.append(name)

    try:
        run_plan(needs, start, finish)
    except KeyboardInterrupt:
        print("\nInterrupted: the runs in progress are stopped; finished ones are kept.", flush=True)
        terminate_pool(pool)
        return 130
    finally:
        sweep_thread.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)

    record["seconds"] = round(time.perf_counter() - begin, 1)
    reports_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(reports_dir / RECORD_FILE, record)
    index = build_index(reports_dir)
    print(f"\nMain job: {record['seconds']:.0f} s, {jobs} at a time. Reports index: {index}")
    if failures:
        print("Failed: " + ", ".join(failures))
    if drifts:
        print("Drifted from the baseline: " + ", ".join(drifts))
    return 1 if failures or drifts else 0


def _execute(notebook: str, out: str, parameters: dict, progress: bool) -> dict:
    """One notebook run in a pool process, described as plain data (it crosses processes)."""
    try:
        record = execute_notebook(notebook, out, parameters, progress=progress)
    except NotebookRunError as err:
        return {"status": "failed", "error": str(err)}
    return {"status": "ok", "record": record}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every notebook into reports/ and check the baselines")
    rep.add_argument("--device", default="cpu", help="torch device for the notebooks (default: cpu)")
    rep.add_argument("--only", action="append", choices=NOTEBOOKS, help="run only this notebook (repeatable)")
    rep.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="the notebooks folder")
    rep.add_argument("--reports", type=Path, default=ROOT / "reports", help="where runs are written")
    rep.add_argument(
        "--jobs",
        type=_positive,
        default=DEFAULT_JOBS,
        help="notebooks (and sweep configs) run at a time, each kernel with cpu_count/N threads "
        f"(default: {DEFAULT_JOBS} on this machine)",
    )
    rep.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter for every notebook that declares it (repeatable)",
    )
    rep.add_argument(
        "--baselines",
        choices=("full", "small"),
        default="full",
        help="which committed baselines to check against (default: full)",
    )
    args = parser.parse_args(argv)
    params = {"device": args.device}
    try:
        for text in args.param:
            key, value = parse_assignment(text, "--param")
            if key in params:
                given = "--device" if key == "device" else "an earlier --param"
                raise ValueError(f"--param {text!r}: {key} is already given by {given}; give it once")
            params[key] = value
        check_plan(args.notebooks, params, args.only)
        check_device_here(params["device"], f"--device {params['device']}")
    except (ValueError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))
    return reproduce(args.notebooks, args.reports, params, args.only, args.jobs, args.baselines)


def _positive(text: str) -> int:
    try:
        return check_int("--jobs", int(text), 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--jobs {text!r}: expected an integer >= 1") from None


if __name__ == "__main__":
    sys.exit(main())
