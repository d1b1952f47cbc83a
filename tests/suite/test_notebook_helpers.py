"""What a notebook's own cells call: read_parameters, parse_list, metric_key and size_note."""

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from lora_core.suite import metric_key, notebook, parse_list, read_parameters, size_note
from lora_core.suite.execute import notebook_parameters

REPO = Path(__file__).resolve().parents[2]


def _cell(**declared):
    """A namespace as a parameters cell leaves it: values, and their annotations."""
    namespace = {name: value for name, (_, value) in declared.items()}
    namespace["__annotations__"] = {name: kind for name, (kind, _) in declared.items()}
    return namespace


def test_values_are_checked_parsed_and_recorded_as_given(tmp_path):
    out = str(tmp_path / "run")
    params = read_parameters(
        _cell(
            n=(int, 100),
            d_in=(int, 9),
            d_out=(int, 8),
            batch_size=(int, 10),
            lr=(float, 1),
            ranks=(str, "4, 1, 2"),
            scalings=(str, "rslora, standard"),
            cache_base=(bool, True),
            device=(str, "cpu"),
            label=(str, "anything"),
            output_dir=(str, out),
        )
    )
    assert params["ranks"] == [1, 2, 4]  # sorted
    assert params["scalings"] == ["rslora", "standard"]  # in the order given
    assert params["device"] == torch.device("cpu")
    assert params.recorded["ranks"] == "4, 1, 2" and params.recorded["lr"] == 1.0
    assert isinstance(params.recorded["lr"], float)
    assert list(params.recorded) == list(params) == [
        "n", "d_in", "d_out", "batch_size", "lr", "ranks", "scalings", "cache_base", "device", "label", "output_dir",
    ]  # fmt: skip
    assert os.path.isdir(out)  # made up front, so a bad folder fails before any work


@pytest.mark.parametrize(
    "declared, message",
    [
        (
            dict(n=(int, 10), batch_size=(int, 11)),
            "batch_size=11 is not allowed: expected an integer in [1, 10]",
        ),
        (
            dict(d_in=(int, 4), d_out=(int, 3), r=(int, 4)),
            "r=4 is not allowed: expected an integer in [1, 3]",
        ),
        (dict(epochs=(int, 5), eval_every=(int, 6)), "eval_every=6 is not allowed"),
        (dict(n=(int, True)), "n=True is not allowed"),
        (dict(lr=(float, "fast")), "lr='fast' is not allowed"),
        (dict(cache_base=(bool, 1)), "cache_base=1 is not allowed: expected True or False"),
        (dict(scaling=(str, "linear")), "scaling='linear' is not allowed: expected one of"),
        (dict(ranks=(str, "1, 1")), "ranks='1, 1' is not allowed: expected distinct"),
        (dict(lora_alphas=(str, "1, -2")), "lora_alphas=-2 is not allowed"),
        (dict(seed=(int, 2**32 - 1)), "seed=4294967295 is not allowed"),
        (dict(device=(str, "tpu")), "device='tpu' is not allowed"),
        (dict(label=(str, 3)), "label=3 is not allowed: expected a str"),
        (dict(sweep_dir=(str, "/nonexistent")), "expected a lora-sweep folder"),
    ],
)
def test_a_bad_value_is_refused_naming_it(declared, message):
    with pytest.raises(ValueError) as caught:
        read_parameters(_cell(**declared))
    assert message in str(caught.value)


def test_an_output_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        ValueError, match=r"output_dir='.*a-file/run' is not allowed: the folder cannot be created"
    ):
        read_parameters(_cell(output_dir=(str, str(blocker / "run"))))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="expected a folder this user can write to"):
            read_parameters(_cell(output_dir=(str, str(locked))))


def test_no_declared_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="run the cell tagged 'parameters' first"):
        read_parameters({"n": 3})


def test_parse_list_reads_numbers_and_refuses_empty_items():
    assert parse_list("x", "1, 2.5, rslora") == [1, 2.5, "rslora"]
    assert parse_list("x", [3, 4]) == [3, 4]
    assert parse_list("x", 7) == [7]
    with pytest.raises(ValueError, match="x='1,,2' is not allowed"):
        parse_list("x", "1,,2")


