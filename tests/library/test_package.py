"""The package's public face: what `import lora_core` and `lora_core.suite` offer."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["lora_core", "lora_core.fast", "lora_core.suite"])
def test_every_public_name_is_reexported_and_importable(module):
    package = __import__(module, fromlist=["__all__"])
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert not missing
    assert len(set(package.__all__)) == len(package.__all__)


def _loaded_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_the_library_loads_no_notebook_tooling():
    # Notebook kernels and plain training scripts import lora_core: no papermill, Jupyter or plots.
    loaded = _loaded_after("import lora_core")
    assert not loaded & {"papermill", "nbclient", "jupyter_client", "matplotlib"}


def test_the_suite_loads_papermill_only_when_a_runner_is_used():
    assert "papermill" not in _loaded_after("from lora_core import suite; suite.read_parameters")
    assert "papermill" in _loaded_after("from lora_core import suite; suite.run_sweep")


def test_the_pytest_plugin_loads_no_notebook_tooling():
    # pytest loads it in every run of the environment, a library-only install included.
    loaded = _loaded_after("import lora_core.suite.pytest_plugin")
    assert not loaded & {"papermill", "nbclient", "matplotlib", "nbformat", "torch", "pandas"}


def test_names_are_imported_on_first_use():
    # `import lora_core` alone loads no torch (about 2 s): the regression checker and the
    # reports index, which a user's CI runs on metrics files, never need it.
    assert "torch" not in _loaded_after("import lora_core")
    assert "torch" not in _loaded_after("from lora_core.suite import regression, reports")
    assert "torch" in _loaded_after("import lora_core; lora_core.train")
    assert "torch" in _loaded_after("from lora_core import LoRALinear")
    # The modules stay reachable as attributes, as when the package imported them all.
    assert "torch" in _loaded_after("import lora_core; lora_core.adapters.WEIGHTS_NAME")


@pytest.mark.parametrize("module", ["lora_core", "lora_core.suite"])
def test_an_unknown_name_is_an_attribute_error_naming_it(module):
    package = __import__(module, fromlist=["__all__"])
    with pytest.raises(AttributeError, match=f"module '{module}' has no attribute 'no_such_name'"):
        _ = package.no_such_name
    assert set(package.__all__) <= set(dir(package))
