"""Shared fixtures (a small seeded version of the blog's task) and notebook-output readers."""

import os
from pathlib import Path

import nbformat
import pytest
import torch

import lora_core as lc

# The package's own pytest plugin (installed as an entry point too; named by its module,
# so this does not register it twice): run_notebook and assert_baseline for notebook tests.
pytest_plugins = ["pytester", "lora_core.suite.pytest_plugin"]

# Fixed thread count: results are bit-reproducible only for a given thread count.
torch.set_num_threads(2)

SMALL = dict(n=512, d_in=65, d_out=64)
SMALL_TRAIN = dict(epochs=60, batch_size=64, lr=3e-2)


@pytest.fixture(scope="session")
def small_task():
    """The blog's experiment at d_in 65, d_out 64: pre-trained base, shifted data, true shift."""
    X, y, theta = lc.make_regression(**SMALL, seed=0)
    base, history = lc.pretrain_base(X, y, seed=0, progress=False, cache=False, **SMALL_TRAIN)
    theta2, shift = lc.shift_theta(theta, "ones")
    X2, y2, _ = lc.make_regression(**SMALL, seed=1, theta=theta2)
    return dict(X=X, y=y, theta=theta, base=base, pretrain=history, X2=X2, y2=y2, shift=shift)


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """Point the kernels a test module starts at an empty cache folder of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORA_CORE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield Path(os.environ["LORA_CORE_CACHE"])


@pytest.fixture
def base(small_task):
    """A private copy of the pre-trained base, so a test may merge into it freely."""
    copy = torch.nn.Linear(SMALL["d_in"], SMALL["d_out"], bias=False)
    copy.load_state_dict(small_task["base"].state_dict())
    return copy


# ---------------------------------------------------------------------------------------
# Reading an executed notebook


def image_outputs(executed):
    notebook = nbformat.read(executed, as_version=4)
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]


def printed_text(executed):
    notebook = nbformat.read(executed, as_version=4)
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def bar_outputs(executed):
    """Every output of an executed notebook that a progress bar leaves: a widget or stderr text."""
    return [
        output
        for cell in nbformat.read(executed, as_version=4).cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("name") == "stderr"
        or "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        or "epochs" in str(output.get("data", {}).get("text/plain", ""))
    ]
