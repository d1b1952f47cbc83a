"""Regression checks of notebook outputs: a run's metrics against a committed baseline.

A baseline is a JSON file naming, for each metric, the value it should have and how far
it may move::

    {"notebook": "01_rank1_recovery", "scale": "full",
     "metrics": {"pretrain_loss_epoch_10": {"value": 577.1, "rtol": 0.15},
                 "delta_mean": {"value": 1.0, "atol": 0.005},
                 "lora_final_loss": {"max": 0.01},
                 "merged_loss": {"value": 0.0013, "rtol": 0.001, "max": 0.01}}}

Each metric must pass every bound its spec names: ``value`` with ``rtol`` and/or ``atol``
(``|got - value| <= atol + rtol * |value|``; a bare ``value`` must match exactly), ``max``
and ``min`` (inclusive). A metric missing from the run, or not a finite number there,
fails. Metrics the baseline does not name are not checked.

A baseline may also hold the ``"parameters"`` of the run it was made from (name ->
value). A run whose metrics.json records other values for them fails with "parameters
differ", reported before any metric: its numbers were never meant to match.

Nothing here knows about particular notebooks: point it at any ``metrics.json`` (the
suite's layout, with a ``metrics`` object) or at a flat JSON object of name -> number.

Command line: ``lora-regress METRICS_JSON_OR_RUN_DIR BASELINE_JSON [--update [--force]]
[--format table|markdown|json|junit]``; exit status 0 when every metric passes, 1 on any
drift or missing metric, 2 on bad input (and on an update refused: a run of another
notebook or with other parameters, or with metrics that are not numbers, is written only
with ``--force``). Markdown is for a CI job summary; JUnit XML has one test case per
metric, so a CI page shows which metric drifted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import numbers
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..validation import check_float
from .reports import read_json, read_metrics, write_json_atomic

SPEC_KEYS = ("value", "rtol", "atol", "max", "min")
FORMATS = ("table", "markdown", "json", "junit")
TIMINGS = ("*_seconds",)  # vary from machine to machine: not baselined unless asked
# Parameters a new baseline does not record: where files go, and switches that change
# how fast a run is, not its numbers beyond float rounding.
UNRECORDED_PARAMETERS = ("output_dir", "*_dir", "compare_with", "device", "cache_*")


class BaselineError(ValueError):
    """A baseline or metrics file that cannot be used as it is."""


# ---------------------------------------------------------------------------------------
# Loading and validating


def load_metrics(metrics: Mapping[str, Any] | str | os.PathLike) -> tuple[dict, str | None]:
    """The flat metrics (name -> value) and the notebook name, if the file says it.

    Accepts a metrics.json path, the run folder holding it, or an already loaded dict.
    """
    values, notebook, _ = _load_run(metrics)
    return values, notebook


def _load_run(metrics: Mapping[str, Any] | str | os.PathLike) -> tuple[dict, str | None, dict | None]:
    """(metrics, notebook, parameters) of a run; the last two None when it does not say."""
    content = dict(metrics) if isinstance(metrics, Mapping) else read_metrics(metrics)
    if isinstance(content.get("metrics"), Mapping):
        parameters = content.get("parameters")
        parameters = dict(parameters) if isinstance(parameters, Mapping) else None
        return dict(content["metrics"]), content.get("notebook"), parameters
    return content, None, None


def load_baseline(baseline: Mapping[str, Any] | str | os.PathLike) -> dict:
    """A baseline dict, read from a path if need be, with every spec checked."""
    if isinstance(baseline, Mapping):
        content = dict(baseline)
    else:
        path = Path(baseline)
        if not path.is_file():
            raise FileNotFoundError(f"no baseline file at {path}")
        content = read_json(path)
        if not isinstance(content, dict):
            raise BaselineError(f"{path} holds a JSON {type(content).__name__}, expected an object")
    specs = content.get("metrics")
    if not isinstance(specs, Mapping):
        raise BaselineError('a baseline needs a "metrics" object: metric name -> tolerance spec')
    for name, spec in specs.items():
        _check_spec(name, spec)
    parameters = content.get("parameters")
    if parameters is not None and not (
        isinstance(parameters, Mapping)
        and all(v is None or isinstance(v, (str, bool, numbers.Real)) for v in parameters.values())
    ):
        raise BaselineError(f'"parameters" must be an object of parameter name -> value, not {parameters!r}')
    return content


def _check_spec(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping) or not spec:
        raise BaselineError(f"metric {name!r}: spec {spec!r} is not a non-empty object")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise BaselineError(f"metric {name!r}: unknown spec keys {unknown}; allowed: {list(SPEC_KEYS)}")
    if ("rtol" in spec or "atol" in spec) and "value" not in spec:
        raise BaselineError(f'metric {name!r}: rtol/atol need a "value" to be relative to')
    try:
        for key in spec:
            low = 0.0 if key in ("rtol", "atol") else None
            check_float(f"{name}.{key}", spec[key], low=low)
    except ValueError as error:
        raise BaselineError(f"metric {name!r}: {error}") from None
    if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
        raise BaselineError(f"metric {name!r}: min {spec['min']:g} > max {spec['max']:g}: no value can pass")


def _number(value: Any) -> float | None:
    """The value as a finite float, or None when it is not one (missing, null, NaN, text)."""
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return float(value)
    return None


# ---------------------------------------------------------------------------------------
# Checking


@dataclass
class RegressionReport:
    """The outcome of a check: one table row per baseline metric.

    ``table`` has columns metric, baseline, got, tolerance, ok, and ``note`` saying why a
    row failed. ``problems`` holds failures that belong to no metric (a baseline for a
    different notebook); ``unchecked`` the run's metrics the baseline does not name.
    """

    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.table["ok"].all())

    @property
    def failed(self) -> list[str]:
        return self.table.loc[~self.table["ok"], "metric"].tolist()

    def __str__(self) -> str:
        shown = self._shown()
        # Problems first, so that a run of other parameters is not read as 30 drifted metrics.
        lines = [f"problem: {p}" for p in self.problems]
        lines += [shown.to_string(index=False)] if len(shown) else ["(the baseline names no metrics)"]
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        """``ok``, or ``FAILED: 2 of 30 metrics`` (and the count of other problems)."""
        verdict = "ok" if self.ok else f"FAILED: {len(self.failed)} of {len(self.table)} metrics"
        return verdict + (f"; {len(self.problems)} problem(s)" if self.problems else "")

    def _shown(self) -> pd.DataFrame:
        """The table with numbers as text, 6 significant digits, blank where there is none."""
        shown = self.table.copy()
        for column in ("baseline", "got"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.6g}")
        return shown

    # ---- renderings for CI: a job summary, a machine-readable record, a JUnit file ----

    def to_markdown(self, title: str | None = None) -> str:
        """A Markdown section: a title with the verdict, the table, the problems."""
        heading = f"### {title}: {self.verdict()}" if title else f"### {self.verdict()}"
        lines = [heading, ""]
        if len(self.table):
            shown = self._shown()
            shown["ok"] = shown["ok"].map(lambda ok: "ok" if ok else "**FAILED**")
            lines.append("| " + " | ".join(shown.columns) + " |")
            lines.append("|" + "---|" * len(shown.columns))
            for row in shown.itertuples(index=False):
                lines.append("| " + " | ".join(_markdown_cell(value) for value in row) + " |")
        else:
            lines.append("(the baseline names no metrics)")
        lines += [f"- problem: {_markdown_cell(p)}" for p in self.problems]
        if self.unchecked:
            lines += ["", "Not in the baseline (unchecked): " + ", ".join(f"`{n}`" for n in self.unchecked)]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data; a missing number is None."""
        rows = [
            {
                key: (None if key in ("baseline", "got") and pd.isna(value) else value)
                for key, value in row.items()
            }
            for row in self.table.to_dict("records")
        ]
        for row in rows:
            row["ok"] = bool(row["ok"])
        return {
            "ok": self.ok,
            "failed": self.failed,
            "metrics": rows,
            "problems": list(self.problems),
            "unchecked": list(self.unchecked),
        }

    def to_junit(self, suite: str) -> str:
        """JUnit XML: one ``testcase`` per metric, named by it, in class ``suite``.

        A drifted or missing metric is a ``failure`` whose message is its note; problems
        that belong to no metric are one more failing case, ``baseline``.
        """
        root = ET.Element("testsuites")
        cases = ET.SubElement(root, "testsuite", name=suite)
        shown = self._shown()
        for row in shown.itertuples(index=False):
            case = ET.SubElement(cases, "testcase", classname=suite, name=row.metric, time="0")
            if not row.ok:
                failure = ET.SubElement(case, "failure", message=row.note, type="MetricDrift")
                failure.text = (
                    f"baseline {row.baseline or '-'}, got {row.got or '-'}, tolerance {row.tolerance}"
                )
        if self.problems:
            case = ET.SubElement(cases, "testcase", classname=suite, name="baseline", time="0")
            failure = ET.SubElement(
                case, "failure", message="; ".join(self.problems), type="BaselineMismatch"
            )
            failure.text = "\n".join(self.problems)
        failures = len(self.failed) + bool(self.problems)
        cases.set("tests", str(len(shown) + bool(self.problems)))
        cases.set("failures", str(failures))
        cases.set("errors", "0")
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def render(self, format: str, name: str) -> str:
        """The report in one of ``FORMATS``; ``name`` titles it (the baseline's name, say)."""
        if format == "table":
            text = str(self)
            if self.unchecked:
                text += "\nnot in the baseline (unchecked): " + ", ".join(self.unchecked)
            return text
        if format == "markdown":
            return self.to_markdown(name)
        if format == "json":
            return json.dumps({"name": name, **self.to_dict()}, indent=2)
        if format == "junit":
            return self.to_junit(name)
        raise ValueError(f"format={format!r} is not allowed: expected one of {', '.join(FORMATS)}")


