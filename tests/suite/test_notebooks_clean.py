"""Every committed notebook is clean: no outputs, and a parameters cell papermill can read.

Outputs are kept out of git by this test rather than by an nbstripout filter, which would
need configuring in every clone. The parameters are compared with the names the cell
assigns as read by ``ast``, independently of papermill's line parser (which silently skips
a line holding two "=", e.g. in its help comment).
"""

import ast
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
REQUIRED = ("output_dir", "device")


def test_there_are_notebooks_to_check():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


def parameters_cell(notebook):
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def assigned_names(source):
    """name -> has an annotation, for each top-level assignment of the cell."""
    names = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = True
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = False
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_has_a_type_and_a_help_comment(path):
    cell = parameters_cell(nbformat.read(path, as_version=4))
    assigned = assigned_names(cell.source)
    assert assigned, f"{path.name}: the parameters cell assigns nothing"
    unannotated = [name for name, annotated in assigned.items() if not annotated]
    assert not unannotated, f"{path.name}: parameters without a type annotation: {unannotated}"

    declared = papermill.inspect_notebook(str(path))
    unread = sorted(set(assigned) - set(declared))
    assert not unread, f"{path.name}: papermill cannot read the parameter lines of {unread}"
    no_help = [name for name, p in declared.items() if not p["help"].strip()]
    assert not no_help, f"{path.name}: parameters without a help comment: {no_help}"
    untyped = [name for name, p in declared.items() if p["inferred_type_name"] in ("None", "")]
    assert not untyped, f"{path.name}: papermill sees no type for {untyped}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_declares_output_dir_and_device(path):
    declared = papermill.inspect_notebook(str(path))
    missing = [name for name in REQUIRED if name not in declared]
    assert not missing, f"{path.name}: missing parameters {missing}"
