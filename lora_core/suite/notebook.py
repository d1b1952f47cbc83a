"""What every notebook of the suite does around its experiment, written once.

A notebook declares its parameters in a cell tagged ``parameters``, one typed line each
(``r: int = 1  # LoRA rank``), which is what papermill reads. The cell after it calls

    params = suite.read_parameters(globals())

which reads the declared names from that cell's annotations, checks every value (its
declared type, then the rule for its name in ``RULES``), and returns them: ``params[name]``
is the value to use (a comma-separated list parsed, ``device`` resolved) and
``params.recorded`` the values to write into metrics.json. A bad value stops the notebook
there, before any work, with a message naming the parameter, its value and what is
allowed. ``metric_key`` names a metric of one config the same way in every notebook.

Folder parameters (``output_dir``, ``sweep_dir``, ``compare_with``) given as relative
paths are taken from the repository root (``REPO_ROOT``), not from wherever the kernel
happened to start: ``reports/01_rank1_recovery`` is the same folder in Jupyter, under
plain ``papermill`` run from any directory, and in the main job. The resolved path is
written back into the namespace, so the notebook's later cells use it. An
``output_dir`` that already holds a finished run (its ``metrics.json``) with other
parameters is refused: two runs never share a folder.

``progress`` (progress bars while training) is checked but not recorded, since it changes
what a person sees, not what is computed; it is True only where a person watches
(``interactive``), so a run by papermill stores no bars whatever the parameter says.
``params.size_note`` says the run's size in words when it is not the full one, for the
figures' titles.
"""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ..layer import INITS, SCALINGS
from ..models import PLACEMENTS
from ..sequences import TASKS
from ..training import OPTIMIZERS, SAMPLINGS, resolve_device
from ..validation import check_bool, check_choice, check_float, check_int
from .regression import parameter_differences
from .reports import METRICS_FILE, SCALES, SUMMARY_FILE, SWEEP_FILE, read_metrics

# The checkout this package runs from, where notebooks/ and reports/ live; without one
# (an installed package), relative folders are taken from the working directory.
_CHECKOUT = Path(__file__).resolve().parents[2]
REPO_ROOT = _CHECKOUT if (_CHECKOUT / "notebooks").is_dir() else None

# The largest seed a notebook takes: it draws its second and third data sets with
# seed + 1 and seed + 2, and every seed must stay within seed_everything's range.
MAX_SEED = 2**32 - 3


def _positive_int(name: str, value: Any, p: Mapping) -> int:
    return check_int(name, value, 1)


def _positive_float(name: str, value: Any, p: Mapping) -> float:
    return check_float(name, value, low=0.0, low_inclusive=False)


def _rank(name: str, value: Any, p: Mapping) -> int:
    widths = [p[w] for w in ("d_in", "d_out", "d_model") if w in p]
    return check_int(name, value, 1, min(widths) if widths else None)


def _divisor(name: str, value: Any, of: int | None) -> int:
    value = check_int(name, value, 1)
    if of is not None and of % value:
        raise ValueError(f"{name}={value!r} is not allowed: expected a divisor of d_model={of}")
    return value


def _new_tasks(name: str, value: Any, p: Mapping) -> list:
    """At least two fine-tuning tasks (notebook 05 switches between them), none the pre-training one."""
    tasks = _list_of(_choice(TASKS), ordered=False)(name, value, p)
    if len(tasks) < 2 or p.get("pretrain_task") in tasks:
        raise ValueError(
            f"{name}={value!r} is not allowed: expected at least two of {list(TASKS)} other than "
            f"pretrain_task={p.get('pretrain_task')!r}"
        )
    return tasks


def _choice(choices: tuple) -> Callable[[str, Any, Mapping], Any]:
    return lambda name, value, p: check_choice(name, value, choices)


def _list_of(item: Callable[[str, Any, Mapping], Any], ordered: bool = True):
    """A rule for a comma-separated list whose items each pass ``item``; sorted unless not ``ordered``."""

    def rule(name: str, value: Any, p: Mapping) -> list:
        items = [item(name, v, p) for v in parse_list(name, value)]
        return sorted(items) if ordered else items

    return rule


def resolve_folder(value: str) -> Path:
    """An absolute folder: a relative ``value`` is taken from ``REPO_ROOT`` (see above)."""
    folder = Path(value).expanduser()
    if not folder.is_absolute() and REPO_ROOT is not None:
        folder = REPO_ROOT / folder
    return folder.resolve()


