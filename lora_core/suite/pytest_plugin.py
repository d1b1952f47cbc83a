"""A pytest plugin: run notebooks under papermill and check their metrics against baselines.

Installed with the package (a ``pytest11`` entry point), it does nothing unless asked::

    pytest --lora-notebooks notebooks/ --lora-baselines reports/baselines \\
        [--lora-size small|full] [--lora-param NAME=VALUE ...] [--lora-output DIR] [--lora-regen]

Every notebook under ``--lora-notebooks`` with a ``parameters`` cell is collected: item
``run`` executes it once (parameters checked against the notebook, as ``lora-sweep``
does) and one item per metric of ``<baselines>/<notebook>.<size>.json`` checks that
metric, so a CI page lists which metric drifted. ``--lora-regen`` rewrites the baselines'
values from the run, keeping their tolerances, and fails the run so that regenerating is
never silent. Executed notebooks, HTML, ``metrics.json`` and ``regression.md`` of every run
land in ``--lora-output`` (emptied at the start of a session), plus ``summary.md`` at the end.

For hand-written tests, the ``run_notebook`` fixture and ``assert_baseline``::

    def test_my_notebook(run_notebook):
        run = run_notebook("notebooks/train.ipynb", epochs=3)
        assert_baseline(run, "reports/baselines/train.small.json")

Under pytest-xdist each notebook still runs once: the first worker to need it holds a
file lock while it runs, and the others read its outcome back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Only the standard library and pytest at import time: this module is loaded in every
# pytest run of the environment. papermill, pandas and the rest load when asked for.

SIZES = ("small", "full")
OUTPUT_MARK = ".lora-pytest-output"  # says a folder was made by this plugin and may be emptied
OUTCOME_FILE = "pytest-outcome.json"
REPORT_FILE = "regression.md"
SUMMARY_FILE = "summary.md"
_WORKER_KEY = "lora_core_output"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lora_core", "notebook regression checks (lora_core)")
    group.addoption(
        "--lora-notebooks",
        action="append",
        default=[],
        metavar="PATH",
        help="a notebook or a folder of notebooks to run and check against baselines (repeatable)",
    )
    group.addoption("--lora-baselines", metavar="DIR", help="the folder of baselines, <notebook>.<size>.json")
    group.addoption(
        "--lora-size",
        choices=SIZES,
        default="full",
        help="which baselines to check against (default: full)",
    )
    group.addoption(
        "--lora-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter for every collected notebook that declares it (repeatable)",
    )
    group.addoption(
        "--lora-regen",
        action="store_true",
        help="rewrite the baselines' values from this run, keeping tolerances; the run fails",
    )
    group.addoption(
        "--lora-output",
        metavar="DIR",
        help="keep executed notebooks and reports here, e.g. for a CI artifact "
        "(emptied first; default: a temporary folder)",
    )


# ---------------------------------------------------------------------------------------
# Session set-up: one output folder, shared with xdist workers


def pytest_configure(config: pytest.Config) -> None:
    notebooks = config.getoption("lora_notebooks")
    if notebooks and not config.getoption("lora_baselines"):
        raise pytest.UsageError(
            "--lora-notebooks needs --lora-baselines DIR (where <notebook>.<size>.json are)"
        )
    if config.getoption("lora_baselines") and not Path(config.getoption("lora_baselines")).is_dir():
        raise pytest.UsageError(f"--lora-baselines {config.getoption('lora_baselines')}: no such folder")
    for path in notebooks:
        if not Path(path).exists():
            raise pytest.UsageError(f"--lora-notebooks {path}: no such file or folder")
        # Collected like a path on the command line, whatever testpaths says.
        if path not in config.args:
            config.args.append(path)
    worker_input = getattr(config, "workerinput", None)
    if worker_input is not None:
        output = worker_input.get(_WORKER_KEY)
    else:
        output = _prepare_output(config)
    config.stash[_STATE] = _State(config, Path(output) if output else None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist: every worker writes into the folder the controller prepared."""
    state = node.config.stash[_STATE]
    node.workerinput[_WORKER_KEY] = str(state.root) if state.root else None


