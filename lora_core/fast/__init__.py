"""Exact fast paths: the same results as the plain training loop, faster.

    steps   the frozen base's output cached and hand-written gradients, which ``train``
            picks by itself where they apply (``fast_path``)
    optim   ``lean_step``: ``make_optimizer``'s update, for Adam with no optimizer object
    multi   ``train_many``: a whole sweep of adapters over one frozen base in one loop

Each is checked against the plain autograd loop by ``tests/library/test_fastpaths.py``
and by the benchmark's equivalence checks before anything is timed.
"""

from .multi import AdapterRun, StackedAdapters, config_grid, train_many
from .optim import lean_step
from .steps import FastPath, cacheable, fast_path, frozen_residual, linear_step, lora_step

__all__ = [
    "AdapterRun",
    "FastPath",
    "StackedAdapters",
    "cacheable",
    "config_grid",
    "fast_path",
    "frozen_residual",
    "lean_step",
    "linear_step",
    "lora_step",
    "train_many",
]
