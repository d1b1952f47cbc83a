"""lora_core: LoRA from scratch in PyTorch, and the tools of the notebook suite.

    layer      LoRALinear: a frozen nn.Linear plus a trainable rank-r update
    inject     add_lora / merge_lora / unmerge_lora / unload_lora on whole models
    adapters   save_adapter / load_adapter (safetensors + JSON config)
    tasks      make_regression / shift_theta: the blog's y = X·θ task, its shifts, and
               compare_delta / low_rank_error: how well a learned ΔΘ recovers a shift
    training   train -> History, evaluate, seed_everything, resolve_device
    optim      the loops' optimizers, and a lean step for their fused Adam
    multi      train_many: many adapters over one frozen base in one loop (sweeps)
    cache      pretrain_base: the blog's pre-trained base, cached on disk
    plotting   the figures of the notebooks (loss curves, ΔΘ heatmaps, sweep heatmaps)
    reports    what a run leaves behind: metrics.json, figures, HTML, the reports index
    regression check a run's metrics against a committed baseline (lora-regress)
    execute    run one notebook with papermill: parameters checked, failures explained
    sweep      run a notebook over a whole grid, resumably, in parallel (lora-sweep)
"""

__version__ = "0.1.0"

from .adapters import adapter_deltas, load_adapter, read_adapter_config, save_adapter
from .inject import (
    add_lora,
    count_parameters,
    lora_modules,
    lora_parameters,
    merge_lora,
    unload_lora,
    unmerge_lora,
)
from .cache import pretrain_base
from .layer import INITS, SCALINGS, LoRALinear, lora_scale
from .multi import AdapterRun, config_grid, train_many
from .tasks import (
    BLOG_LORA_LOSSES,
    BLOG_MERGED_LOSS,
    BLOG_PRETRAIN_LOSSES,
    BLOG_SHIFTED_BASE_LOSS,
    compare_delta,
    low_rank_error,
    make_regression,
    shift_theta,
)
from .plotting import (
    plot_delta_grid,
    plot_delta_heatmap,
    plot_loss_curves,
    plot_metric_heatmap,
    plot_metric_vs,
    plot_singular_values,
)
from .regression import BaselineError, RegressionReport, check_metrics, update_baseline
from .reports import (
    build_index,
    environment_info,
    read_metrics,
    render_html,
    save_figure,
    write_json_atomic,
    write_metrics,
)
from .training import OPTIMIZERS, SAMPLINGS, History, evaluate, resolve_device, seed_everything, train

# The notebook runner imports papermill, which a notebook kernel never needs: its names
# load on first use, so `import lora_core` inside every executed notebook stays quick.
_LAZY = {
    "NotebookRunError": "execute",
    "execute_notebook": "execute",
    "notebook_parameters": "execute",
    "SweepResult": "sweep",
    "load_sweep": "sweep",
    "run_sweep": "sweep",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lora_core' has no attribute {name!r}")

__all__ = [
    *_LAZY,
    "AdapterRun",
    "BaselineError",
    "RegressionReport",
    "BLOG_LORA_LOSSES",
    "BLOG_MERGED_LOSS",
    "BLOG_PRETRAIN_LOSSES",
    "BLOG_SHIFTED_BASE_LOSS",
    "History",
    "INITS",
    "OPTIMIZERS",
    "SAMPLINGS",
    "SCALINGS",
    "LoRALinear",
    "adapter_deltas",
    "add_lora",
    "build_index",
    "check_metrics",
    "compare_delta",
    "config_grid",
    "count_parameters",
    "environment_info",
    "evaluate",
    "load_adapter",
    "lora_modules",
    "lora_parameters",
    "lora_scale",
    "low_rank_error",
    "make_regression",
    "merge_lora",
    "plot_delta_grid",
    "plot_delta_heatmap",
    "plot_loss_curves",
    "plot_metric_heatmap",
    "plot_metric_vs",
    "plot_singular_values",
    "pretrain_base",
    "read_metrics",
    "render_html",
    "read_adapter_config",
    "resolve_device",
    "save_adapter",
    "save_figure",
    "seed_everything",
    "shift_theta",
    "train",
    "train_many",
    "unload_lora",
    "unmerge_lora",
    "update_baseline",
    "write_json_atomic",
    "write_metrics",
]
