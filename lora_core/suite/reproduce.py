"""The main job: reproduce every notebook of the suite into reports/.

    python -m lora_core reproduce                  # all notebooks, full seed scale, CPU
    python -m lora_core reproduce --device cuda    # the same on a GPU
    python -m lora_core reproduce --only 01_rank1_recovery
    python -m lora_core reproduce --param n=512 --param d_in=65 --param d_out=64 --baselines small

Each notebook runs with its defaults (the blog's full scale) under papermill into
``reports/<notebook>/``; notebook 01 is also swept over r × lora_alpha with the grid runner
into ``reports/sweeps/01_r_x_alpha/``, which notebook 04 then aggregates. Every run is
checked against its committed baseline (``reports/baselines/<notebook>.full.json``, or
``.small.json`` with ``--baselines small``), the reports index is rebuilt, and the
command exits non-zero if a notebook failed or a metric drifted. A failing notebook does
not stop the others. ``--param NAME=VALUE`` sets a parameter in every notebook that
declares it; a name no selected notebook declares, a value of the wrong type or a name
given twice is refused before anything runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..validation import check_int
from .execute import NotebookRunError, check_parameters, execute_notebook, notebook_parameters
from .regression import check_metrics
from .reports import BASELINES_DIR, build_index
from .sweep import parse_assignment, run_sweep

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


def reproduce(
    notebooks_dir: Path,
    reports_dir: Path,
    params: dict,
    only: list[str] | None = None,
    jobs: int = 1,
    baselines: str = "full",
    baselines_dir: Path = COMMITTED_BASELINES,
) -> int:
    """Run the plan; return the process exit status."""
    check_plan(notebooks_dir, params, only)
    failures, drifts = [], []
    for name in only or NOTEBOOKS:
        notebook = notebooks_dir / f"{name}.ipynb"
        parameters = _declared(notebook, params)
        if name == "04_sweep_report":
            source = notebooks_dir / f"{NOTEBOOKS[0]}.ipynb"
            sweep_dir = reports_dir / SWEEP_NAME
            print(f"\n== sweep: {source} over {SWEEP_GRID} -> {sweep_dir}")
            result = run_sweep(source, SWEEP_GRID, _declared(source, params), sweep_dir, jobs=jobs)
            failures += [f"{SWEEP_NAME}/{f}" for f in result.failed]
            parameters["sweep_dir"] = str(sweep_dir.resolve())
            # Notebook 03's run of this plan, wherever --reports put it: the notebook's own
            # default is the repository's reports folder, which may hold another run or none.
            parameters["compare_with"] = str((reports_dir / "03_alpha_sweep").resolve())
        out = reports_dir / name
        print(f"\n== {notebook} -> {out}")
        start = time.perf_counter()
        try:
            record = execute_notebook(notebook, out, parameters, progress=True)
        except NotebookRunError as err:
            print(f"FAILED after {time.perf_counter() - start:.0f} s: {err}")
            failures.append(name)
            continue
        print(f"done in {time.perf_counter() - start:.0f} s: {out / (name + '.html')}")
        baseline = baselines_dir / f"{name}.{baselines}.json"
        if baseline.exists():
            report = check_metrics(record, baseline)
            print(report)
            if not report.ok:
                drifts.append(name)
        else:
            print(f"(no baseline at {baseline}: not checked)")

    index = build_index(reports_dir)
    print(f"\nReports index: {index}")
    if failures:
        print("Failed: " + ", ".join(failures))
    if drifts:
        print("Drifted from the baseline: " + ", ".join(drifts))
    return 1 if failures or drifts else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run every notebook into reports/ and check the baselines")
    rep.add_argument("--device", default="cpu", help="torch device for the notebooks (default: cpu)")
    rep.add_argument("--only", action="append", choices=NOTEBOOKS, help="run only this notebook (repeatable)")
    rep.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="the notebooks folder")
    rep.add_argument("--reports", type=Path, default=ROOT / "reports", help="where runs are written")
    rep.add_argument("--jobs", type=_positive, default=1, help="parallel processes for the sweep")
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
