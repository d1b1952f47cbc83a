"""lora_core: LoRA from scratch in PyTorch, and the tools of the notebook suite.

    layer      LoRALinear: a frozen nn.Linear plus a trainable rank-r update
    inject     add_lora / merge_lora / unmerge_lora / unload_lora on whole models
    adapters   save_adapter / load_adapter (safetensors + JSON config)
    tasks      make_regression / shift_theta: the blog's y = X·θ task and its shifts
    training   train -> History, seed_everything, resolve_device
"""

__version__ = "0.1.0"

from .adapters import load_adapter, read_adapter_config, save_adapter
from .inject import (
    add_lora,
    count_parameters,
    lora_modules,
    lora_parameters,
    merge_lora,
    unload_lora,
    unmerge_lora,
)
from .layer import LoRALinear, lora_scale
from .tasks import make_regression, shift_theta
from .training import History, resolve_device, seed_everything, train

__all__ = [
    "History",
    "LoRALinear",
    "add_lora",
    "count_parameters",
    "load_adapter",
    "lora_modules",
    "lora_parameters",
    "lora_scale",
    "make_regression",
    "merge_lora",
    "read_adapter_config",
    "resolve_device",
    "save_adapter",
    "seed_everything",
    "shift_theta",
    "train",
    "unload_lora",
    "unmerge_lora",
]
