"""lora_core: LoRA from scratch in PyTorch.

The library a reader learns LoRA from:

    layer       LoRALinear: a frozen nn.Linear plus a trainable rank-r update
    inject      add_lora / merge_lora / unmerge_lora / unload_lora on whole models
    adapters    save_adapter / load_adapter (safetensors + JSON config)
    peft_format export_peft / import_peft: adapters in PEFT's own format
    tasks       make_regression / shift_theta: the blog's y = X·θ task and its shifts,
                compare_delta / low_rank_error: how well a learned ΔΘ recovers a shift
    training    train -> History: the plain loop; evaluate, seed_everything, resolve_device
    cache       pretrain_base: the blog's pre-trained base, cached on disk
    validation  the argument checks every public function uses

Beside it, two subpackages:

    fast        exact fast paths (same results as the plain loop, faster): the frozen
                base's output cached, hand-written gradients, a lean Adam step, and
                train_many, a whole sweep of adapters in one loop
    suite       the notebook suite's tooling: notebook parameters and metrics, plots,
                reports, regression checks, papermill execution, sweeps, the main job
"""

__version__ = "0.1.0"

from .adapters import adapter_deltas, load_adapter, read_adapter_config, save_adapter
from .cache import pretrain_base
from .fast import AdapterRun, config_grid, train_many
from .inject import (
    add_lora,
    count_parameters,
    lora_modules,
    lora_parameters,
    merge_lora,
    unload_lora,
    unmerge_lora,
)
from .layer import INITS, SCALINGS, LoRALinear, lora_scale
from .peft_format import export_peft, import_peft
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
from .training import (
    OPTIMIZERS,
    SAMPLINGS,
    History,
    evaluate,
    make_optimizer,
    resolve_device,
    seed_everything,
    train,
)

__all__ = [
    "AdapterRun",
    "BLOG_LORA_LOSSES",
    "BLOG_MERGED_LOSS",
    "BLOG_PRETRAIN_LOSSES",
    "BLOG_SHIFTED_BASE_LOSS",
    "History",
    "INITS",
    "LoRALinear",
    "OPTIMIZERS",
    "SAMPLINGS",
    "SCALINGS",
    "adapter_deltas",
    "add_lora",
    "compare_delta",
    "config_grid",
    "count_parameters",
    "evaluate",
    "export_peft",
    "import_peft",
    "load_adapter",
    "lora_modules",
    "lora_parameters",
    "lora_scale",
    "low_rank_error",
    "make_optimizer",
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
