"""Running one notebook with papermill, as the suite's reports and sweeps need it.

``execute_notebook`` runs a notebook once into a folder: the executed copy, its HTML
rendering and the ``metrics.json`` the notebook writes. Before running, every parameter
is checked against the notebook's ``parameters`` cell (papermill itself only warns about
unknown names) and command-line text is converted to the declared type. The kernel is
an ipykernel on this very interpreter, started in the notebook's own folder, so a
notebook finds the same packages and relative paths as when opened in Jupyter. A run
that fails raises ``NotebookRunError`` naming the error and the cell to open and fix.
"""

from __future__ import annotations

import ast
import contextlib
import json
import multiprocessing
import numbers
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import papermill
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError
from traitlets import default
from traitlets.config import Config

from ..validation import check_float
from . import kernels, reports
from .reports import METRICS_FILE

# ---------------------------------------------------------------------------------------
# The notebook's declared parameters


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares: name -> {"type", "default", "help"}.

    Read from the ``parameters`` cell by ``papermill.inspect_notebook``: "type" is the
    annotation's text ("None" when there is none), "default" the value when it is a
    Python literal (else its source text), "help" the trailing comment.
    """
    path = existing_notebook(notebook)
    declared = papermill.inspect_notebook(str(path))
    return {
        name: {"type": p["inferred_type_name"], "default": _literal(p["default"]), "help": p["help"]}
        for name, p in declared.items()
    }


def existing_notebook(notebook: str | Path) -> Path:
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
CHECKED_TYPES = {"int": "an int", "float": "a float", "str": "a str", "bool": "a bool"}


def coerce_value(name: str, value: Any, declared_type: str) -> Any:
    """``value`` as the declared type, converting command-line text ("4", "1e-3", "true").

    Types papermill cannot name precisely (no annotation, ``list``, ``Optional[...]``)
    are passed through unchecked.
    """
    if declared_type not in CHECKED_TYPES:
        return value
    converted = _convert(value, declared_type)
    if converted is None:
        raise ValueError(
            f"{name}={value!r} is not allowed: expected {CHECKED_TYPES[declared_type]} "
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
        raise ValueError(f"{Path(notebook).name} has no parameter {', '.join(unknown)}; it declares {known}")
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
    notebook = existing_notebook(notebook)
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
        evalue = f'{metrics_path} holds no "metrics" mapping'
        raise NotebookRunError(str(executed), "BadMetrics", evalue)
    if render_html:
        try:
            reports.render_html(executed)
        except Exception as err:
            # The run is not finished until its HTML exists: a resumed sweep must redo it.
            metrics_path.replace(output_dir / "metrics.incomplete.json")
            raise NotebookRunError(str(executed), "HTMLRenderError", f"{type(err).__name__}: {err}") from err
    return record


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that run notebooks, for the sweep and the main job.

    Its processes ignore Ctrl-C, so that only the process that owns the pool answers it
    (and stops them with ``terminate_pool``), and the kernels they start get their share
    of the cores as torch threads, unless the user set OMP_NUM_THREADS or MKL_NUM_THREADS.
    They are spawned, not forked: forking a process that holds kernel clients and
    progress-bar threads (or a Jupyter kernel, when a sweep is started from a notebook)
    is unsafe.
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_pool_process,
        initargs=(threads,),
    )


def _pool_process(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))


def terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a ``worker_pool``'s processes now, rather than wait for their runs to end.

    A process's kernel notices its parent is gone and exits (ipykernel's parent poller).
    """
    # terminate_workers() arrived in Python 3.14; before it, the pool's process table.
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


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
        cell
        for cell in nbformat.read(executed, as_version=4).cells
        if not added_by_papermill & set(cell.metadata.get("tags", []))
    ]
    marks = [cell.metadata.get("papermill", {}) for cell in cells]
    raised = [i for i, mark in enumerate(marks) if mark.get("exception")]
    started = [i for i, mark in enumerate(marks) if mark.get("start_time")]
    index = (raised or started or [None])[-1]
    return (None, None) if index is None else (index, cells[index].source)


class _ThisInterpreterSpecs(KernelSpecManager):
    """Kernel specs in which every name means an ipykernel on this very interpreter,
    forked from a kernel server where it can be (``kernels.WarmProvisioner``)."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        # jupyter_client finds provisioners by entry point, which only an install registers.
        warm = {"kernel_provisioner": {"provisioner_name": kernels.PROVISIONER_NAME}}
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python ({sys.executable})",
            language="python",
            name=kernel_name,
            metadata=warm if kernels.registered() else {},
        )


class _ThisInterpreterKernelManager(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _this_interpreter_specs(self) -> KernelSpecManager:
        return _ThisInterpreterSpecs()


def _kernel_options(kernel_name: str | None) -> dict[str, Any]:
    """papermill keyword arguments that run the kernel on this Python interpreter, or on
    the kernel spec ``kernel_name`` when one is named.

    The kernel of this interpreter is the one the notebooks need (a "python3" spec may
    point at another environment), and it is forked from a warm kernel server where it
    can be (``kernels``): a fresh process per run either way.
    """
    # IPC sockets rather than TCP ports: no port to race for when many kernels start at
    # once, no port scan, and no "running over TCP without encryption" warning per run.
    # The socket paths must be absolute: the kernel starts in another folder than ours.
    sockets = os.path.join(tempfile.gettempdir(), f"lora_core-kernel-{uuid.uuid4().hex[:12]}")
    options: dict[str, Any] = {
        "config": Config({"KernelManager": {"transport": "ipc", "ip": sockets}}),
        # Once the last cell has finished, every file the notebook wrote is closed and
        # every output received: a graceful shutdown would only wait (about 3 s of a
        # config's wall time, benchmarks/README.md) for the kernel's interpreter to exit.
        "shutdown_kernel": "immediate",
    }
    if kernel_name is not None:
        return {**options, "kernel_name": kernel_name}
    # nbclient builds its kernel manager from this class, which knows one spec: ours.
    return {**options, "kernel_name": "python3", "kernel_manager_class": _ThisInterpreterKernelManager}