def _prepare_output(config: pytest.Config) -> str | None:
    """The session's output folder, emptied; None when no option asks for one.

    Without --lora-output, collected notebooks still need one folder that every xdist
    worker sees (for the run locks); ``run_notebook`` alone makes do with pytest's tmp_path.
    """
    given = config.getoption("lora_output")
    if given is None:
        return tempfile.mkdtemp(prefix="lora-notebooks-") if config.getoption("lora_notebooks") else None
    root = Path(given).resolve()
    baselines = config.getoption("lora_baselines")
    if baselines and (root == Path(baselines).resolve() or root in Path(baselines).resolve().parents):
        raise pytest.UsageError(f"--lora-output {given} holds the baselines; name a folder of its own")
    if root.exists():
        if any(root.iterdir()) and not (root / OUTPUT_MARK).exists():
            raise pytest.UsageError(
                f"--lora-output {given} holds files this plugin did not write; name a new or empty folder"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / OUTPUT_MARK).write_text("Written by lora_core's pytest plugin; emptied at each session.\n")
    return str(root)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller gathers every run's regression table into one Markdown summary."""
    state = session.config.stash.get(_STATE, None)
    if state is None or state.root is None or hasattr(session.config, "workerinput"):
        return
    reports = sorted(state.root.rglob(REPORT_FILE))
    if reports:
        parts = [f"<!-- {path.parent.relative_to(state.root)} -->\n{path.read_text()}" for path in reports]
        (state.root / SUMMARY_FILE).write_text("\n".join(parts))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.root is not None and config.getoption("lora_output") is None:
        terminalreporter.write_line(f"lora_core notebook runs: {state.root}")


# ---------------------------------------------------------------------------------------
# Collection: a notebook is a collector of one run item and one item per baselined metric


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    config = parent.config
    roots = [Path(p).resolve() for p in config.getoption("lora_notebooks")]
    if file_path.suffix != ".ipynb" or not roots:
        return None
    resolved = file_path.resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        return None
    if not _has_parameters_cell(file_path):
        return None
    return NotebookFile.from_parent(parent, path=file_path)


