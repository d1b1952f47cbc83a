"""The package's public face: what `import lora_core` offers."""

import subprocess
import sys


def test_every_public_name_is_reexported_and_importable():
    import lora_core

    missing = [name for name in lora_core.__all__ if not hasattr(lora_core, name)]
    assert not missing
    assert len(set(lora_core.__all__)) == len(lora_core.__all__)


def test_importing_the_package_does_not_load_papermill():
    # Notebook kernels import lora_core; the runner's papermill must not come with it.
    code = "import sys, lora_core; print('papermill' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