def _output_dir(name: str, value: Any, p: Mapping) -> str:
    """A folder that exists, or can be made, and can be written: checked before any work."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={value!r} is not allowed: expected a folder path")
    folder = resolve_folder(value)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{name}={value!r} is not allowed: the folder cannot be created ({err.strerror})"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={value!r} is not allowed: expected a folder this user can write to")
    return str(folder)


def _sweep_dir(name: str, value: Any, p: Mapping) -> str:
    folder = resolve_folder(value)
    if not ((folder / SUMMARY_FILE).is_file() and (folder / SWEEP_FILE).is_file()):
        raise ValueError(
            f"{name}={value!r} is not allowed: expected a lora-sweep folder holding {SUMMARY_FILE} and {SWEEP_FILE}"
        )
    return str(folder)


def _optional_folder(name: str, value: Any, p: Mapping) -> str:
    """A folder to read, or "" for none."""
    return str(resolve_folder(value)) if value else ""


def _check_not_another_run(output_dir: str, recorded: Mapping[str, Any]) -> None:
    """Refuse a folder that holds a finished run with other parameters than this one."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return
    try:
        earlier = read_metrics(path).get("parameters")
    except ValueError as err:
        raise ValueError(
            f"output_dir={output_dir!r} is not allowed: it holds a {METRICS_FILE} that cannot be "
            f"read ({err}); pass another output_dir or remove that file"
        ) from None
    ignored = {"output_dir"}  # where the run is written is not what it computes
    if isinstance(earlier, Mapping):
        earlier = {k: v for k, v in earlier.items() if k not in ignored}
        differ = parameter_differences(earlier, {k: v for k, v in recorded.items() if k not in ignored})
    else:
        differ = [f"{METRICS_FILE} records no parameters"]
    if differ:
        raise ValueError(
            f"output_dir={output_dir!r} is not allowed: it holds a run with other parameters "
            f"({'; '.join(differ)}, this run vs that one); pass another output_dir, or delete "
            "that folder to replace its run"
        )


# The rule for each parameter name the suite's notebooks use. A rule may read parameters
# declared before it (``p``), so the parameters cell declares n before batch_size, say.
RULES: dict[str, Callable[[str, Any, Mapping], Any]] = {
    "n": _positive_int,
    "d_in": _positive_int,
    "d_out": _positive_int,
    "epochs": _positive_int,
    "batch_size": lambda name, value, p: check_int(name, value, 1, p.get("n")),
    "lr": _positive_float,
    "r": _rank,
    "shift_rank": _rank,
    "ranks": _list_of(_rank),
    "lora_alpha": _positive_float,
    "lora_alphas": _list_of(_positive_float),
    "init": _choice(INITS),
    "scaling": _choice(SCALINGS),
    "scalings": _list_of(_choice(SCALINGS), ordered=False),
    "sampling": _choice(SAMPLINGS),
    "optimizer": _choice(OPTIMIZERS),
    "eval_every": lambda name, value, p: check_int(name, value, 1, p.get("epochs")),
    "seed": lambda name, value, p: check_int(name, value, 0, MAX_SEED),
    "device": lambda name, value, p: resolve_device(value),
    "output_dir": _output_dir,
    "sweep_dir": _sweep_dir,
    "compare_with": _optional_folder,
    # Notebook 05: the transformer and its sequence tasks.
    "vocab_size": lambda name, value, p: check_int(name, value, 2),
    "seq_len": lambda name, value, p: check_int(name, value, 3),
    "d_model": _positive_int,
    "n_heads": lambda name, value, p: _divisor(name, value, p.get("d_model")),
    "n_layers": _positive_int,
    "d_mlp": _positive_int,
    "n_test": _positive_int,
    "pretrain_task": _choice(TASKS),
    "tasks": lambda name, value, p: _new_tasks(name, value, p),
    "placements": _list_of(_choice(tuple(PLACEMENTS)), ordered=False),
    "finetune_epochs": _positive_int,
    "finetune_lr": _positive_float,
    "fixed_scale": _positive_float,
    "progress": lambda name, value, p: value and interactive(),
}
# Parameters that change how a run looks, not what it computes: checked, never recorded,
# so that they can never make a run differ from its baseline.
UNRECORDED = ("progress",)
# Parameters whose checked value (an absolute folder) replaces the given one everywhere.
FOLDERS = ("output_dir", "sweep_dir", "compare_with")

_TYPES = {
    int: lambda name, value: check_int(name, value),
    float: lambda name, value: check_float(name, value),
    bool: check_bool,
}


class NotebookParameters(Mapping):
    """A notebook's checked parameters: ``params[name]`` to use, ``recorded`` to write down."""

    def __init__(self, recorded: dict[str, Any], parsed: dict[str, Any]):
        self.recorded = recorded
        self._parsed = parsed

    def __getitem__(self, name: str) -> Any:
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed)

    def __len__(self) -> int:
        return len(self._parsed)

    def __repr__(self) -> str:
        return f"NotebookParameters({self.recorded!r})"

    @property
    def size_note(self) -> str:
        """The run's size for a figure title, "" at the full size (``size_note``)."""
        return size_note(self._parsed)