def _has_parameters_cell(path: Path) -> bool:
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return False
    return any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in cells)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A --lora-param that no collected notebook declares is a mistake, not a no-op."""
    given = config.stash[_STATE].given_parameters()
    if not given:
        return
    declared = set()
    for item in items:
        if isinstance(item, RunItem):
            declared |= set(item.parent.declared)
    unknown = sorted(set(given) - declared)
    if unknown:
        raise pytest.UsageError(f"--lora-param {', '.join(unknown)}: no collected notebook declares it")


class NotebookFile(pytest.File):
    """A notebook with a ``parameters`` cell, checked against its baseline."""

    def collect(self):
        from .execute import notebook_parameters
        from .regression import load_baseline

        state = self.config.stash[_STATE]
        self.declared = notebook_parameters(self.path)
        self.parameters = state.parameters_for(self.declared)
        self.baseline = state.baseline_for(self.path)
        yield RunItem.from_parent(self, name="run")
        if not self.baseline.exists():
            yield MissingBaselineItem.from_parent(self, name="baseline")
            return
        for metric in load_baseline(self.baseline)["metrics"]:
            yield MetricItem.from_parent(self, name=metric)

    def outcome(self) -> dict[str, Any]:
        return self.config.stash[_STATE].outcome(self)


class NotebookCheckFailure(AssertionError):
    """A failure whose message is the whole story: shown without a traceback."""


class _NotebookItem(pytest.Item):
    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, NotebookCheckFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        # Not "name.ipynb::metric": pytest shows the dots of this label as "::".
        return self.path, None, f"{self.path.stem}: {self.name}"


class RunItem(_NotebookItem):
    """The notebook executes to the end, writes metrics.json, and fits its baseline file."""

    def runtest(self) -> None:
        outcome = self.parent.outcome()
        if outcome["error"]:
            raise NotebookCheckFailure(outcome["error"])
        if outcome["regenerated"]:
            raise NotebookCheckFailure(
                f"baseline regenerated from this run: {self.parent.baseline} (values rewritten, "
                "tolerances kept). Review and commit it, then run again without --lora-regen."
            )
        if outcome["problems"]:
            raise NotebookCheckFailure("; ".join(outcome["problems"]))


class MetricItem(_NotebookItem):
    """One baselined metric of the run is within its tolerance."""

    def runtest(self) -> None:
        outcome = self.parent.outcome()
        if outcome["error"]:
            raise NotebookCheckFailure(f"not checked: the notebook did not run ({self.parent.name}::run)")
        row = next(row for row in outcome["metrics"] if row["metric"] == self.name)
        if not row["ok"]:
            raise NotebookCheckFailure(
                f"{self.name}: {row['note']}\n"
                f"  baseline {_text(row['baseline'])}, got {_text(row['got'])}, tolerance {row['tolerance']}\n"
                f"  run kept in {outcome['folder']}"
            )


class MissingBaselineItem(_NotebookItem):
    """Fails, saying how to create the baseline from the run this session made."""

    def runtest(self) -> None:
        outcome = self.parent.outcome()
        folder = outcome["folder"] if not outcome["error"] else "RUN_FOLDER"
        raise NotebookCheckFailure(
            f"no baseline at {self.parent.baseline}. Create it from this run, choosing the "
            f"tolerances:\n  lora-regress {folder} {self.parent.baseline} --update --rtol 0.05\n"
            "then edit each metric's spec (value with rtol/atol, max, min) and commit it."
        )


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"


# ---------------------------------------------------------------------------------------
# Running: each notebook once per session, whichever process asks first


class _State:
    """What one pytest process knows: options, the output folder, outcomes it has read."""

    def __init__(self, config: pytest.Config, root: Path | None):
        self.config, self.root = config, root
        self._outcomes: dict[Path, dict[str, Any]] = {}
        self._parameters: dict[str, str] | None = None

    def given_parameters(self) -> dict[str, str]:
        if self._parameters is None:
            texts = self.config.getoption("lora_param")
            self._parameters = _parse_parameters(texts) if texts else {}
        return self._parameters

    def parameters_for(self, declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The --lora-param values this notebook declares, read as lora-sweep reads them."""
        from .sweep import _cli_value

        given = self.given_parameters()
        return {name: _cli_value(value, declared[name]) for name, value in given.items() if name in declared}

    def baseline_for(self, notebook: Path) -> Path:
        folder = Path(self.config.getoption("lora_baselines"))
        return folder / f"{notebook.stem}.{self.config.getoption('lora_size')}.json"

    def folder_for(self, notebook: Path) -> Path:
        try:
            relative = notebook.resolve().relative_to(self.config.rootpath.resolve())
        except ValueError:
            relative = Path(notebook.name)
        return self.root / relative.with_suffix("")

    def outcome(self, node: NotebookFile) -> dict[str, Any]:
        if node.path not in self._outcomes:
            self._outcomes[node.path] = self._run_once(node)
        return self._outcomes[node.path]

    def _run_once(self, node: NotebookFile) -> dict[str, Any]:
        from filelock import FileLock

        from .reports import read_json, write_json_atomic

        folder = self.folder_for(node.path)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # The output folder was emptied when the session started, so an outcome file
        # found under the lock was written in this session, by this or another worker.
        with FileLock(str(folder) + ".lock"):
            if (folder / OUTCOME_FILE).exists():
                return read_json(folder / OUTCOME_FILE)
            outcome = self._execute(node, folder)
            write_json_atomic(folder / OUTCOME_FILE, outcome)
        return outcome

    def _execute(self, node: NotebookFile, folder: Path) -> dict[str, Any]:
        from .execute import NotebookRunError, execute_notebook
        from .regression import check_metrics, update_baseline

        outcome = {"folder": str(folder), "error": None, "regenerated": False}
        outcome.update(metrics=[], problems=[], unchecked=[])
        try:
            record = execute_notebook(node.path, folder, node.parameters)
        except (NotebookRunError, ValueError) as err:
            outcome["error"] = _describe_run_error(err, folder)
            return outcome
        if not node.baseline.exists():
            return outcome
        try:
            if self.config.getoption("lora_regen"):
                update_baseline(record, node.baseline)
                outcome["regenerated"] = True
            report = check_metrics(record, node.baseline)
        except ValueError as err:  # BaselineError included
            outcome["error"] = f"{node.baseline}: {err}"
            return outcome
        (folder / REPORT_FILE).write_text(report.to_markdown(node.path.stem), encoding="utf-8")
        return {**outcome, **report.to_dict()}


