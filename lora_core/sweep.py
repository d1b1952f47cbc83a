"""Parameter sweeps over the suite's notebooks, executed with papermill.

A sweep takes one notebook and a grid (parameter name -> list of values), runs the
notebook once per point of the grid's Cartesian product (a *config*) and collects what
each run wrote into its ``metrics.json``. Every config gets its own folder, named after
its grid values (``r=4__lora_alpha=8``), holding the executed notebook, its HTML
rendering and ``metrics.json``; the sweep folder holds ``summary.csv`` (one row per
config: parameters, scalar metrics, status, error, failing cell, seconds, folder) and
``sweep.json`` (what was asked for and when it ran).

Three properties make a sweep cheap to trust and to repeat:

- Parameters are checked against the notebook's ``parameters`` cell before anything
  runs: papermill only warns about unknown names, a sweep refuses them, and values are
  checked (and CLI strings converted) against the declared ``int``/``float``/``str``/
  ``bool`` annotations.
- A sweep is resumable: a config whose ``metrics.json`` records the same parameters is
  skipped, so a killed sweep started again finishes the rest and redoes nothing.
- A failing config (an exception in a cell, a dead kernel, a cell timeout, no
  ``metrics.json``) is recorded with its error and failing cell; the others go on.

Configs run one after another in this process, in a pool of separate processes
(``jobs > 1``), or on any ``concurrent.futures.Executor`` passed in.

    lora-sweep notebooks/01_rank1_recovery.ipynb --grid r=1,2,4 --grid lora_alpha=1,8 \\
        --output reports/sweeps/rank_alpha --jobs 2
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import hashlib
import importlib
import json
import math
import multiprocessing
import numbers
import os
import re
import shutil
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import nbformat
import pandas as pd
import papermill
import yaml
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager, KernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError
from tqdm.auto import tqdm
from traitlets import default

from lora_core.multi import config_grid
from lora_core.validation import check_float, check_int

SUMMARY_FILE = "summary.csv"
SWEEP_FILE = "sweep.json"
METRICS_FILE = "metrics.json"
STATUS_COLUMNS = ["status", "error", "failed_cell", "seconds", "path"]

# ---------------------------------------------------------------------------------------
# The notebook's declared parameters


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares: name -> {"type", "default", "help"}.

    Read from the ``parameters`` cell by ``papermill.inspect_notebook``: "type" is the
    annotation's text ("None" when there is none), "default" the value when it is a
    Python literal (else its source text), "help" the trailing comment.
    """
    path = _existing_notebook(notebook)
    declared = papermill.inspect_notebook(str(path))
    return {
        name: {"type": p["inferred_type_name"], "default": _literal(p["default"]), "help": p["help"]}
        for name, p in declared.items()
    }


def _existing_notebook(notebook: str | Path) -> Path:
    path = Path(notebook).resolve()
    if path.suffix != ".ipynb" or not path.is_file():
        raise ValueError(f"notebook={str(notebook)!r} is not allowed: expected an existing .ipynb file")
    return path


def _literal(source: str) -> Any:
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_ARTICLES = {"int": "an int", "float": "a float", "str": "a str", "bool": "a bool"}


def coerce_value(name: str, value: Any, declared_type: str) -> Any:
    """``value`` as the declared type, converting command-line text ("4", "1e-3", "true").

    Types papermill cannot name precisely (no annotation, ``list``, ``Optional[...]``)
    are passed through unchecked.
    """
    if declared_type not in _ARTICLES:
        return value
    converted = _convert(value, declared_type)
    if converted is None:
        raise ValueError(
            f"{name}={value!r} is not allowed: expected {_ARTICLES[declared_type]} "
            f"(the notebook declares {name}: {declared_type})"
        )
    return converted