def _markdown_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, no line breaks."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def check_metrics(
    metrics: Mapping[str, Any] | str | os.PathLike,
    baseline: Mapping[str, Any] | str | os.PathLike,
) -> RegressionReport:
    """Compare a run's metrics with a baseline; see the module docstring for the rules.

    Both arguments take a dict or a path (a run folder works for ``metrics``).
    """
    values, notebook, parameters = _load_run(metrics)
    content = load_baseline(baseline)
    rows = [_check_one(name, spec, values) for name, spec in content["metrics"].items()]
    problems = _mismatches(content, notebook, parameters)
    unchecked = [name for name in values if name not in content["metrics"]]
    table = pd.DataFrame(rows, columns=["metric", "baseline", "got", "tolerance", "ok", "note"])
    table["ok"] = table["ok"].astype(bool)
    return RegressionReport(table=table, problems=problems, unchecked=unchecked)


def _mismatches(baseline: Mapping[str, Any], notebook: str | None, parameters: dict | None) -> list[str]:
    """Why a run cannot be compared with the baseline at all: another notebook, other parameters."""
    problems = []
    expected = baseline.get("notebook")
    if notebook is not None and expected is not None and notebook != expected:
        problems.append(f"the run is from notebook {notebook!r}, the baseline is for {expected!r}")
    differ = parameter_differences(baseline.get("parameters"), parameters)
    if differ:
        problems.insert(0, "parameters differ: " + ", ".join(differ))
    return problems


