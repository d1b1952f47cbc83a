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

from .adapters import adapter_deltas, load_adapter, read_adapter_config, save_adapter
from .cache import cached_regression, pretrain_base, pretrain_transformer
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
from .models import (
    PLACEMENTS,
    TinyTransformer,
    TransformerConfig,
    build_transformer,
    optimizer_state_bytes,
    weights_checksum,
)
from .peft_format import export_peft, import_peft
from .sequences import IGNORE_INDEX, TASKS, make_sequences, token_accuracy
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
    LOSSES,
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
    "IGNORE_INDEX",
    "INITS",
    "LOSSES",
    "LoRALinear",
    "OPTIMIZERS",
    "PLACEMENTS",
    "SAMPLINGS",
    "SCALINGS",
    "TASKS",
    "TinyTransformer",
    "TransformerConfig",
    "adapter_deltas",
    "add_lora",
    "build_transformer",
    "cached_regression",
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
    "make_sequences",
    "merge_lora",
    "optimizer_state_bytes",
    "pretrain_base",
    "pretrain_transformer",
    "read_adapter_config",
    "resolve_device",
    "save_adapter",
    "seed_everything",
    "shift_theta",
    "token_accuracy",
    "train",
    "train_many",
    "unload_lora",
    "unmerge_lora",
    "weights_checksum",
]