def _parse_parameters(texts: list[str]) -> dict[str, str]:
    """NAME=VALUE texts as lora-sweep's --param reads them (values converted per notebook)."""
    from argparse import ArgumentTypeError

    from .sweep import parse_assignment

    parameters = {}
    for text in texts:
        try:
            name, value = parse_assignment(text, "--lora-param")
        except ArgumentTypeError as err:
            raise pytest.UsageError(str(err)) from None
        parameters[name] = value
    return parameters


def _describe_run_error(err: Exception, folder: Path) -> str:
    lines = [str(err)]
    source = getattr(err, "cell_source", None)
    if source:
        lines += [f"  | {line}" for line in source.strip().splitlines()[:8]]
    lines.append(f"executed notebook kept in {folder}")
    return "\n".join(lines)


_STATE = pytest.StashKey[_State]()


# ---------------------------------------------------------------------------------------
# For hand-written tests


@dataclass
class NotebookRun:
    """A finished run: the notebook, the folder it wrote into, and its metrics.json."""

    notebook: Path
    folder: Path
    record: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    @property
    def executed(self) -> Path:
        """The executed copy of the notebook, with its outputs."""
        return self.folder / f"{self.notebook.stem}.ipynb"


@pytest.fixture(scope="session")
def run_notebook(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory):
    """``run_notebook(path, output_dir=None, render_html=False, **parameters) -> NotebookRun``.

    Runs the notebook once with papermill (parameters checked against its ``parameters``
    cell) into ``output_dir``, or into a folder of its own under ``--lora-output``. A
    failed run raises ``NotebookRunError`` naming the error and the cell.
    """
    from .execute import execute_notebook

    state = pytestconfig.stash[_STATE]

    def run(
        notebook: str | os.PathLike,
        output_dir: str | os.PathLike | None = None,
        render_html: bool = False,
        **parameters: Any,
    ) -> NotebookRun:
        notebook = Path(notebook)
        if output_dir is not None:
            folder = Path(output_dir)
        elif state.root is None:
            folder = tmp_path_factory.mktemp(notebook.stem)
        else:
            folder = _new_folder(state.root / "run_notebook", notebook.stem)
        record = execute_notebook(notebook, folder, parameters, render_html=render_html)
        return NotebookRun(notebook.resolve(), folder.resolve(), record)

    return run


def _new_folder(parent: Path, stem: str) -> Path:
    """``parent/<stem>``, or ``<stem>-2``, ...: made here, so never shared with a worker."""
    parent.mkdir(parents=True, exist_ok=True)
    for count in range(1, 10_000):
        folder = parent / (stem if count == 1 else f"{stem}-{count}")
        try:
            folder.mkdir()  # atomic: two workers cannot both make the same folder
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"no free folder for {stem} under {parent}")


def assert_baseline(run: NotebookRun | dict | str | os.PathLike, baseline: str | os.PathLike | dict) -> None:
    """Fail, with the per-metric table as the message, unless the run fits the baseline.

    ``run`` is a ``NotebookRun``, a metrics dict or a metrics.json path / run folder. For a
    ``NotebookRun``, the table is also written to ``regression.md`` in its folder, which
    ends up in ``summary.md`` when the folder is under ``--lora-output``.
    """
    __tracebackhide__ = True
    from .regression import check_metrics

    report = check_metrics(run.record if isinstance(run, NotebookRun) else run, baseline)
    if isinstance(run, NotebookRun):
        title = run.notebook.stem if isinstance(baseline, dict) else Path(baseline).stem
        (run.folder / REPORT_FILE).write_text(report.to_markdown(title), encoding="utf-8")
    if not report.ok:
        raise NotebookCheckFailure(f"the run does not fit the baseline:\n{report}")