def parameter_differences(
    baseline_parameters: Mapping[str, Any] | None, run_parameters: Mapping | None
) -> list[str]:
    """``name run-value vs baseline-value`` for each parameter the baseline records that the run changed.

    Nothing when either side records no parameters (a flat metrics file, an older baseline).
    """
    if not baseline_parameters or run_parameters is None:
        return []
    differ = []
    for name, expected in baseline_parameters.items():
        got = run_parameters.get(name, "(not recorded)")
        if got != expected or isinstance(got, bool) != isinstance(expected, bool):
            differ.append(f"{name} {_show(got)} vs {_show(expected)}")
    return differ


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_one(name: str, spec: Mapping[str, Any], values: Mapping[str, Any]) -> list:
    reference = spec.get("value")
    tolerance = describe_spec(spec)
    if name not in values:
        return [name, reference, None, tolerance, False, "missing"]
    got = _number(values[name])
    if got is None:
        return [name, reference, None, tolerance, False, f"not a finite number: {values[name]!r}"]
    notes = []
    if reference is not None:
        allowed = spec.get("atol", 0.0) + spec.get("rtol", 0.0) * abs(reference)
        off = abs(got - reference)
        if off > allowed:
            relative = f" ({off / abs(reference):.2%})" if reference else ""
            notes.append(f"off by {off:.3g}{relative}, allowed {allowed:.3g}")
    if "max" in spec and got > spec["max"]:
        notes.append(f"above max {spec['max']:.6g}")
    if "min" in spec and got < spec["min"]:
        notes.append(f"below min {spec['min']:.6g}")
    return [name, reference, got, tolerance, not notes, "; ".join(notes)]


