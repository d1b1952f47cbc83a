"""What a run leaves behind: ``metrics.json``, figures, an HTML rendering and the index.

A run is one executed notebook writing into its own ``output_dir``. That folder ends up
holding the executed ``.ipynb``, its HTML rendering, the figures as PNG files and a
``metrics.json``::

    {"notebook": "01_rank1_recovery",
     "parameters": {...every notebook parameter...},
     "environment": {...versions, device, threads, git commit, timestamp...},
     "metrics": {"lora_final_loss": 0.0013, "pretrain_seconds": 41.2, ...}}

``metrics.json`` is written last and atomically, so its presence is what marks a run as
complete: an interrupted run leaves no file, or the previous complete one, never half of
one. ``build_index`` walks a reports folder and writes an ``index.html`` linking every
run (a folder holding ``metrics.json``) and every sweep (a folder holding ``summary.csv``).

Command line: ``lora-reports index [ROOT]``; ``lora-reports markdown RUN_FOLDER`` (markdown.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import math
import numbers
import os
import platform
import secrets
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.csv"  # a sweep folder's table, one row per config
SWEEP_FILE = "sweep.json"  # a sweep folder's record of what was asked for
BASELINES_DIR = "baselines"
INDEX_FILE = "index.html"
FIGURE_DPI = 150  # sharp enough for slides and blog posts, small enough to commit by mistake
KEY_METRICS = 4  # how many metrics the index shows per run; metrics.json holds them all


# ---------------------------------------------------------------------------------------
# Atomic writes


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, whole.

    The temporary file lives in the destination folder because ``os.replace`` is only
    atomic within one file system. The file gets the mode a plain ``open()`` would give
    it: an existing file's own, else 0666 less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp behind.
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, uniquely named file beside ``path``: (descriptor, name).

    Not ``tempfile.mkstemp``, which makes every file 0600: here the kernel applies the
    umask to 0666, as for any file a user creates, without touching the process's umask.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except OSError:
                os.close(fd)
                os.unlink(tmp)
                raise
        return fd, tmp


def _jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON types from what notebooks hand over (numpy and torch scalars, Paths).

    JSON has no NaN or infinity and strict readers (browsers, jq) reject them, so a
    non-finite number is written as ``null``: "no usable number", which is what it is.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(obj.tolist(), where)
    raise TypeError(f"{where} of type {type(obj).__name__} cannot be written as JSON")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path.

    The whole object is converted before anything touches the disk, so an object that
    cannot be serialised raises ``TypeError`` and leaves ``path`` as it was.
    """
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(Path(path), text)


# ---------------------------------------------------------------------------------------
# metrics.json


# Besides torch and Python: the packages whose versions can move a run's numbers or files.
RECORDED_PACKAGES = ("numpy", "pandas", "matplotlib", "safetensors", "papermill", "nbclient")
LOCK_FILE = "requirements.lock"  # at the repository root; see scripts/lock.sh