def interactive() -> bool:
    """Whether a person is watching this run, so that progress bars help rather than clutter.

    In a Jupyter kernel: whether the frontend that sent the cell answers input requests
    (``allow_stdin`` in the execute request: JupyterLab and Notebook answer, papermill,
    nbconvert and nbclient never do). Outside a kernel: whether stderr is a terminal.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return sys.stderr.isatty()
    request = kernel.get_parent() or {}
    return bool(request.get("content", {}).get("allow_stdin", False))


# The full size of each experiment, the notebooks' defaults: the blog's y = X·θ (01-04)
# and notebook 05's transformer. A size parameter a run does not give is at its default.
FULL_SIZES = (
    SCALES["full"],
    dict(
        vocab_size=16, seq_len=16, d_model=64, n_heads=4, n_layers=2, d_mlp=128,
        n=2048, n_test=512, epochs=4, finetune_epochs=3,
    ),
)  # fmt: skip


def size_note(parameters: Mapping[str, Any]) -> str:
    """The sizes of a run that differ from its experiment's full size, in words, or "".

    ``n = 512, d_in × d_out = 65 × 64, 60 epochs`` for the blog's experiment shrunk; the
    experiment is the one in ``FULL_SIZES`` that names the most of ``parameters``.
    """
    full = max(FULL_SIZES, key=lambda sizes: sum(name in parameters for name in sizes))
    sizes = {name: parameters.get(name, default) for name, default in full.items()}
    # d_in and d_out read as one shape: both are said when either differs.
    shape_changed = any(sizes[name] != full[name] for name in ("d_in", "d_out") if name in full)
    words = []
    for name, default in full.items():
        if name == "d_in" and shape_changed:
            words.append(f"d_in × d_out = {sizes['d_in']} × {sizes['d_out']}")
        elif name in ("d_in", "d_out") or sizes[name] == default:
            continue
        elif name == "epochs":
            words.append(f"{sizes[name]} epochs")
        else:
            words.append(f"{name} = {sizes[name]}")
    return ", ".join(words)


def read_parameters(namespace: MutableMapping[str, Any]) -> NotebookParameters:
    """Check the parameters declared in ``namespace`` (a notebook's ``globals()``).

    The names and types come from the parameters cell's annotations, the values from the
    namespace (where papermill's injected cell may have replaced the defaults). Folder
    parameters are resolved and written back into ``namespace`` (module docstring).
    """
    declared = _annotations(namespace)
    if not declared:
        raise ValueError(
            "no typed parameters found: run the cell tagged 'parameters' first "
            "(each line reads `name: type = default  # help`)"
        )
    recorded, parsed = {}, {}
    for name, kind in declared.items():
        value = namespace[name]
        if kind in _TYPES:
            value = _TYPES[kind](name, value)
        elif kind is str and not isinstance(value, str):
            raise ValueError(f"{name}={value!r} is not allowed: expected a str")
        if name not in UNRECORDED:
            recorded[name] = value
        rule = RULES.get(name)
        parsed[name] = rule(name, value, parsed) if rule else value
        if name in FOLDERS and isinstance(parsed[name], str):
            recorded[name] = parsed[name]
    if "output_dir" in parsed:
        _check_not_another_run(parsed["output_dir"], recorded)
    for name in FOLDERS:
        if name in parsed and isinstance(parsed[name], str):
            namespace[name] = parsed[name]
    return NotebookParameters(recorded, parsed)


def _annotations(namespace: Mapping[str, Any]) -> dict[str, Any]:
    annotations = namespace.get("__annotations__")
    if annotations is None and callable(namespace.get("__annotate__")):
        annotations = namespace["__annotate__"](1)  # Python ≥ 3.14 (PEP 649): 1 = VALUE
    return {name: kind for name, kind in (annotations or {}).items() if name in namespace}


def parse_list(name: str, value: Any) -> list:
    """A list given as "1, 2, 4" (papermill -p, lora-sweep --param), one value, or a list.

    Items that read as numbers become ints or floats; they must be distinct.
    """
    if isinstance(value, str):
        items = [_number(item.strip()) for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items or any(item == "" for item in items) or len(set(items)) < len(items):
        raise ValueError(
            f"{name}={value!r} is not allowed: expected distinct comma-separated values, e.g. '1, 2, 4'"
        )
    return items


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# How a parameter is spelled inside a metric key, where the full name would be long.
_KEY_LABELS = {"lora_alpha": "alpha"}


def metric_key(metric: str, **config: Any) -> str:
    """The name of ``metric`` for one config: ``metric_key("final_loss", scaling="rslora",
    r=4, lora_alpha=8)`` is ``final_loss_rslora_r4_alpha8``.

    A number is written after its parameter's label, a text value alone.
    """
    parts = [metric]
    for name, value in config.items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            parts.append(f"{_KEY_LABELS.get(name, name)}{value:g}")
        else:
            parts.append(str(value))
    return "_".join(parts)