def _convert(value: Any, declared_type: str) -> Any:
    """The converted value, or None when it does not fit the type."""
    if isinstance(value, str) and declared_type != "str":
        text = value.strip()
        if declared_type == "bool":
            return _BOOL_WORDS.get(text.lower())
        try:
            return int(text) if declared_type == "int" else float(text)
        except ValueError:
            return None
    if isinstance(value, bool):
        return value if declared_type == "bool" else None
    if declared_type == "int":
        return int(value) if isinstance(value, numbers.Integral) else None
    if declared_type == "float":
        return float(value) if isinstance(value, numbers.Real) else None
    if declared_type == "str":
        return value if isinstance(value, str) else None
    return None


def check_parameters(
    notebook: str | Path, grid: Mapping[str, Iterable[Any]], fixed: Mapping[str, Any]
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Grid and fixed parameters checked against the notebook and converted to its types.

    Raises ``ValueError`` for an unknown name (listing the known ones), an ill-typed
    value, ``output_dir`` (the runner sets it), a name in both, or an empty or repeated
    grid axis.
    """
    declared = notebook_parameters(notebook)
    if "output_dir" not in declared:
        raise ValueError(f"{Path(notebook).name} declares no output_dir parameter for its metrics")
    if "output_dir" in grid or "output_dir" in fixed:
        raise ValueError("output_dir is set by the sweep runner (one folder per config); leave it out")
    unknown = [name for name in [*grid, *fixed] if name not in declared]
    if unknown:
        known = ", ".join(f"{n}: {p['type']}" for n, p in declared.items() if n != "output_dir")
        raise ValueError(
            f"{Path(notebook).name} has no parameter {', '.join(unknown)}; it declares {known}"
        )
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"{', '.join(both)} given both as a grid axis and as a fixed value")
    checked_grid = {}
    for name, values in grid.items():
        # Any iterable but text makes an axis: a list, a range, numpy.logspace(...).
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise ValueError(f"{name}={values!r} is not allowed: expected a list of values")
        checked_grid[name] = [coerce_value(name, v, declared[name]["type"]) for v in values]
        if not checked_grid[name]:
            raise ValueError(f"{name}={values!r} is not allowed: expected a non-empty list of values")
        if len(set(map(repr, checked_grid[name]))) < len(checked_grid[name]):
            raise ValueError(f"{name}={checked_grid[name]!r} is not allowed: expected distinct values")
    checked_fixed = {name: coerce_value(name, v, declared[name]["type"]) for name, v in fixed.items()}
    return checked_grid, checked_fixed


# ---------------------------------------------------------------------------------------
# One run


class NotebookRunError(RuntimeError):
    """A run that did not end with a metrics.json: what went wrong, and in which cell.

    ``cell_index`` counts the cells of the notebook as written (markdown included, the
    injected-parameters cell not), so it points at the cell to open and fix.
    """

    def __init__(
        self,
        notebook: str,
        ename: str,
        evalue: str,
        cell_index: int | None = None,
        cell_source: str | None = None,
    ):
        # Every field goes to args so that the error survives pickling across processes.
        super().__init__(notebook, ename, evalue, cell_index, cell_source)
        self.notebook, self.ename, self.evalue = notebook, ename, evalue
        self.cell_index, self.cell_source = cell_index, cell_source

    def __str__(self) -> str:
        where = "" if self.cell_index is None else f" in cell {self.cell_index}"
        return f"{self.notebook}: {self.ename}{where}: {self.evalue}"


def execute_notebook(
    notebook: str | Path,
    output_dir: str | Path,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    progress: bool = False,
    render_html: bool = True,
    kernel_name: str | None = None,
) -> dict[str, Any]:
    """Run ``notebook`` once with papermill and return the metrics.json it wrote.

    The executed copy goes to ``{output_dir}/{notebook stem}.ipynb``, with ``output_dir``
    injected as an absolute path; the kernel starts in the notebook's own folder, so
    relative paths mean the same under papermill as interactively. ``timeout`` is the
    most seconds any one cell may run. The kernel is this Python interpreter unless
    ``kernel_name`` names another. Raises ``NotebookRunError`` when a cell raises, the
    kernel dies, a cell times out or no metrics.json appears.
    """
    notebook = _existing_notebook(notebook)
    if timeout is not None:
        timeout = check_float("timeout", timeout, low=0, low_inclusive=False)
    _, parameters = check_parameters(notebook, {}, dict(parameters or {}))
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / f"{notebook.stem}.ipynb"
    metrics_path = output_dir / METRICS_FILE
    # A metrics.json left by an earlier run must never pass for this run's.
    metrics_path.unlink(missing_ok=True)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={**parameters, "output_dir": str(output_dir)},
            progress_bar=progress,
            execution_timeout=timeout,
            # The kernel's working directory, set without papermill's cwd= (a process-wide
            # chdir) so that runs on a thread pool cannot change each other's folder.
            resources={"metadata": {"path": str(notebook.parent)}},
            **_kernel_options(kernel_name),
        )
    except Exception as err:
        # Metrics written before a later cell failed describe a run that did not finish;
        # kept aside so that neither a resumed sweep nor the reports index takes them.
        if metrics_path.exists():
            metrics_path.replace(output_dir / "metrics.incomplete.json")
        raise _run_error(executed, err, timeout) from err
    if not metrics_path.exists():
        evalue = f"the notebook ran to the end but wrote no {METRICS_FILE} into {output_dir}"
        raise NotebookRunError(str(executed), "MissingMetrics", evalue)
    record = json.loads(metrics_path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        evalue = f"{metrics_path} holds no \"metrics\" mapping"
        raise NotebookRunError(str(executed), "BadMetrics", evalue)
    if render_html:
        importlib.import_module("lora_core.reports").render_html(executed)
    return record


def _run_error(executed: Path, err: Exception, timeout: float | None) -> NotebookRunError:
    if isinstance(err, PapermillExecutionError):
        ename, evalue = err.ename, err.evalue
    elif isinstance(err, CellTimeoutError):
        ename, evalue = "CellTimeoutError", f"a cell ran longer than timeout={timeout} s"
    elif isinstance(err, DeadKernelError):
        ename, evalue = "DeadKernelError", "the kernel died (out of memory? a crash in native code?)"
    else:
        ename, evalue = type(err).__name__, str(err)
    return NotebookRunError(str(executed), ename, evalue, *_failed_cell(executed))


def _failed_cell(executed: Path) -> tuple[int | None, str | None]:
    """(index in the notebook as written, source) of the cell a run stopped in.

    papermill marks a cell that raised; a timeout or a dead kernel leaves no mark, and
    then the last cell that started is the one that never finished.
    """
    if not executed.exists():
        return None, None
    added_by_papermill = {"injected-parameters", "papermill-error-cell-tag"}
    cells = [
        cell for cell in nbformat.read(executed, as_version=4).cells
        if not added_by_papermill & set(cell.metadata.get("tags", []))
    ]
    marks = [cell.metadata.get("papermill", {}) for cell in cells]
    raised = [i for i, mark in enumerate(marks) if mark.get("exception")]
    started = [i for i, mark in enumerate(marks) if mark.get("start_time")]
    index = (raised or started or [None])[-1]
    return (None, None) if index is None else (index, cells[index].source)


class _ThisInterpreterSpecs(KernelSpecManager):
    """Kernel specs in which every name means an ipykernel on this very interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python ({sys.executable})",
            language="python",
            name=kernel_name,
        )


