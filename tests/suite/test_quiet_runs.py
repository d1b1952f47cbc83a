"""Runs by papermill store no progress bars: through the suite's runner and through papermill itself.

A notebook that passes ``params["progress"]`` to its training shows a bar in Jupyter; run by
papermill, whose requests take no input, it must store neither a widget nor stderr text.
The same notebook with ``progress=True`` written in shows that a bar would be caught.
"""

import nbformat
import papermill
import pytest
from conftest import bar_outputs
from nbformat.v4 import new_code_cell, new_notebook

from lora_core.suite.execute import execute_notebook


def training_notebook(path, progress):
    parameters = new_code_cell('progress: bool = True  # progress bars\noutput_dir: str = "."  # metrics')
    parameters.metadata["tags"] = ["parameters"]
    cells = [
        parameters,
        new_code_cell(
            "import lora_core as lc\nfrom lora_core import suite\n\nparams = suite.read_parameters(globals())"
        ),
        new_code_cell(
            "X, y, _ = lc.make_regression(64, 5, 4, seed=0)\n"
            f"base, history = lc.pretrain_base(X, y, epochs=3, batch_size=16, eval_every=1, device='cpu', "
            f"cache=False, progress={progress})"
        ),
        new_code_cell(
            'suite.write_metrics(output_dir, "quiet", params.recorded, {"loss": history.final_loss})'
        ),
    ]
    nbformat.write(
        new_notebook(
            cells=cells,
            metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
        ),
        path,
    )
    return path


@pytest.mark.parametrize("runner", ["execute_notebook", "papermill"])
def test_a_papermill_run_stores_no_progress_bar(tmp_path, runner):
    notebook = training_notebook(tmp_path / "train.ipynb", 'params["progress"]')
    out = tmp_path / "run"
    if runner == "execute_notebook":
        record = execute_notebook(notebook, out, render_html=False)
        assert "progress" not in record["parameters"]
    else:  # as a user would run it: nothing injected, progress stays at its default True
        out.mkdir()
        papermill.execute_notebook(
            str(notebook), str(out / "train.ipynb"), parameters={"output_dir": str(out)}
        )
    assert bar_outputs(out / "train.ipynb") == []


def test_a_bar_forced_on_under_papermill_would_be_stored(tmp_path):
    notebook = training_notebook(tmp_path / "train.ipynb", "True")
    execute_notebook(notebook, tmp_path / "run", render_html=False)
    assert bar_outputs(tmp_path / "run" / "train.ipynb")
