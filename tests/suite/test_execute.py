"""One papermill run (lora_core.suite.execute) on the tiny quadratic notebook: parameters read
from the notebook, command-line text converted to their declared types, the kernel used."""

import json
import os
import sys
from pathlib import Path

import pytest

from lora_core.suite.execute import check_parameters, coerce_value, execute_notebook, notebook_parameters

NOTEBOOK = Path(__file__).parents[1] / "data" / "quadratic.ipynb"


def test_notebook_parameters_reads_types_defaults_and_help():
    declared = notebook_parameters(NOTEBOOK)
    assert list(declared) == [
        "x",
        "repeats",
        "label",
        "verbose",
        "fail_when",
        "mode",
        "progress",
        "output_dir",
    ]
    assert declared["repeats"] == {
        "type": "int",
        "default": 1,
        "help": "how many times the loss is evaluated (an int parameter to sweep)",
    }
    assert declared["label"]["default"] == "quadratic"


def test_command_line_text_is_converted_to_the_declared_type():
    assert coerce_value("repeats", "4", "int") == 4
    assert coerce_value("x", "1e-3", "float") == 0.001
    assert coerce_value("x", 2, "float") == 2.0 and isinstance(coerce_value("x", 2, "float"), float)
    assert coerce_value("verbose", "true", "bool") is True
    assert coerce_value("target_modules", "q,v", "None") == "q,v"  # undeclared type: as given
    assert check_parameters(NOTEBOOK, {"repeats": ["1", "2"]}, {"x": "1e-3"}) == (
        {"repeats": [1, 2]},
        {"x": 0.001},
    )


@pytest.mark.parametrize(
    "value, declared", [("abc", "int"), (4.5, "int"), (True, "int"), ("often", "bool"), (3, "str")]
)
def test_ill_typed_value_is_refused_with_name_value_and_type(value, declared):
    with pytest.raises(ValueError, match=rf"^p={value!r} is not allowed: expected .*{declared}"):
        coerce_value("p", value, declared)


def test_kernel_spec_pointing_elsewhere_is_bypassed_for_this_interpreter(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(tmp_path / "missing" / "python"),
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "Python elsewhere",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    record = execute_notebook(NOTEBOOK, tmp_path / "run", {"x": 4}, render_html=False)
    assert record["metrics"]["loss"] == 1.0 and record["environment"]["python"] == sys.executable


def test_execute_notebook_renders_html_next_to_the_executed_notebook(tmp_path):
    execute_notebook(NOTEBOOK, tmp_path / "run", {"x": 4})
    assert list((tmp_path / "run").glob("*.html"))


def test_the_kernel_is_gone_and_its_files_complete_when_the_run_returns(tmp_path):
    # The kernel is stopped at once after its last cell (no graceful exit to wait for):
    # what the notebook wrote must be whole, and no kernel process may be left behind.
    import nbformat

    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('output_dir: str = "out"  # where metrics.json goes')
    parameters.metadata["tags"] = ["parameters"]
    write = nbformat.v4.new_code_cell(
        "import json, os\n"
        "from pathlib import Path\n"
        "Path(output_dir, 'big.bin').write_bytes(bytes(range(256)) * 40_000)\n"
        "metrics = {'kernel_pid': os.getpid()}\n"
        "Path(output_dir, 'metrics.json').write_text(json.dumps({'metrics': metrics}))"
    )
    notebook.cells = [parameters, write]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "writes.ipynb")

    record = execute_notebook(tmp_path / "writes.ipynb", tmp_path / "run", render_html=False)
    assert (tmp_path / "run" / "big.bin").read_bytes() == bytes(range(256)) * 40_000
    with pytest.raises(ProcessLookupError):
        os.kill(record["metrics"]["kernel_pid"], 0)
