"""lora_core: LoRA from scratch in PyTorch.

The library a reader learns LoRA from:

    layer       LoRALinear: a frozen nn.Linear plus a trainable rank-r update
    inject      add_lora / merge_lora / unmerge_lora / unload_lora on whole models
    adapters    save_adapter / load_adapter (safetensors + JSON config)
    peft_format export_peft / import_peft: adapters in PEFT's own format
    tasks       make_regression / shift_theta: the blog's y = X·θ task and its shifts,
                compare_delta / low_rank_error: how well a learned ΔΘ recovers a shift
    training    train -> History: the plain loop; evaluate, seed_everything, resolve_device
    cache       pretrain_base / pretrain_transformer: pre-trained bases, cached on disk;
                cached_regression: make_regression's data, cached the same way
    models      TinyTransformer: a small decoder with q/k/v/o_proj and an MLP, for notebook 05
    sequences   make_sequences / token_accuracy: synthetic token tasks for that transformer
    walkthrough the "Demystifying LoRA" wrapper, rebuilt to show its two defects
    validation  the argument checks every public function uses

Beside it, two subpackages:

    fast        exact fast paths (same results as the plain loop, faster): the frozen
                base's output cached, hand-written gradients, a lean Adam step, and
                train_many, a whole sweep of adapters in one loop
    suite       the notebook suite's tooling: notebook parameters and metrics, plots,
                reports, regression checks, papermill execution, sweeps, the main job
"""

__version__ = "0.1.0"

# Every public name, by the module that defines it. They are imported on first use, as in
# lora_core.suite: `import lora_core` costs nothing until a name is used, so that the
# suite's command-line tools that need no torch (lora-regress, lora-reports) and the
# pytest plugin, which every pytest run of the environment loads, do not import it.
_NAMES = {
    "adapter_deltas": "adapters",
    "load_adapter": "adapters",
    "read_adapter_config": "adapters",
    "save_adapter": "adapters",
    "cached_regression": "cache",
    "pretrain_base": "cache",
    "pretrain_transformer": "cache",
    "AdapterRun": "fast",
    "config_grid": "fast",
    "train_many": "fast",
    "add_lora": "inject",
    "count_parameters": "inject",
    "lora_modules": "inject",
    "lora_parameters": "inject",
    "merge_lora": "inject",
    "unload_lora": "inject",
    "unmerge_lora": "inject",
    "INITS": "layer",
    "SCALINGS": "layer",
    "LoRALinear": "layer",
    "lora_scale": "layer",
    "PLACEMENTS": "models",
    "TinyTransformer": "models",
    "TransformerConfig": "models",
    "build_transformer": "models",
    "optimizer_state_bytes": "models",
    "weights_checksum": "models",
    "export_peft": "peft_format",
    "import_peft": "peft_format",
    "IGNORE_INDEX": "sequences",
    "TASKS": "sequences",
    "make_sequences": "sequences",
    "token_accuracy": "sequences",
    "BLOG_LORA_LOSSES": "tasks",
    "BLOG_MERGED_LOSS": "tasks",
    "BLOG_PRETRAIN_LOSSES": "tasks",
    "BLOG_SHIFTED_BASE_LOSS": "tasks",
    "compare_delta": "tasks",
    "low_rank_error": "tasks",
    "make_regression": "tasks",
    "shift_theta": "tasks",
    "LOSSES": "training",
    "OPTIMIZERS": "training",
    "SAMPLINGS": "training",
    "History": "training",
    "evaluate": "training",
    "make_optimizer": "training",
    "resolve_device": "training",
    "seed_everything": "training",
    "train": "training",
}


# The modules themselves, reachable as attributes too (``lc.adapters.WEIGHTS_NAME``), as
# they were when this file imported them all.
_MODULES = {
    "adapters", "cache", "fast", "inject", "layer", "models", "peft_format",
    "sequences", "suite", "tasks", "training", "validation", "walkthrough",
}  # fmt: skip


def __getattr__(name: str):
    from importlib import import_module

    if name in _NAMES:
        value = getattr(import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    if name in _MODULES:
        return import_module(f".{name}", __name__)  # importing sets the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES, *_MODULES])


__all__ = sorted(_NAMES)