def test_metric_keys_name_numbers_by_their_parameter_and_text_alone():
    assert metric_key("final_loss", r=4) == "final_loss_r4"
    assert metric_key("final_loss", scaling="rslora", r=1, lora_alpha=0.1) == "final_loss_rslora_r1_alpha0.1"
    assert metric_key("best_loss", r=16, lora_alpha=1000.0) == "best_loss_r16_alpha1000"
    assert metric_key("loss") == "loss"


# ---------------------------------------------------------------------------------------
# progress: bars only where a person watches, never recorded


class _Kernel:
    """What ipykernel's kernel offers: the request of the cell being run."""

    def __init__(self, allow_stdin):
        self.allow_stdin = allow_stdin

    def get_parent(self):
        return {"header": {"msg_type": "execute_request"}, "content": {"allow_stdin": self.allow_stdin}}


@pytest.mark.parametrize("allow_stdin", [True, False])
def test_a_kernel_counts_as_watched_when_its_frontend_takes_input(monkeypatch, allow_stdin):
    import IPython

    shell = type("Shell", (), {"kernel": _Kernel(allow_stdin)})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert notebook.interactive() is allow_stdin


@pytest.mark.parametrize("tty", [True, False])
def test_outside_a_kernel_a_terminal_counts_as_watched(monkeypatch, tty):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    monkeypatch.setattr(sys, "stderr", type("Err", (), {"isatty": lambda self: tty})())
    assert notebook.interactive() is tty


@pytest.mark.parametrize("watched", [True, False])
@pytest.mark.parametrize("asked", [True, False])
def test_progress_is_on_only_when_asked_and_watched_and_is_never_recorded(
    monkeypatch, tmp_path, asked, watched
):
    monkeypatch.setattr(notebook, "interactive", lambda: watched)
    params = read_parameters(_cell(epochs=(int, 5), progress=(bool, asked), output_dir=(str, str(tmp_path))))
    assert params["progress"] is (asked and watched)
    assert "progress" not in params.recorded and list(params.recorded) == ["epochs", "output_dir"]


def test_progress_must_be_a_bool():
    with pytest.raises(ValueError, match="progress='yes' is not allowed: expected True or False"):
        read_parameters(_cell(progress=(bool, "yes")))


# ---------------------------------------------------------------------------------------
# size_note: a small run says its size in its figures


@pytest.mark.parametrize(
    "parameters, note",
    [
        (dict(n=10000, d_in=1001, d_out=1000, epochs=100, r=4), ""),
        (dict(n=512, d_in=65, d_out=64, epochs=60), "n = 512, d_in × d_out = 65 × 64, 60 epochs"),
        (dict(n=10000, d_in=1001, d_out=64, epochs=100), "d_in × d_out = 1001 × 64"),
        (dict(epochs=20), "20 epochs"),  # a size left out is at its default (a sweep's fixed values)
        ({}, ""),
        (
            dict(vocab_size=16, seq_len=16, d_model=32, n_heads=4, n_layers=2, d_mlp=128, n=256, epochs=4),
            "d_model = 32, n = 256",
        ),
    ],
)
def test_size_note_names_the_sizes_that_differ_from_the_full_ones(parameters, note):
    assert size_note(parameters) == note


def test_size_note_of_a_notebooks_parameters(tmp_path):
    params = read_parameters(
        _cell(
            n=(int, 512), d_in=(int, 65), d_out=(int, 64), epochs=(int, 60), output_dir=(str, str(tmp_path))
        )
    )
    assert params.size_note == "n = 512, d_in × d_out = 65 × 64, 60 epochs"


NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_full_sizes_are_the_notebooks_defaults(path):
    declared = notebook_parameters(path)
    full = max(notebook.FULL_SIZES, key=lambda sizes: sum(name in declared for name in sizes))
    defaults = {name: declared[name]["default"] for name in full if name in declared}
    if "sweep_dir" in declared:  # notebook 04 reads a sweep of notebook 01: no sizes of its own
        assert not defaults
    else:
        assert defaults == full


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_of_a_notebook_says_its_size_and_training_follows_progress(path):
    cells = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    code = "\n".join(cells[1:])  # the parameters cell aside
    calls = re.findall(r"suite\.plot_\w+\(", code)
    assert calls and code.count("subtitle=") == len(calls)
    assert "progress=False" not in code and "progress=True" not in code
    if "progress" in cells[0]:
        assert re.search(r"^progress: bool = True  # .+", cells[0], re.M)
        assert 'progress=params["progress"]' in code
