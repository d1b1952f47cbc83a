"""The notebook suite's tooling, around the LoRA library.

notebook    read_parameters / metric_key: what every notebook does around its experiment
plotting    the notebooks' figures (loss curves, ΔΘ heatmaps, sweep heatmaps)
reports     what a run leaves behind: metrics.json, figures, HTML, the reports index
markdown    a run as a Markdown blog post with its figures (lora-reports markdown)
regression  check a run's metrics against a committed baseline (lora-regress)
execute     run one notebook with papermill: parameters checked, failures explained
sweep       run a notebook over a whole grid, resumably, in parallel (lora-sweep)
cluster     the same on a Dask cluster, files shipped back (lora-sweep --dask)
reproduce   the main job: every notebook into reports/ (python -m lora_core reproduce)
pytest_plugin  pytest --lora-notebooks: notebooks run and checked as test items (an
               entry point; imported by pytest, never from here)
"""

from .markdown import export_markdown
from .notebook import NotebookParameters, metric_key, parse_list, read_parameters
from .plotting import (
    metric_label,
    plot_delta_grid,
    plot_delta_heatmap,
    plot_loss_curves,
    plot_metric_heatmap,
    plot_metric_vs,
    plot_singular_values,
)
from .regression import BaselineError, RegressionReport, check_metrics, update_baseline
from .reports import (
    METRICS_FILE,
    build_index,
    environment_info,
    read_metrics,
    render_html,
    save_figure,
    write_json_atomic,
    write_metrics,
)

# papermill is for running notebooks, which a notebook's own kernel never does: these
# names are imported on first use, so `from lora_core import suite` stays light.
_RUNNER_NAMES = {
    "NotebookRunError": "execute",
    "execute_notebook": "execute",
    "notebook_parameters": "execute",
    "SweepBusyError": "sweep",
    "SweepResult": "sweep",
    "dask_executor": "cluster",
    "load_sweep": "sweep",
    "run_sweep": "sweep",
}


def __getattr__(name: str):
    if name in _RUNNER_NAMES:
        from importlib import import_module

        return getattr(import_module(f".{_RUNNER_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_RUNNER_NAMES,
    "BaselineError",
    "METRICS_FILE",
    "NotebookParameters",
    "RegressionReport",
    "build_index",
    "check_metrics",
    "environment_info",
    "export_markdown",
    "metric_key",
    "metric_label",
    "parse_list",
    "plot_delta_grid",
    "plot_delta_heatmap",
    "plot_loss_curves",
    "plot_metric_heatmap",
    "plot_metric_vs",
    "plot_singular_values",
    "read_metrics",
    "read_parameters",
    "render_html",
    "save_figure",
    "update_baseline",
    "write_json_atomic",
    "write_metrics",
]
