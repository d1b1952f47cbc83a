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
- A sweep is resumable: a config whose ``metrics.json`` records the same parameters (and
  whose HTML exists, when HTML is asked for) is skipped, so a killed sweep started again
  finishes the rest and redoes nothing. Configs of earlier sweeps into the same folder
  stay in its summary; a lock keeps two sweeps from writing into one folder at once.
- A failing config (an exception in a cell, a dead kernel, a cell timeout, no
  ``metrics.json``, an HTML rendering that failed) is recorded with its error and
  failing cell; the others go on. A config whose worker was lost is retried once.

Configs run one after another in this process, in a pool of separate processes
(``jobs > 1``, one torch thread each when they share the cores), on a Dask cluster
(``--dask``, see ``cluster.py``: each config's files are shipped back to this process),
or on any ``concurrent.futures.Executor`` passed in.

    lora-sweep notebooks/01_rank1_recovery.ipynb --grid r=1,2,4 --grid lora_alpha=1,8 \\
        --output reports/sweeps/rank_alpha --jobs 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..fast.multi import config_grid
from ..validation import check_float, check_int
from . import kernels
from .execute import (
    CHECKED_TYPES,
    NotebookRunError,
    check_parameters,
    execute_notebook,
    existing_notebook,
    notebook_parameters,
    terminate_pool,
    worker_pool,
)
from .notebook import UNRECORDED
from .reports import METRICS_FILE, SUMMARY_FILE, SWEEP_FILE, build_index, write_text_atomic

STATUS_COLUMNS = ["status", "error", "failed_cell", "seconds", "path"]
LOCK_FILE = ".sweep.lock"  # held by the sweep writing into the folder
ATTEMPTS = 2  # a config whose worker is lost is run once more, then recorded as failed
KERNEL_ENV_DROPPED = ("MALLOC_TRIM_THRESHOLD_",)  # set by Dask's nanny; left out of a shipped config's kernel

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


def _finished_record(
    folder: Path, parameters: Mapping[str, Any], html: str | None = None
) -> dict[str, Any] | None:
    """The metrics.json of a finished run of these parameters in ``folder``, if any.

    With ``html`` (a file name), the run counts as finished only once that file exists.
    """
    if html is not None and not (folder / html).is_file():
        return None
    try:
        record = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    recorded = record.get("parameters", {}) if isinstance(record, dict) else {}
    # A parameter that is never recorded (progress) changes what a person sees, not the run.
    same = all(
        name in recorded and recorded[name] == value
        for name, value in parameters.items()
        if name not in UNRECORDED
    )
    return record if same and isinstance(record.get("metrics"), dict) else None


# ---------------------------------------------------------------------------------------
# Running a sweep


@dataclass
class SweepResult:
    """What a sweep did: the summary table and the details of every failed config (in grid order)."""

    summary: pd.DataFrame  # as load_sweep reads it: one row per config, in grid order
    output_dir: Path
    # Per failed config: config, path, ename, evalue, failed_cell, failed_source, seconds.
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


class SweepBusyError(RuntimeError):
    """Another sweep holds the sweep folder's lock."""


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
        outcome = {
            "status": "failed",
            "ename": err.ename,
            "evalue": err.evalue,
            "failed_cell": err.cell_index,
            "failed_source": err.cell_source,
        }
    except Exception as err:  # recorded against this config; the sweep goes on
        outcome = {"status": "failed", "ename": type(err).__name__, "evalue": str(err)}
    else:
        outcome = {"status": "ok", "metrics": record["metrics"]}
    return {**outcome, "seconds": round(time.perf_counter() - start, 2)}


def run_shipped_config(
    notebook_name: str,
    notebook_text: str,
    parameters: dict[str, Any],
    timeout: float | None,
    render_html: bool,
    kernel_name: str | None,
) -> dict[str, Any]:
    """Run one config in a scratch folder of its own; the outcome carries the run's files.

    For workers that share neither the client's file system nor its checkout: the
    notebook travels as text and the files it wrote travel back as
    ``outcome["files"]`` (path relative to the config folder -> bytes).
    """
    _kernel_environment()
    with tempfile.TemporaryDirectory(prefix="lora_core-config-", dir=_scratch_root()) as scratch:
        notebook = Path(scratch, "notebook", notebook_name)
        notebook.parent.mkdir()
        notebook.write_text(notebook_text, encoding="utf-8")
        folder = Path(scratch, "run")
        outcome = _run_config(str(notebook), str(folder), parameters, timeout, render_html, kernel_name)
        files = {}
        if folder.is_dir():
            files = {
                p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            }
    return {**outcome, "files": files}


def warm_worker() -> None:
    """Ready a worker for shipped configs: its environment as their kernels need it, and
    its kernel server started (``kernels.warm_up``). Run on every worker as a sweep connects."""
    _kernel_environment()
    kernels.warm_up()


def _kernel_environment() -> None:
    # A Dask worker's nanny sets glibc's trim threshold before it starts the worker, to hand
    # memory back to the OS; a kernel that inherits it trains about 1.7x slower (with the
    # threshold set, every temporary above 128 KiB is mapped and unmapped anew), and the
    # worker itself has long since read it. Popping is idempotent, so concurrent configs on
    # one worker cannot race.
    for name in KERNEL_ENV_DROPPED:
        os.environ.pop(name, None)


def _scratch_root() -> str | None:
    """A Dask worker's own folder (cleaned up by its nanny even after a crash), else /tmp."""
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return None


def _write_shipped(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write a shipped run into ``folder``: each file atomically, ``metrics.json`` last,
    since its presence is what marks the run as finished."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).unlink(missing_ok=True)
    for name in sorted(files, key=lambda name: name == METRICS_FILE):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"shipped file {name!r} is not allowed: expected a path inside {folder}")
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        # os.open rather than mkstemp: the umask applies, as to the local route's files.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(files[name])
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _is_dask(executor: Executor | None) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed"


@contextlib.contextmanager
def _sweep_lock(output_dir: Path) -> Iterator[None]:
    """Hold the sweep folder's lock, or raise ``SweepBusyError`` at once.

    An flock, so that the operating system drops it when its holder dies: a killed
    sweep never leaves a folder locked.
    """
    handle = open(output_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SweepBusyError(
            f"output_dir={str(output_dir)!r} is in use by another sweep ({holder}); "
            "wait for it to finish, or choose another output folder"
        ) from None
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


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
    ship_files: bool | None = None,
) -> SweepResult:
    """Run ``notebook`` once per config of ``grid`` (with ``fixed`` on top) into ``output_dir``.

    Configs run inline when ``jobs == 1``, in ``jobs`` separate processes otherwise, or
    on ``executor`` when one is given (it is not shut down). With ``ship_files`` each
    config runs in a scratch folder of the worker and its files come back to this
    process; the default is to ship on a Dask executor. With ``resume``, configs already
    finished with the same parameters are skipped. ``timeout`` bounds each cell.
    summary.csv is rewritten as each config finishes, so an interrupted sweep's folder
    is still readable (see ``load_sweep``). Raises ``SweepBusyError`` when another
    sweep is writing into ``output_dir``.
    """
    notebook = existing_notebook(notebook)
    jobs = check_int("jobs", jobs, low=1)
    if timeout is not None:
        timeout = check_float("timeout", timeout, low=0, low_inclusive=False)
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor={executor!r} is not allowed: expected a concurrent.futures.Executor")
    grid, fixed = check_parameters(notebook, grid, dict(fixed or {}))
    ship_files = _is_dask(executor) if ship_files is None else ship_files

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(output_dir):
        return _run_locked(
            notebook, grid, fixed, output_dir, jobs, executor, resume, timeout, progress,
            render_html, kernel_name, ship_files,
        )  # fmt: skip


def _run_locked(
    notebook: Path,
    grid: dict[str, list[Any]],
    fixed: dict[str, Any],
    output_dir: Path,
    jobs: int,
    executor: Executor | None,
    resume: bool,
    timeout: float | None,
    progress: bool,
    render_html: bool,
    kernel_name: str | None,
    ship_files: bool,
) -> SweepResult:
    # The same order as the in-notebook route (config_grid): the last axis varies fastest.
    configs = [{**config, **fixed} for config in config_grid(**grid)]
    names = [config_name({k: c[k] for k in grid}) for c in configs]
    earlier = _earlier_configs(output_dir, set(names))
    sweep = {
        "notebook": str(notebook),
        "grid": grid,
        "fixed": fixed,
        "configs": [
            *({"path": n, "parameters": c} for n, c in zip(names, configs)),
            *({"path": n, "parameters": c, "earlier": True} for n, (c, _) in earlier.items()),
        ],
        "started": _now(),
        "finished": None,
    }
    write_text_atomic(output_dir / SWEEP_FILE, json.dumps(sweep, indent=1))

    html = f"{notebook.stem}.html" if render_html else None
    rows, todo = {}, []
    for name, config in zip(names, configs):
        record = _finished_record(output_dir / name, config, html) if resume else None
        if record is None:
            rows[name] = _row(config, name, {"status": "pending"})
            todo.append((name, config))
        else:
            rows[name] = _row(config, name, {"status": "skipped", "metrics": record["metrics"]})
    for name, (config, record) in earlier.items():
        rows[name] = _row(config, name, {"status": "skipped", "metrics": record["metrics"]})
    columns = _parameter_columns(grid, fixed, sweep["configs"])
    _write_summary(output_dir, rows.values(), columns)

    if ship_files:
        text = notebook.read_text(encoding="utf-8")
        run = run_shipped_config
        tasks = {name: (notebook.name, text, c, timeout, render_html, kernel_name) for name, c in todo}
    else:
        run = _run_config
        tasks = {
            name: (str(notebook), str(output_dir / name), c, timeout, render_html, kernel_name)
            for name, c in todo
        }
    parameters, failed = dict(todo), []
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
        if earlier:
            bar.write(f"kept    {len(earlier):>7}    finished configs of earlier sweeps in {output_dir}")
        # closing(): a pool of our own is shut down even when the sweep is interrupted.
        with contextlib.closing(_outcomes(run, tasks, jobs, executor)) as outcomes:
            for name, outcome in outcomes:
                files = outcome.pop("files", None)
                if files is not None:
                    try:
                        _write_shipped(output_dir / name, files)
                    except (OSError, ValueError) as err:
                        # This config's files are lost, not the sweep: on the local route the
                        # same failure happens inside the config's own run.
                        outcome = {
                            "status": "failed",
                            "ename": type(err).__name__,
                            "evalue": f"its files could not be written into {output_dir / name}: {err}",
                            "seconds": outcome["seconds"],
                        }
                config = parameters[name]
                rows[name] = _row(config, name, outcome)
                _write_summary(output_dir, rows.values(), columns)
                if outcome["status"] == "failed":
                    failed.append({"config": config, "path": name, **outcome})
                bar.update()
                line = f"{outcome['status']:<7} {outcome['seconds']:7.1f} s  {output_dir / name}"
                if outcome["status"] == "failed":
                    line += f"  {outcome['ename']}: {outcome['evalue']}"
                bar.write(line)

    sweep["finished"] = _now()
    write_text_atomic(output_dir / SWEEP_FILE, json.dumps(sweep, indent=1))
    # In grid order, as in summary.csv, whichever config a pool or cluster finished first.
    failed.sort(key=lambda failure: names.index(failure["path"]))
    # The table read back from disk, so that it is exactly what load_sweep gives a notebook.
    result = SweepResult(load_sweep(output_dir), output_dir, failed)
    print(_summary_text(notebook, result))
    _update_reports_index(output_dir)
    return result


def _earlier_configs(output_dir: Path, current: set[str]) -> dict[str, tuple[dict, dict]]:
    """Finished configs of earlier sweeps into this folder that this sweep does not run:
    path -> (parameters, metrics.json record). Kept in the summary, never dropped."""
    try:
        configs = json.loads((output_dir / SWEEP_FILE).read_text())["configs"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    earlier = {}
    for config in configs:
        path, parameters = config.get("path"), config.get("parameters")
        if path in current or path in earlier or not isinstance(parameters, dict):
            continue
        record = _finished_record(output_dir / path, parameters)
        if record is not None:
            earlier[path] = (parameters, record)
    return earlier


def _parameter_columns(grid: Mapping, fixed: Mapping, configs: Sequence[Mapping]) -> list[str]:
    """This sweep's parameters, then any other that an earlier sweep's configs set."""
    columns = [*grid, *fixed]
    for config in configs:
        columns += [name for name in config["parameters"] if name not in columns]
    return columns


def _outcomes(
    run: Callable[..., dict], tasks: dict[str, tuple], jobs: int, executor: Executor | None
) -> Iterator[tuple[str, dict]]:
    """(config name, outcome) as configs finish."""
    if executor is None and jobs == 1:
        for name, task in tasks.items():
            yield name, run(*task)
        return
    own_pool = executor is None
    if own_pool:
        workers = min(jobs, max(len(tasks), 1))
        executor = worker_pool(workers)

    # No config waits on a worker, only in our queue: a pool queues a few configs ahead
    # and a queued config cannot be cancelled (Ctrl-C would wait for it), and Dask counts
    # a worker's death against every config assigned to it, running or not.
    def limit() -> int:
        if own_pool:
            return workers
        client = getattr(executor, "_client", None) if _is_dask(executor) else None
        return max(1, sum(client.nthreads().values())) if client is not None else len(tasks)

    # Resubmitted configs must not be taken for the lost run (Dask keys pure calls).
    options = {"pure": False} if _is_dask(executor) else {}
    queue, attempts, running = deque(tasks), Counter(), {}
    # A cluster's workers may join while the sweep runs (a SLURM job that starts late, an
    # adaptive cluster): how many configs fit is asked again every few seconds, not only
    # when a config finishes.
    poll = None if own_pool or not _is_dask(executor) else 5.0
    pool_of = {}  # future -> the executor it was submitted to

    def renewed(broken: Executor) -> Executor:
        # A pool of our own breaks for good when one of its processes dies (each of its
        # running configs is then lost): the configs to retry go to a fresh one.
        if broken is not executor:
            return executor  # already renewed, for another config of the same pool
        terminate_pool(broken)
        broken.shutdown(wait=False, cancel_futures=True)
        return worker_pool(workers)

    try:
        while queue or running:
            free = limit() - len(running)
            while queue and free > 0:
                name = queue.popleft()
                try:
                    future = executor.submit(run, *tasks[name], **options)
                except BrokenExecutor as err:  # e.g. a pool one of whose processes died
                    if own_pool and attempts[name] + 1 < ATTEMPTS:
                        attempts[name] += 1  # as a start: a pool that keeps breaking is not renewed forever
                        executor = renewed(executor)
                        queue.appendleft(name)
                        continue
                    yield name, _lost(err, attempts[name])
                    continue
                running[future], pool_of[future] = name, executor
                attempts[name] += 1
                free -= 1
            if not running:
                continue
            done, _ = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
            for future in done:
                name, pool = running.pop(future), pool_of.pop(future)
                try:
                    outcome = future.result()
                except Exception as err:  # the config's own failures are in its outcome
                    if _worker_lost(err) and attempts[name] < ATTEMPTS:
                        if own_pool and isinstance(err, BrokenExecutor):
                            executor = renewed(pool)
                        queue.appendleft(name)  # next, on whichever worker is free
                        continue
                    outcome = _lost(err, attempts[name])
                yield name, outcome
    finally:
        for future in running:
            future.cancel()
        if own_pool:
            if running:  # interrupted: stop the configs that run, rather than wait for them
                terminate_pool(executor)
            executor.shutdown(wait=not running, cancel_futures=True)


def _worker_lost(err: Exception) -> bool:
    """Whether the executor lost a config with the process that ran it (a Dask worker
    killed or out of memory, a pool process that died), rather than failing to run it at
    all (say, a worker without lora_core's suite installed): only the first is retried."""
    return isinstance(err, BrokenExecutor) or type(err).__name__ == "KilledWorker"


def _lost(err: Exception, attempts: int) -> dict[str, Any]:
    if attempts == 0:
        why = "the executor could not start the config"
    elif not _worker_lost(err):
        why = "the executor could not run the config"
    else:
        # Submitted: a Dask scheduler may itself restart a task (allowed-failures).
        why = "the executor lost the config, submitted " + ("once" if attempts == 1 else f"{attempts} times")
    return {
        "status": "failed",
        "ename": type(err).__name__,
        "evalue": f"{err} ({why})",
        "seconds": math.nan,
    }


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
    write_text_atomic(output_dir / SUMMARY_FILE, text)


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


def _update_reports_index(output_dir: Path) -> None:
    """Refresh the reports index when the sweep was written inside a reports folder."""
    root = next((p for p in output_dir.parents if p.name == "reports"), None)
    if root is not None:
        build_index(root)


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
    return _summary_frame(rows, _parameter_columns(sweep["grid"], sweep["fixed"], sweep["configs"]))


# ---------------------------------------------------------------------------------------
# Command line


def check_device_here(device: Any, option: str) -> None:
    """Refuse, before any kernel starts, a torch device this machine does not have: each
    run would otherwise start, import torch and fail on it, one after another."""
    if str(device) in ("cpu", "auto"):
        return  # always there; the check below imports torch
    from ..training import resolve_device

    try:
        resolve_device(str(device))
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from None


def parse_assignment(text: str, option: str) -> tuple[str, str]:
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
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="a grid axis (repeatable); the sweep runs every combination",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter fixed for every config (repeatable)",
    )
    parser.add_argument(
        "-f",
        "--parameters-file",
        metavar="YAML",
        help="parameters in papermill's YAML style; a list value is a grid axis",
    )
    parser.add_argument("--output", required=True, help="the sweep folder")
    parser.add_argument("--jobs", type=int, default=1, help="configs run at once, in separate processes")
    parser.add_argument(
        "--dask",
        metavar="CLUSTER",
        help="run the configs on Dask: local[:N] (a local cluster of N one-thread workers), "
        "tcp://HOST:PORT of a running scheduler, or a scheduler file; needs lora_core[dask]",
    )
    parser.add_argument("--no-resume", action="store_true", help="rerun configs that already finished")
    parser.add_argument("--timeout", type=float, help="seconds any one cell may run")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML rendering of each run")
    parser.add_argument("--kernel", help="a Jupyter kernel name (default: this Python interpreter)")
    args = parser.parse_args(argv)

    # Mistakes in what was asked for exit with status 2 and nothing run; failed configs, 1;
    # Ctrl-C, 130 (the usual 128 + SIGINT) with one line rather than tracebacks.
    try:
        grid, fixed = _cli_parameters(args)
        if args.dask is not None and args.jobs != 1:
            raise ValueError(
                f"--jobs {args.jobs} with --dask is not allowed: the cluster's workers run the configs"
            )
        if args.dask is None:  # a cluster's workers may have devices this machine lacks
            for device in grid.get("device", [fixed["device"]] if "device" in fixed else []):
                check_device_here(device, f"device={device}")
        with contextlib.ExitStack() as stack:
            executor = None
            if args.dask is not None:
                from .cluster import dask_executor

                executor = stack.enter_context(dask_executor(args.dask))
            result = run_sweep(
                args.notebook,
                grid,
                fixed,
                args.output,
                jobs=args.jobs,
                executor=executor,
                resume=not args.no_resume,
                timeout=args.timeout,
                render_html=not args.no_html,
                kernel_name=args.kernel,
            )
    except (ValueError, argparse.ArgumentTypeError, yaml.YAMLError, SweepBusyError) as err:
        parser.error(str(err))
    except KeyboardInterrupt:
        print(
            f"lora-sweep: interrupted; finished configs are kept in {args.output}, "
            "and the same command resumes the rest",
            file=sys.stderr,
        )
        return 130
    return 0 if result.ok else 1


def _cli_parameters(args: argparse.Namespace) -> tuple[dict[str, list], dict[str, Any]]:
    """(grid, fixed) from -f, overridden by --param and --grid.

    On the command line itself each name may be given once: a second --grid or --param
    for the same name, or a name given both ways, would silently drop one of the values.
    """
    declared = notebook_parameters(args.notebook)
    given: dict[str, str] = {}
    for option, texts in (("--param", args.param), ("--grid", args.grid)):
        for text in texts:
            name = parse_assignment(text, option)[0]
            if name in given:
                raise ValueError(
                    f"{option} {text!r}: {name} is already given by {given[name]}; "
                    "give each parameter once (a grid axis lists all its values: --grid NAME=V1,V2)"
                )
            given[name] = f"{option} {text!r}"
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
        name, value = parse_assignment(text, "--param")
        grid.pop(name, None)
        fixed[name] = _cli_value(value, declared.get(name))
    for text in args.grid:
        name, values = parse_assignment(text, "--grid")
        fixed.pop(name, None)
        grid[name] = [_cli_value(v.strip(), declared.get(name)) for v in values.split(",")]
    return grid, fixed


def _cli_value(text: str, declared: dict[str, Any] | None) -> Any:
    """Command-line text for a parameter: converted later when its type is declared,
    read as YAML (like papermill's -y) when it is not, so ``seed = 0`` gets an int."""
    if declared is None or declared["type"] in CHECKED_TYPES:
        return text
    return yaml.safe_load(text)


if __name__ == "__main__":
    # Through the package's module, so that worker processes pickle lora_core.suite.sweep's
    # functions rather than __main__'s.
    from lora_core.suite.sweep import main as _main

    sys.exit(_main())