class _ThisInterpreterKernelManager(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _this_interpreter_specs(self) -> KernelSpecManager:
        return _ThisInterpreterSpecs()


def _kernel_options(kernel_name: str | None) -> dict[str, Any]:
    """papermill keyword arguments that run the kernel on this Python interpreter.

    The "python3" kernel spec is used as it is when it resolves to this interpreter (as
    the one ipykernel installs in an environment does); a spec pointing elsewhere (a
    user-wide install, another environment) is bypassed, since the notebooks need the
    packages of the environment the sweep runs in.
    """
    if kernel_name is not None:
        return {"kernel_name": kernel_name}
    try:
        command = KernelManager(kernel_name="python3").format_kernel_cmd()[0]
    except NoSuchKernel:
        command = None
    if command and os.path.abspath(shutil.which(command) or command) == os.path.abspath(sys.executable):
        return {"kernel_name": "python3"}
    # nbclient builds its kernel manager from this class, which knows one spec: ours.
    return {"kernel_name": "python3", "kernel_manager_class": _ThisInterpreterKernelManager}


# ---------------------------------------------------------------------------------------
# The grid


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def config_name(config: Mapping[str, Any]) -> str:
    """A readable folder name, unique per config: ``r=4__lora_alpha=8``.

    A value whose text had to be altered (characters unsafe in file names, or length)
    gets a short hash of the value, so that two configs never share a folder.
    """
    if not config:
        return "defaults"
    parts = []
    for name, value in config.items():
        text = str(value)
        safe = _UNSAFE.sub("_", text)[:40]
        if safe != text:
            safe += "-" + _digest(value)
        parts.append(f"{name}={safe}")
    joined = "__".join(parts)
    return joined if len(joined) <= 150 else joined[:140] + "-" + _digest(sorted(config.items()))


def _digest(value: Any) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()[:8]


def _finished_record(folder: Path, parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metrics.json of a finished run of these parameters in ``folder``, if any."""
    try:
        record = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    recorded = record.get("parameters", {}) if isinstance(record, dict) else {}
    same = all(name in recorded and recorded[name] == value for name, value in parameters.items())
    return record if same and isinstance(record.get("metrics"), dict) else None


# ---------------------------------------------------------------------------------------
# Running a sweep


@dataclass
class SweepResult:
    """What a sweep did: the summary table and the details of every failed config."""

    summary: pd.DataFrame  # as load_sweep reads it: one row per config, in grid order
    output_dir: Path
    # Per failed config: config, path, ename, evalue, failed_cell, failed_source, seconds.
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _run_config(
    notebook: str,
    folder: str,
    parameters: dict[str, Any],
    timeout: float | None,
    render_html: bool,
    kernel_name: str | None,
) -> dict[str, Any]:
    """Run one config and describe the outcome as plain data (it may cross processes)."""
    start = time.perf_counter()
    try:
        record = execute_notebook(
            notebook, folder, parameters, timeout, render_html=render_html, kernel_name=kernel_name
        )
    except NotebookRunError as err:
        outcome = {"status": "failed", "ename": err.ename, "evalue": err.evalue,
                   "failed_cell": err.cell_index, "failed_source": err.cell_source}
    except Exception as err:  # recorded against this config; the sweep goes on
        outcome = {"status": "failed", "ename": type(err).__name__, "evalue": str(err)}
    else:
        outcome = {"status": "ok", "metrics": record["metrics"]}
    return {**outcome, "seconds": round(time.perf_counter() - start, 2)}


def run_sweep(
    notebook: str | Path,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None,
    output_dir: str | Path,
    jobs: int = 1,
    executor: Executor | None = None,
    resume: bool = True,
    timeout: float | None = None,
    progress: bool = True,
    render_html: bool = True,
    kernel_name: str | None = None,
) -> SweepResult:
    """Run ``notebook`` once per config of ``grid`` (with ``fixed`` on top) into ``output_dir``.

    Configs run inline when ``jobs == 1``, in ``jobs`` separate processes otherwise, or
    on ``executor`` when one is given (it is not shut down). With ``resume``, configs
    already finished with the same parameters are skipped. ``timeout`` bounds each cell.
    summary.csv is rewritten as each config finishes, so an interrupted sweep's folder
    is still readable (see ``load_sweep``).
    """
    notebook = _existing_notebook(notebook)
    jobs = check_int("jobs", jobs, low=1)
    if timeout is not None:
        timeout = check_float("timeout", timeout, low=0, low_inclusive=False)
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(
            f"executor={executor!r} is not allowed: expected a concurrent.futures.Executor"
        )
    grid, fixed = check_parameters(notebook, grid, dict(fixed or {}))
    if render_html and _reports() is None:  # said now, rather than once per config
        raise ModuleNotFoundError("HTML rendering needs lora_core.reports; pass render_html=False")

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # The same order as the in-notebook route (config_grid): the last axis varies fastest.
    configs = [{**config, **fixed} for config in config_grid(**grid)]
    names = [config_name({k: c[k] for k in grid}) for c in configs]
    sweep = {
        "notebook": str(notebook),
        "grid": grid,
        "fixed": fixed,
        "configs": [{"path": n, "parameters": c} for n, c in zip(names, configs)],
        "started": _now(),
        "finished": None,
    }
    _write_atomically(output_dir / SWEEP_FILE, json.dumps(sweep, indent=1))

    rows, todo = {}, []
    for name, config in zip(names, configs):
        record = _finished_record(output_dir / name, config) if resume else None
        if record is None:
            rows[name] = _row(config, name, {"status": "pending"})
            todo.append((name, config))
        else:
            rows[name] = _row(config, name, {"status": "skipped", "metrics": record["metrics"]})
    columns = [*grid, *fixed]
    _write_summary(output_dir, rows.values(), columns)

    failed = []
    bar = tqdm(
        total=len(configs),
        initial=len(configs) - len(todo),
        unit="config",
        disable=not progress,
        desc=notebook.stem,
    )
    with bar:
        for name in names:
            if rows[name]["status"] == "skipped":
                bar.write(f"skipped {'':>9}  {output_dir / name}")
        tasks = {
            name: (str(notebook), str(output_dir / name), config, timeout, render_html, kernel_name)
            for name, config in todo
        }
        # closing(): a pool of our own is shut down even when the sweep is interrupted.
        with contextlib.closing(_outcomes(tasks, jobs, executor)) as outcomes:
            for name, outcome in outcomes:
                rows[name] = _row(dict(tasks[name][2]), name, outcome)
                _write_summary(output_dir, rows.values(), columns)
                if outcome["status"] == "failed":
                    failed.append({"config": tasks[name][2], "path": name, **outcome})
                bar.update()
                line = f"{outcome['status']:<7} {outcome['seconds']:7.1f} s  {output_dir / name}"
                if outcome["status"] == "failed":
                    line += f"  {outcome['ename']}: {outcome['evalue']}"
                bar.write(line)

    sweep["finished"] = _now()
    _write_atomically(output_dir / SWEEP_FILE, json.dumps(sweep, indent=1))
    # The table read back from disk, so that it is exactly what load_sweep gives a notebook.
    result = SweepResult(load_sweep(output_dir), output_dir, failed)
    print(_summary_text(notebook, result))
    _update_reports_index(output_dir)
    return result


def _outcomes(
    tasks: dict[str, tuple], jobs: int, executor: Executor | None
) -> Iterator[tuple[str, dict]]:
    """(config name, outcome) as configs finish."""
    if executor is None and jobs == 1:
        for name, task in tasks.items():
            yield name, _run_config(*task)
        return
    own_pool = executor is None
    if own_pool:
        # spawn, not fork: forking a process that holds kernel clients and progress-bar
        # threads (or a Jupyter kernel, when a sweep is started from a notebook) is unsafe.
        executor = ProcessPoolExecutor(
            max_workers=min(jobs, max(len(tasks), 1)),
            mp_context=multiprocessing.get_context("spawn"),
        )
    try:
        futures = {executor.submit(_run_config, *task): name for name, task in tasks.items()}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as err:  # the executor lost this config (e.g. a worker was killed)
                outcome = {"status": "failed", "ename": type(err).__name__, "evalue": str(err),
                           "seconds": math.nan}
            yield futures[future], outcome
    finally:
        if own_pool:
            executor.shutdown(cancel_futures=True)


def _row(config: Mapping[str, Any], name: str, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row: parameters, scalar metrics ("metrics."-prefixed on a name clash), status."""
    row = dict(config)
    for metric, value in outcome.get("metrics", {}).items():
        if value is None or isinstance(value, (bool, int, float, str)):
            clash = metric in row or metric in STATUS_COLUMNS
            row[f"metrics.{metric}" if clash else metric] = value
    failed = outcome["status"] == "failed"
    row.update(
        status=outcome["status"],
        error=f"{outcome['ename']}: {outcome['evalue']}" if failed else None,
        failed_cell=outcome.get("failed_cell"),
        seconds=outcome.get("seconds"),
        path=name,
    )
    return row


def _summary_frame(rows, parameter_columns: Sequence[str]) -> pd.DataFrame:
    """Rows as a table: parameters, then metrics, then status columns."""
    frame = pd.DataFrame(list(rows))
    metrics = [c for c in frame.columns if c not in parameter_columns and c not in STATUS_COLUMNS]
    frame = frame.reindex(columns=[*parameter_columns, *metrics, *STATUS_COLUMNS])
    # A nullable integer column, so that cell 2 reads "2" rather than "2.0" next to blanks.
    return frame.astype({"failed_cell": "Int64"})


def _write_summary(output_dir: Path, rows, parameter_columns: Sequence[str]) -> None:
    text = _summary_frame(rows, parameter_columns).to_csv(index=False)
    _write_atomically(output_dir / SUMMARY_FILE, text)


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _summary_text(notebook: Path, result: SweepResult) -> str:
    status = result.summary["status"]
    counts = ", ".join(f"{(status == s).sum()} {s}" for s in ("ok", "failed", "skipped"))
    summary_csv = result.output_dir / SUMMARY_FILE
    lines = [f"sweep of {notebook.name}: {len(status)} configs ({counts}) -> {summary_csv}"]
    if "diverged" in result.summary:
        # == True rather than the column itself: the column is NaN for failed configs.
        diverged = result.summary.loc[result.summary["diverged"] == True, "path"]  # noqa: E712
        lines += [f"  diverged: {name}" for name in diverged]
    for failure in result.failed:
        lines.append(f"  failed: {failure['path']}: {failure['ename']}: {failure['evalue']}")
        if failure.get("failed_cell") is not None:
            lines.append(f"    in cell {failure['failed_cell']}:")
            source = (failure.get("failed_source") or "").strip().splitlines()
            lines += [f"    | {line}" for line in source[:8]]
            lines += ["    | ..."] if len(source) > 8 else []
    return "\n".join(lines)


def _reports():
    """The lora_core.reports module, or None where it is not installed."""
    try:
        return importlib.import_module("lora_core.reports")
    except ModuleNotFoundError as err:
        if err.name != "lora_core.reports":  # reports itself is there but broken: say so
            raise
        return None


def _update_reports_index(output_dir: Path) -> None:
    """Refresh the reports index when the sweep was written inside a reports folder."""
    root = next((p for p in output_dir.parents if p.name == "reports"), None)
    reports = _reports()
    if root is not None and reports is not None:
        reports.build_index(root)


def load_sweep(output_dir: str | Path) -> pd.DataFrame:
    """The summary of a finished or interrupted sweep folder, one row per config.

    Configs still "pending" in summary.csv whose metrics.json has since appeared (the
    sweep was stopped before it could record them) are read back as "ok". Parameter
    values come from sweep.json, keeping the types that CSV cannot ("1" as a str).
    """
    output_dir = Path(output_dir)
    if not (output_dir / SUMMARY_FILE).exists():
        raise ValueError(
            f"output_dir={str(output_dir)!r} is not allowed: expected a folder holding {SUMMARY_FILE}"
        )
    sweep = json.loads((output_dir / SWEEP_FILE).read_text())
    rows = pd.read_csv(output_dir / SUMMARY_FILE).to_dict("records")
    configs = {c["path"]: c["parameters"] for c in sweep["configs"]}
    for i, row in enumerate(rows):
        config = configs.get(row["path"])
        if config is None:
            continue
        pending = row["status"] == "pending"
        record = _finished_record(output_dir / row["path"], config) if pending else None
        if record is not None:
            row = {**row, **_row(config, row["path"], {"status": "ok", "metrics": record["metrics"]})}
        rows[i] = {**row, **config}
    return _summary_frame(rows, [*sweep["grid"], *sweep["fixed"]])


# ---------------------------------------------------------------------------------------
# Command line


def _assignment(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{option} {text!r}: expected NAME=VALUE")
    return name.strip(), value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-sweep",
        description="Run a notebook over a parameter grid with papermill, one folder per config.",
    )
    parser.add_argument("notebook", help="the notebook to run")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="a grid axis (repeatable); the sweep runs every combination")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter fixed for every config (repeatable)")
    parser.add_argument("-f", "--parameters-file", metavar="YAML",
                        help="parameters in papermill's YAML style; a list value is a grid axis")
    parser.add_argument("--output", required=True, help="the sweep folder")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configs run at once, in separate processes")
    parser.add_argument("--no-resume", action="store_true",
                        help="rerun configs that already finished")
    parser.add_argument("--timeout", type=float, help="seconds any one cell may run")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML rendering of each run")
    parser.add_argument("--kernel", help="a Jupyter kernel name (default: this Python interpreter)")
    args = parser.parse_args(argv)

    # Mistakes in what was asked for exit with status 2 and nothing run; failed configs, 1.
    try:
        grid, fixed = _cli_parameters(args)
        result = run_sweep(args.notebook, grid, fixed, args.output, jobs=args.jobs,
                           resume=not args.no_resume, timeout=args.timeout,
                           render_html=not args.no_html, kernel_name=args.kernel)
    except (ValueError, argparse.ArgumentTypeError, yaml.YAMLError) as err:
        parser.error(str(err))
    return 0 if result.ok else 1


def _cli_parameters(args: argparse.Namespace) -> tuple[dict[str, list], dict[str, Any]]:
    """(grid, fixed) from -f, then --param and --grid, later ones winning."""
    declared = notebook_parameters(args.notebook)
    grid, fixed = {}, {}
    if args.parameters_file:
        path = Path(args.parameters_file)
        if not path.is_file():
            raise ValueError(f"-f {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"-f {path}: expected a mapping of parameter names to values")
        for name, value in loaded.items():
            (grid if isinstance(value, list) else fixed)[name] = value
    for text in args.param:
        name, value = _assignment(text, "--param")
        grid.pop(name, None)
        fixed[name] = _cli_value(value, declared.get(name))
    for text in args.grid:
        name, values = _assignment(text, "--grid")
        fixed.pop(name, None)
        grid[name] = [_cli_value(v.strip(), declared.get(name)) for v in values.split(",")]
    return grid, fixed


def _cli_value(text: str, declared: dict[str, Any] | None) -> Any:
    """Command-line text for a parameter: converted later when its type is declared,
    read as YAML (like papermill's -y) when it is not, so ``seed = 0`` gets an int."""
    if declared is None or declared["type"] in _ARTICLES:
        return text
    return yaml.safe_load(text)


if __name__ == "__main__":
    # Through the package's module, so that worker processes pickle lora_core.sweep's
    # functions rather than __main__'s.
    from lora_core.sweep import main as _main

    sys.exit(_main())
