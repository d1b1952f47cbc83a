"""lora_core: LoRA from scratch in PyTorch, and the tools of the notebook suite.

    layer      LoRALinear: a frozen nn.Linear plus a trainable rank-r update
    inject     add_lora / merge_lora / unmerge_lora / unload_lora on whole models
    adapters   save_adapter / load_adapter (safetensors + JSON config)
    tasks      make_regression / shift_theta: the blog's y = X·θ task, its shifts, and
               compare_delta / low_rank_error: how well a learned ΔΘ recovers a shift
    training   train -> History, evaluate, seed_everything, resolve_device
    multi      train_many: many adapters over one frozen base in one loop (sweeps)
    cache      pretrain_base: the blog's pre-trained base, cached on disk
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
from .layer import LoRALinear, lora_scale
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
from .training import History, evaluate, resolve_device, seed_everything, train

__all__ = [
    "AdapterRun",
    "BLOG_LORA_LOSSES",
    "BLOG_MERGED_LOSS",
    "BLOG_PRETRAIN_LOSSES",
    "BLOG_SHIFTED_BASE_LOSS",
    "History",
    "LoRALinear",
    "adapter_deltas",
    "add_lora",
    "compare_delta",
    "config_grid",
    "count_parameters",
    "evaluate",
    "load_adapter",
    "lora_modules",
    "lora_parameters",
    "lora_scale",
    "low_rank_error",
    "make_regression",
    "merge_lora",
    "pretrain_base",
    "read_adapter_config",
    "resolve_device",
    "save_adapter",
    "seed_everything",
    "shift_theta",
    "train",
    "train_many",
    "unload_lora",
    "unmerge_lora",
]