def environment_info(device: Any = None) -> dict:
    """Where a run ran: versions, platform, device, torch threads, git commit, UTC time.

    ``device`` is the device the run used; when not given (or ``"auto"``), the one
    ``resolve_device("auto")`` picks, so that the record names a real device.
    ``lock_sha256`` is the hash of the checkout's lock file (None outside a checkout): equal
    hashes and ``git_dirty`` false mean the run's environment was meant to be the locked one.
    """
    import torch

    if device is None or device == "auto":
        from ..training import resolve_device

        device = resolve_device("auto")
    device = str(device)
    info = {
        "lora_core": _package_version(),
        "torch": torch.__version__,
        **{name: _distribution_version(name) for name in RECORDED_PACKAGES},
        "lock_sha256": _lock_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "device_name": None,
        "torch_threads": torch.get_num_threads(),
        "git_commit": None,
        "git_dirty": None,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    info["git_commit"], info["git_dirty"] = _git_state()
    return info


def _package_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lora_core")
    except metadata.PackageNotFoundError:
        # Running from a checkout that was never pip-installed.
        package = sys.modules.get("lora_core")
        return getattr(package, "__version__", None)


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _lock_hash() -> str | None:
    import hashlib

    path = Path(__file__).resolve().parents[2] / LOCK_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _git_state() -> tuple[str | None, bool | None]:
    """The commit of the lora_core source in use and whether it has uncommitted changes.

    Asked in the package's own folder, not the working directory: the code that produced
    the numbers is what matters. ``(None, None)`` when it is not a git checkout.
    """
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def write_metrics(
    output_dir: str | os.PathLike,
    notebook: str,
    parameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    environment: Mapping[str, Any] | None = None,
    headline: Sequence[str] = (),
) -> Path:
    """Write ``{output_dir}/metrics.json`` atomically and return its path.

    ``metrics`` is flat: name -> number (or None when there is none, e.g. a diverged
    run). Timings are metrics whose names end in ``_seconds``. ``headline`` names the few
    metrics that say how the run went, in the notebook's judgement: the reports index
    shows those.
    """
    if not isinstance(notebook, str) or not notebook:
        raise ValueError(f"notebook={notebook!r} is not allowed: expected a non-empty string")
    for name, mapping in (("parameters", parameters), ("metrics", metrics)):
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{name}={mapping!r} is not allowed: expected a dict")
    headline = [headline] if isinstance(headline, str) else list(headline)
    unknown = [name for name in headline if name not in metrics]
    if unknown:
        raise ValueError(f"headline={headline!r} is not allowed: {unknown} are not among the metrics")
    content = {
        "notebook": notebook,
        "parameters": dict(parameters),
        "environment": dict(environment) if environment is not None else environment_info(),
        "metrics": {str(name): _metric_value(name, value) for name, value in metrics.items()},
        "headline": headline,
    }
    return write_json_atomic(Path(output_dir) / METRICS_FILE, content)


def _metric_value(name: str, value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # 0-d tensors and numpy scalars, as training code returns them
    if value is None or isinstance(value, numbers.Real):
        return value
    raise ValueError(f"metrics[{name!r}]={value!r} is not allowed: expected a number or None")


def read_metrics(path_or_dir: str | os.PathLike) -> dict:
    """The content of a ``metrics.json``, given the file or the run folder holding it."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    content = read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, expected an object")
    return content


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a malformed file raises ValueError naming the file."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None


# ---------------------------------------------------------------------------------------
# Figures and HTML


def save_figure(fig: Any, output_dir: str | os.PathLike, name: str) -> Path:
    """Save a matplotlib figure as ``{output_dir}/{name}.png`` and return the path."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(f"name={name!r} is not allowed: expected a file name without folders")
    path = Path(output_dir) / (name if name.endswith(".png") else f"{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight", facecolor="white")
    return path


def show_figure(fig: Any, output_dir: str | os.PathLike, name: str) -> Any:
    """``save_figure``, then the saved PNG itself as the cell's output.

    A notebook that saves a figure and then shows ``fig`` renders it twice (a second or
    more for a ΔΘ heatmap); this renders it once, and the reader sees exactly the file.
    It is shown at the size the inline backend would show the figure.
    """
    from IPython.display import Image

    data = save_figure(fig, output_dir, name).read_bytes()
    width = int.from_bytes(data[16:20], "big")  # a PNG's width: the first field of its IHDR chunk
    return Image(data=data, format="png", width=round(width * fig.dpi / FIGURE_DPI))


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike | None = None) -> Path:
    """Render an executed notebook as one self-contained HTML file; returns its path.

    Figures in outputs are already base64 in the notebook; images that markdown cells
    link from disk are embedded too, so the page can be copied or mailed on its own.
    Only MathJax comes from its CDN: offline, formulas show as their TeX source.
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook_path = Path(notebook_path)
    if not notebook_path.is_file():
        raise FileNotFoundError(f"no notebook at {notebook_path}")
    html_path = notebook_path.with_suffix(".html") if html_path is None else Path(html_path)
    notebook = nbformat.read(notebook_path, as_version=4)
    exporter = HTMLExporter(embed_images=True)
    resources = {"metadata": {"name": notebook_path.stem, "path": str(notebook_path.parent)}}
    body, _ = exporter.from_notebook_node(notebook, resources=resources)
    return write_text_atomic(html_path, body)


# ---------------------------------------------------------------------------------------
# Index of a reports folder


# The size of a run, read from its parameters: the notebooks' defaults (the blog's scale)
# and the small size the tests and the small baselines use. Anything else is "custom".
SCALES = {
    "full": dict(n=10000, d_in=1001, d_out=1000, epochs=100),
    "small": dict(n=512, d_in=65, d_out=64, epochs=60),
}
_REPO_BASELINES = Path(__file__).resolve().parents[2] / "reports" / BASELINES_DIR


def build_index(reports_root: str | os.PathLike = "reports") -> Path:
    """Write ``{reports_root}/index.html`` linking every run and sweep; returns its path.

    A run is a folder holding ``metrics.json``; a sweep is a folder holding
    ``summary.csv``, and the runs inside a sweep are listed under it. Each run shows its
    notebook's headline metrics, its size (full, small or custom) and its baseline
    verdict (pass, drift or not checked); each sweep its notebook and its best config.
    The committed ``baselines/`` folder is not a run and is skipped. A malformed
    ``metrics.json`` is listed with a note and never stops the index.
    """
    root = Path(reports_root)
    if not root.is_dir():
        raise FileNotFoundError(f"reports folder {root} does not exist")
    baselines = root / BASELINES_DIR if (root / BASELINES_DIR).is_dir() else _REPO_BASELINES
    sweeps, runs = [], []
    for folder in _report_folders(root):
        (sweeps if (folder / SUMMARY_FILE).is_file() else runs).append(folder)
    # A run inside a sweep is shown with its sweep, not again at top level.
    nested = {run: sweep for run in runs for sweep in sweeps if sweep in run.parents}
    top_runs = [_run_entry(run, root, baselines) for run in runs if run not in nested]
    sweep_entries = []
    for sweep in sweeps:
        entry = _run_entry(sweep, root, baselines)
        entry["runs"] = _newest_first(
            [_run_entry(run, root, baselines) for run, owner in nested.items() if owner == sweep]
        )
        entry["configs"] = _sweep_counts(sweep / SUMMARY_FILE)
        _describe_sweep(entry, sweep)
        sweep_entries.append(entry)
    page = _index_page(_newest_first(top_runs), _newest_first(sweep_entries))
    return write_text_atomic(root / INDEX_FILE, page)


def _report_folders(root: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(root):
        folder = Path(folder)
        # Sorted in place so os.walk descends in a stable order; hidden folders
        # (.ipynb_checkpoints) and the baselines are not runs.
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and not (folder == root and d == BASELINES_DIR)
        )
        if METRICS_FILE in files or SUMMARY_FILE in files:
            found.append(folder)
    return found


def run_scale(parameters: Mapping[str, Any]) -> str | None:
    """ "full", "small" or "custom" from a run's parameters; None when it has no size parameters."""
    for scale, sizes in SCALES.items():
        if all(parameters.get(k) == v for k, v in sizes.items()):
            return scale
    return "custom" if any(k in parameters for k in SCALES["full"]) else None


def _run_entry(folder: Path, root: Path, baselines: Path = _REPO_BASELINES) -> dict:
    entry = {
        "folder": folder.relative_to(root).as_posix() or ".",
        "notebook": "",
        "date": _dt.datetime.fromtimestamp(folder.stat().st_mtime, _dt.timezone.utc),
        "metrics": {},
        "scale": "",
        "verdict": "",
        "note": "",
        "links": _links(folder, root),
    }
    if (folder / METRICS_FILE).is_file():
        try:
            content = read_metrics(folder)
            _fill_entry(entry, content, baselines)
        except (OSError, ValueError, TypeError, AttributeError) as error:
            # One hand-edited or truncated file must not cost the index of every other run.
            entry["note"] = f"unreadable {METRICS_FILE}, skipped: {error}"
            entry["metrics"], entry["scale"], entry["verdict"] = {}, "", ""
    return entry


def _field(content: dict, name: str, kind: type) -> Any:
    value = content.get(name, kind())
    if not isinstance(value, kind):
        raise ValueError(f'"{name}" is a {type(value).__name__}, expected a JSON {kind.__name__}')
    return value


def _fill_entry(entry: dict, content: dict, baselines: Path) -> None:
    metrics = _field(content, "metrics", dict)
    parameters = _field(content, "parameters", dict)
    environment = _field(content, "environment", dict)
    headline = _field(content, "headline", list)
    entry["notebook"] = str(content.get("notebook", ""))
    shown = [k for k in headline if k in metrics]
    if not shown:
        # Written before notebooks declared a headline: the first numbers, timings aside.
        shown = [k for k in metrics if not str(k).endswith("_seconds")][:KEY_METRICS]
        entry["note"] = "no headline declared: the first metrics" if metrics else ""
    entry["metrics"] = {k: metrics[k] for k in shown}
    entry["scale"] = run_scale(parameters) or _sweep_scale(parameters) or "—"
    entry["verdict"] = _verdict(content, entry["notebook"], entry["scale"], baselines)
    try:
        entry["date"] = _dt.datetime.fromisoformat(environment.get("timestamp"))
    except (TypeError, ValueError):
        pass  # keep the folder's modification time


def _sweep_scale(parameters: Mapping[str, Any]) -> str | None:
    """A report over a sweep (notebook 04) has the size of the sweep it reads."""
    sweep_dir = parameters.get("sweep_dir")
    if not isinstance(sweep_dir, str) or not (Path(sweep_dir) / SWEEP_FILE).is_file():
        return None
    try:
        fixed = read_json(Path(sweep_dir) / SWEEP_FILE).get("fixed") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(fixed, dict):
        return None
    # Size parameters a sweep leaves out take the notebook's defaults: the full size.
    return run_scale({**SCALES["full"], **fixed})


def _verdict(content: dict, notebook: str, scale: str, baselines: Path) -> str:
    from .regression import check_metrics

    baseline = baselines / f"{notebook}.{scale}.json"
    if scale not in SCALES or not baseline.is_file():
        return "not checked"
    try:
        report = check_metrics(content, baseline)
    except ValueError as error:  # an unreadable baseline: say so, keep the run listed
        return f"not checked: {error}"
    if report.ok:
        return "pass"
    return (
        f"drift ({len(report.failed)} of {len(report.table)} metrics)"
        + ("; " if report.problems else "")
        + "; ".join(report.problems)
    )


def _describe_sweep(entry: dict, sweep: Path) -> None:
    """The sweep's notebook and its best finished config by the notebook's first headline metric."""
    import pandas as pd

    try:
        record = read_json(sweep / SWEEP_FILE) if (sweep / SWEEP_FILE).is_file() else {}
        entry["notebook"] = Path(str(record.get("notebook", ""))).stem
        grid = list(record.get("grid") or {})
        fixed = record.get("fixed")
        if isinstance(fixed, dict):  # size parameters left out take the notebook's defaults
            entry["scale"] = run_scale({**SCALES["full"], **fixed})
        frame = pd.read_csv(sweep / SUMMARY_FILE)
    except Exception as error:  # a partial or hand-edited sweep must not break the index
        entry["note"] = f"unreadable sweep record: {error}"
        return
    if "status" in frame.columns:
        frame = frame[frame["status"] == "ok"]
    metric = _sweep_metric(sweep, frame)
    if metric is None or frame[metric].dropna().empty:
        return
    best = frame.loc[frame[metric].idxmin()]
    config = ", ".join(f"{k}={best[k]}" for k in grid if k in best)
    entry["metrics"] = {f"best ({config or best.get('path', '?')}): {metric}": best[metric]}


def _sweep_metric(sweep: Path, frame: Any) -> str | None:
    """The first headline metric its runs declared that summary.csv has; else a loss column."""
    for path in frame.get("path", []):
        try:
            headline = read_metrics(sweep / str(path)).get("headline") or []
        except (OSError, ValueError):
            continue
        for name in headline if isinstance(headline, list) else []:
            if name in frame.columns and frame[name].dtype.kind in "fi":
                return name
    losses = [c for c in frame.columns if "loss" in str(c) and frame[c].dtype.kind in "fi"]
    return losses[0] if losses else None


def _links(folder: Path, root: Path) -> list[tuple[str, str]]:
    """(label, relative href) pairs for the files a reader wants to open."""

    def href(path: Path) -> str:
        return quote(path.relative_to(root).as_posix())

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    links = [(p.name, href(p)) for p in files if p.suffix == ".html"]
    links += [(p.name, href(p)) for p in files if p.suffix == ".ipynb"]
    links += [(p.name, href(p)) for p in files if p.name in (METRICS_FILE, SUMMARY_FILE)]
    links += [(p.name, href(p)) for p in files if p.suffix == ".png"]
    return links


def _sweep_counts(summary: Path) -> str:
    import pandas as pd

    try:
        frame = pd.read_csv(summary)
    except Exception as error:  # a partial or hand-edited CSV must not break the index
        return f"unreadable {SUMMARY_FILE}: {error}"
    text = f"{len(frame)} configs"
    if "status" in frame.columns:
        counts = frame["status"].value_counts()
        text += " (" + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")"
    return text


def _newest_first(entries: list[dict]) -> list[dict]:
    def key(entry: dict) -> float:
        date = entry["date"]
        if date.tzinfo is None:
            date = date.replace(tzinfo=_dt.timezone.utc)
        return date.timestamp()

    return sorted(entries, key=key, reverse=True)


def _format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "—" if value is None else str(value)
    return f"{value:.6g}"


def _entry_cells(entry: dict) -> str:
    esc = html.escape
    metrics = "<br>".join(f"{esc(str(k))} = {esc(_format_number(v))}" for k, v in entry["metrics"].items())
    if entry["note"]:
        metrics += ("<br>" if metrics else "") + f'<span class="note">{esc(entry["note"])}</span>'
    verdict = entry.get("verdict", "")
    css = "pass" if verdict == "pass" else "note" if verdict.startswith("drift") else ""
    links = " · ".join(f'<a href="{h}">{esc(label)}</a>' for label, h in entry["links"])
    first = entry["links"][0][1] if entry["links"] else quote(entry["folder"])
    return (
        f'<td><a href="{first}">{esc(entry["folder"])}</a></td>'
        f"<td>{esc(entry['notebook'])}</td>"
        f"<td>{entry['date'].strftime('%Y-%m-%d %H:%M')}</td>"
        f'<td>{esc(entry.get("scale", ""))}</td><td class="{css}">{esc(verdict)}</td>'
        f"<td>{metrics}</td><td>{links}</td>"
    )


def _index_page(runs: list[dict], sweeps: list[dict]) -> str:
    head = (
        "<tr><th>folder</th><th>notebook</th><th>date (UTC)</th><th>size</th><th>baseline</th>"
        "<th>headline metrics</th><th>files</th></tr>"
    )
    run_rows = "\n".join(f"<tr>{_entry_cells(e)}</tr>" for e in runs)
    sweep_rows = []
    for sweep in sweeps:
        inner = "\n".join(f"<tr>{_entry_cells(e)}</tr>" for e in sweep["runs"])
        details = (
            f"<details><summary>{html.escape(sweep['configs'])}</summary>"
            f"<table>{head}\n{inner}</table></details>"
        )
        sweep_rows.append(f"<tr>{_entry_cells(sweep)}</tr><tr><td colspan=7>{details}</td></tr>")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lora_core reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.note {{ color: #a00; }}
.pass {{ color: #070; }}
</style></head><body>
<h1>lora_core reports</h1>
<p>Generated {now}. A run is complete when its folder holds {METRICS_FILE}.</p>
<h2>Runs ({len(runs)})</h2>
<table>{head}
{run_rows}</table>
<h2>Sweeps ({len(sweeps)})</h2>
<table>{head}
{chr(10).join(sweep_rows)}</table>
</body></html>
"""


# ---------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """``lora-reports index [ROOT]``, ``lora-reports markdown RUN_FOLDER [--out DIR]`` and
    ``lora-reports seed-band SWEEP_DIR --out FILE``."""
    parser = argparse.ArgumentParser(prog="lora-reports", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="write ROOT/index.html linking every run and sweep")
    index.add_argument("root", nargs="?", default="reports", help="reports folder (default: reports)")
    post = commands.add_parser("markdown", help="turn an executed run into a Markdown post with its figures")
    post.add_argument("run_folder", help="a run folder: metrics.json and the executed notebook")
    post.add_argument("--out", default=None, help="where the post goes (default: RUN_FOLDER/markdown)")
    band = commands.add_parser(
        "seed-band",
        help="summarise a sweep over seeds: min, median and max of every logged loss and headline",
    )
    band.add_argument("sweep_dir", help="a lora-sweep folder whose configs differ in the seed alone")
    band.add_argument("--out", required=True, help="the JSON file to write")
    band.add_argument(
        "--finished-only",
        action="store_true",
        help="summarise the configs that finished and list the others as unfinished, instead of refusing",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "markdown":
            from .markdown import export_markdown

            path = export_markdown(args.run_folder, args.out)
        elif args.command == "seed-band":
            from .seed_band import write_seed_band

            path = write_seed_band(args.sweep_dir, args.out, args.finished_only)
        else:
            path = build_index(args.root)
    except (FileNotFoundError, ValueError) as error:
        print(f"lora-reports: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