def describe_spec(spec: Mapping[str, Any]) -> str:
    """A spec as a reader would say it: ``rtol 0.15``, ``<= 0.01``, ``exact``."""
    parts = [f"{key} {spec[key]:g}" for key in ("rtol", "atol") if key in spec]
    if "value" in spec and not parts:
        parts.append("exact")
    if "max" in spec:
        parts.append(f"<= {spec['max']:g}")
    if "min" in spec:
        parts.append(f">= {spec['min']:g}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# Updating on purpose


def update_baseline(
    metrics: Mapping[str, Any] | str | os.PathLike,
    baseline_path: str | os.PathLike,
    default_spec: Mapping[str, Any] | None = None,
    exclude: Sequence[str] = TIMINGS,
    scale: str | None = None,
    force: bool = False,
) -> dict:
    """Rewrite the baseline's values from a run, keeping every metric's tolerance.

    Each metric with a ``value`` gets the run's number; its ``rtol``/``atol``/``max``/
    ``min`` stay as they were. Metrics of the run the baseline does not name yet are added
    with ``default_spec`` (e.g. ``{"rtol": 0.05}``) when one is given, except names
    matching an ``exclude`` glob (timings by default). A baseline that does not exist is
    created, recording the run's parameters (but not ``UNRECORDED_PARAMETERS``).

    Refuses, changing nothing, when a baselined metric is missing from the run or not a
    number there: dropping a metric from a baseline is a decision made by hand. Unless
    ``force``, also refuses a run of another notebook or with other parameters than the
    baseline records, and a new metric that is not a number (NaN is written as null):
    with ``force`` the notebook and parameters become the run's and such metrics are
    left out. Returns the baseline as written.
    """
    values, notebook, parameters = _load_run(metrics)
    path = Path(baseline_path)
    if path.exists():
        content = load_baseline(path)
    else:
        content = {"notebook": notebook} if notebook is not None else {}
        if parameters is not None:
            content["parameters"] = {
                name: value
                for name, value in parameters.items()
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in UNRECORDED_PARAMETERS)
            }
        content["metrics"] = {}
    if scale is not None:
        content["scale"] = scale
    if default_spec is not None:
        _check_spec("default_spec", {"value": 0.0, **default_spec})
    unusable = [n for n in content["metrics"] if _number(values.get(n)) is None]
    if unusable:
        raise BaselineError(
            "cannot update the baseline: missing or not a number in the run: "
            + ", ".join(unusable)
            + "; remove them from the baseline by hand if they are gone on purpose"
        )
    mismatches = _mismatches(content, notebook, parameters)
    new_metrics = []
    if default_spec is not None:
        new_metrics = [
            name
            for name in values
            if name not in content["metrics"] and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
        ]
    not_numbers = [name for name in new_metrics if _number(values[name]) is None]
    if not force and (mismatches or not_numbers):
        reasons = mismatches + (
            [f"not a number in the run, so it would be left out: {', '.join(not_numbers)}"]
            if not_numbers
            else []
        )
        raise BaselineError(
            "refusing to update the baseline: " + "; ".join(reasons) + " (force it with --force)"
        )
    if force and mismatches:
        if notebook is not None and content.get("notebook") is not None:
            content["notebook"] = notebook
        if parameters is not None and content.get("parameters"):
            content["parameters"] = {name: parameters.get(name) for name in content["parameters"]}
    specs = {}
    for name, spec in content["metrics"].items():
        spec = dict(spec)
        if "value" in spec:
            spec["value"] = _number(values[name])
        specs[name] = spec
    for name in new_metrics:
        if _number(values[name]) is not None:
            specs[name] = {"value": _number(values[name]), **default_spec}
    content["metrics"] = specs
    write_json_atomic(path, content)
    return content


# ---------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-regress",
        description="Check a run's metrics against a baseline JSON (exit 1 on drift).",
    )
    parser.add_argument("metrics", help="a metrics.json file, or the run folder holding one")
    parser.add_argument("baseline", help="the baseline JSON file")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rewrite the baseline's values from this run, keeping the tolerances",
    )
    parser.add_argument("--rtol", type=float, help="with --update: rtol for metrics not yet in the baseline")
    parser.add_argument("--atol", type=float, help="with --update: atol for metrics not yet in the baseline")
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --update: write even for a run of another notebook or other parameters, "
        "leaving out metrics that are not numbers",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help=f"with --update: metric names not to add (repeatable; default {' '.join(TIMINGS)})",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="how to print the check: a text table (default), Markdown for a CI job summary, "
        "JSON, or JUnit XML with one test case per metric",
    )
    args = parser.parse_args(argv)
    if args.update and args.format != "table":
        parser.error("--format applies to the check; --update prints what it changed as a table")
    default_spec = {k: v for k, v in (("rtol", args.rtol), ("atol", args.atol)) if v is not None}
    try:
        if args.update:
            return _update(args, default_spec or None)
        report = check_metrics(args.metrics, args.baseline)
    except (OSError, ValueError) as error:  # JSONDecodeError and BaselineError included
        print(f"lora-regress: error: {error}", file=sys.stderr)
        return 2
    print(report.render(args.format, Path(args.baseline).stem))
    return 0 if report.ok else 1


def _update(args: argparse.Namespace, default_spec: dict | None) -> int:
    path = Path(args.baseline)
    if not path.exists() and default_spec is None:
        raise BaselineError(f"{path} does not exist yet: pass --rtol and/or --atol for its metrics")
    if path.exists():
        print("before the update:")
        print(check_metrics(args.metrics, path))
    content = update_baseline(
        args.metrics, path, default_spec, exclude=tuple(args.exclude or TIMINGS), force=args.force
    )
    print(f"baseline written: {path} ({len(content['metrics'])} metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
