"""The notebook suite's tooling, around the LoRA library.

notebook    read_parameters / metric_key: what every notebook does around its experiment
plotting    the notebooks' figures (loss curves, ΔΘ heatmaps, sweep heatmaps)
reports     what a run leaves behind: metrics.json, figures, HTML, the reports index
markdown    a run as a Markdown blog post with its figures (lora-reports markdown)
seed_band   the spread of a notebook's numbers over seeds (lora-reports seed-band)
regression  check a run's metrics against a committed baseline (lora-regress)
execute     run one notebook with papermill: parameters checked, failures explained
kernels     each run's kernel forked from a server that has made the imports (Linux)
sweep       run a notebook over a whole grid, resumably, in parallel (lora-sweep)
cluster     the same on a Dask cluster, files shipped back (lora-sweep --dask)
reproduce   the main job: every notebook into reports/ (python -m lora_core reproduce)
pytest_plugin  pytest --lora-notebooks: notebooks run and checked as test items (an
               entry point; imported by pytest, never from here)
"""

# Every public name, by the module that defines it. They are imported on first use: a
# notebook kernel needs no papermill, a plain training script no matplotlib, and the
# pytest plugin (loaded by every pytest run of the environment) none of them.
_NAMES = {
    "export_markdown": "markdown",
    "NotebookParameters": "notebook",
    "interactive": "notebook",
    "metric_key": "notebook",
    "parse_list": "notebook",
    "read_parameters": "notebook",
    "size_note": "notebook",
    "metric_label": "plotting",
    "plot_delta_grid": "plotting",
    "plot_delta_heatmap": "plotting",
    "plot_loss_curves": "plotting",
    "plot_metric_heatmap": "plotting",
    "plot_metric_vs": "plotting",
    "plot_singular_values": "plotting",
    "BaselineError": "regression",
    "RegressionReport": "regression",
    "check_metrics": "regression",
    "update_baseline": "regression",
    "METRICS_FILE": "reports",
    "build_index": "reports",
    "environment_info": "reports",
    "read_metrics": "reports",
    "render_html": "reports",
    "save_figure": "reports",
    "show_figure": "reports",
    "write_json_atomic": "reports",
    "write_metrics": "reports",
    "band_frame": "seed_band",
    "load_seed_band": "seed_band",
    "published_in_band": "seed_band",
    "summarise_seed_band": "seed_band",
    "write_seed_band": "seed_band",
    "NotebookRunError": "execute",
    "execute_notebook": "execute",
    "notebook_parameters": "execute",
    "SweepBusyError": "sweep",
    "SweepResult": "sweep",
    "load_sweep": "sweep",
    "run_sweep": "sweep",
    "dask_executor": "cluster",
}


def __getattr__(name: str):
    if name in _NAMES:
        from importlib import import_module

        value = getattr(import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = sorted(_NAMES)
