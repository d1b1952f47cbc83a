"""Pre-trained bases, cached on disk: the blog's ``nn.Linear`` and notebook 05's transformer.

Every notebook run and sweep config starts from the same "pre-trained" model. Pre-training
it is most of a run's cost, so the trained weights and their History are kept in a cache
folder, keyed by a hash of everything that determines them: the data itself (its bytes,
not just its seed), the model's sizes, the training settings and seed, the device type,
the source of the code that trains (and, for the transformer, defines) the model, and the
lora_core and torch versions. A changed input gives a new key, so the cache is never
silently stale; deleting the folder is always safe.

The cache can only save time, never break a run: each file carries a SHA-256 checksum of
its tensors, and a file that cannot be read, lacks its metadata or fails its checksum is
warned about and trained again; a cache folder that cannot be written is warned about and
the run goes on without it.

The regression data itself (``cached_regression``) is cached the same way, so that the
configs of a sweep read X and y back rather than draw them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .models import TinyTransformer, TransformerConfig, build_transformer, config_dict
from .tasks import check_regression, make_regression
from .training import History, check_data, resolve_device, seed_everything, train

FRAME_COLUMNS = ("train_loss", "eval_loss", "seconds")
PACKAGE_DIR = Path(__file__).resolve().parent
# Every file whose code decides what pre-training computes: the loop and its fast path.
TRAINING_CODE = ("training.py", "fast/steps.py", "fast/optim.py")
# The transformer's weights depend on its definition and on the tasks' code as well.
TRANSFORMER_CODE = (*TRAINING_CODE, "models.py", "sequences.py")
DATA_CODE = ("tasks.py",)  # the regression data depends only on how tasks.py draws it


def default_cache_dir() -> Path:
    """``$LORA_CORE_CACHE`` if set, else ``~/.cache/lora_core``."""
    return Path(os.environ.get("LORA_CORE_CACHE", Path.home() / ".cache" / "lora_core"))


def cache_key(X: torch.Tensor, y: torch.Tensor, settings: dict, code: tuple[str, ...] = TRAINING_CODE) -> str:
    from . import __version__

    digest = hashlib.sha256()
    for t in (X, y):
        t = t.detach().cpu().contiguous()
        digest.update(repr((t.dtype, tuple(t.shape))).encode())
        digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    # The training code is part of the key too: a change to the loop (a new fast path,
    # say) must not silently reuse bases trained by the old one.
    source = hashlib.sha256()
    for module in code:
        source.update((PACKAGE_DIR / module).read_bytes())
    meta = {
        **settings,
        "lora_core": __version__,
        "torch": torch.__version__,
        "training_code": source.hexdigest(),
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _cache_path(prefix: str, key: str, cache_dir) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{prefix}-{key}.safetensors"


def pretrain_base(
    X: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    sampling: str = "with_replacement",
    eval_every: int = 10,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[nn.Linear, History]:
    """Train ``nn.Linear(d_in, d_out, bias=False)`` on (X, y) as the blog does.

    Returns the trained base and its History; with ``cache=True`` a previous identical
    run is loaded instead (its History says ``settings["from_cache"] = True`` and keeps
    the original timings).
    """
    check_data(X, y)
    schedule = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer)
    schedule.update(sampling=sampling, eval_every=eval_every, seed=seed)
    d_in, d_out = X.shape[1], y.shape[1]

    def build() -> nn.Linear:
        seed_everything(seed)
        return nn.Linear(d_in, d_out, bias=False)

    return _pretrained(
        "base",
        X,
        y,
        schedule,
        device,
        progress,
        cache,
        cache_dir,
        build=build,
        empty=lambda: nn.Linear(d_in, d_out, bias=False),
    )


def pretrain_transformer(
    X: torch.Tensor,
    y: torch.Tensor,
    config: TransformerConfig | None = None,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 3e-3,
    optimizer: str = "adamw",
    sampling: str = "shuffle",
    eval_every: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[TinyTransformer, History]:
    """Build ``TinyTransformer(config)`` (seeded) and train it on token sequences (X, y).

    The cross-entropy twin of ``pretrain_base``, cached the same way; the key also covers
    the model's sizes and the code of ``models.py`` and ``sequences.py``.
    """
    check_data(X, y)
    config = config or TransformerConfig()
    schedule = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer)
    schedule.update(sampling=sampling, eval_every=eval_every, seed=seed)
    return _pretrained(
        "transformer",
        X,
        y,
        schedule,
        device,
        progress,
        cache,
        cache_dir,
        build=lambda: build_transformer(config, seed),
        empty=lambda: TinyTransformer(config),
        key_extra={"model": config_dict(config)},
        code=TRANSFORMER_CODE,
        loss="cross_entropy",
    )


def _pretrained(
    kind: str,
    X: torch.Tensor,
    y: torch.Tensor,
    schedule: dict,
    device: str | torch.device,
    progress: bool,
    cache: bool,
    cache_dir: str | os.PathLike | None,
    build: Callable[[], nn.Module],
    empty: Callable[[], nn.Module],
    key_extra: dict | None = None,
    code: tuple[str, ...] = TRAINING_CODE,
    loss: str = "mse",
) -> tuple[nn.Module, History]:
    """The model ``build()`` makes, trained on (X, y) with ``schedule``, or the one stored
    under the same key, loaded into ``empty()``: the shared body of the pretrain_* functions."""
    dev = resolve_device(device)
    path = None
    if cache:
        settings = {**schedule, **(key_extra or {}), "device": dev.type}
        path = _cache_path(kind, cache_key(X, y, settings, code), cache_dir)
        cached = _load(path)
        if cached is not None:
            model = empty()
            try:
                model.load_state_dict(cached[0])
            except RuntimeError as err:  # a file whose names or shapes are not this model's
                _warn(
                    f"ignoring cached {kind} {path} that does not fit this model ({err}); training it again"
                )
            else:
                return model.to(dev), cached[1]

    model = build()
    history = train(model, X, y, device=dev, progress=progress, loss=loss, **schedule)
    if path is not None:
        _save(path, model.state_dict(), history)
    return model, history


# ---------------------------------------------------------------------------------------
# The regression data, cached the same way: drawn once per sweep rather than once per config


def cached_regression(
    n: int = 10000,
    d_in: int = 1001,
    d_out: int = 1000,
    seed: int = 0,
    theta: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_regression(n, d_in, d_out, seed, theta, dtype)``, loaded from the disk cache
    when an identical call stored it there (the same tensors, bit for bit).

    At the blog's scale drawing X and computing X·θ costs more than reading them back,
    and every config of a sweep draws the same data. The key covers every argument (θ by
    its bytes), tasks.py's source and the torch and lora_core versions.
    """
    n, d_in, d_out, seed = check_regression(n, d_in, d_out, seed, theta, dtype)
    if not cache:
        return make_regression(n, d_in, d_out, seed, theta, dtype)
    given = torch.empty(0) if theta is None else theta
    settings = dict(n=n, d_in=d_in, d_out=d_out, seed=seed, dtype=str(dtype), theta=theta is not None)
    path = _cache_path("data", cache_key(given, torch.empty(0), settings, DATA_CODE), cache_dir)
    stored = _load_data(path, (n, d_in, d_out), dtype)
    if stored is not None:
        return stored
    X, y, theta = make_regression(n, d_in, d_out, seed, theta, dtype)
    _save_data(path, X, y, theta)
    return X, y, theta


def _save_data(path: Path, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> None:
    _write(path, {"X": X, "y": y, "theta": theta.contiguous()}, {})


def _load_data(
    path: Path, sizes: tuple[int, int, int], dtype: torch.dtype
) -> tuple[torch.Tensor, ...] | None:
    """(X, y, θ) stored at ``path``; None (with a warning) unless intact and of these sizes."""
    n, d_in, d_out = sizes
    shapes = {"X": (n, d_in), "y": (n, d_out), "theta": (d_in, d_out)}
    try:
        if not path.is_file():
            return None
        tensors, _ = _read_checked(path)
        if {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()} != {
            name: (shape, dtype) for name, shape in shapes.items()
        }:
            raise ValueError(f"it does not hold X, y and θ of shapes {shapes} and dtype {dtype}")
    except (SafetensorError, OSError, ValueError) as err:
        _warn(f"ignoring unreadable cached data {path}: {err}; drawing it again")
        return None
    # Copies in memory of torch's own: a tensor read from the file may start at any byte,
    # and MKL's kernels round differently on unaligned data (1e-9 apart after training).
    return tensors["X"].clone(), tensors["y"].clone(), tensors["theta"].clone()


# ---------------------------------------------------------------------------------------
# The files: tensors, the History, and a checksum of the tensors


def _warn(message: str) -> None:
    # Point the warning at the first caller outside this module, however deep the cache's
    # own calls go (pretrain_* -> _pretrained -> _save -> _write -> _warn, say).
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(repr((name, str(t.dtype), tuple(t.shape))).encode())
        # The array's own buffer, not a bytes copy: data files are tens of MB.
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def _save(path: Path, state: dict[str, torch.Tensor], history: History) -> None:
    frame = history.frame
    tensors = {f"model.{name}": t.detach().cpu().contiguous() for name, t in state.items()}
    tensors["epoch"] = torch.tensor(frame.index.to_numpy(), dtype=torch.int64)
    for col in FRAME_COLUMNS:
        tensors[col] = torch.tensor(frame[col].to_numpy(), dtype=torch.float64)
    meta = {"diverged_at": history.diverged_at, "settings": history.settings}
    _write(path, tensors, {"history": json.dumps(meta, default=str)})


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Store ``tensors`` with their checksum; a failure is a warning, never an error."""
    metadata = {**metadata, "checksum": tensors_checksum(tensors)}
    # Written under a temporary name and renamed, so a reader never sees half a file.
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        # What was computed is in memory: losing the cache must not lose the run.
        _warn(f"cannot write the cache file {path} ({err}); going on without caching")
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder is not there or not writable: no temporary file was left


def _read_checked(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the safetensors file at ``path``, once its tensors
    match the checksum stored with them (a ValueError otherwise)."""
    with safe_open(str(path), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        metadata = fh.metadata() or {}
    if tensors_checksum(tensors) != metadata.get("checksum"):
        raise ValueError("its tensors do not match the checksum stored with them")
    return tensors, metadata


def _load(path: Path) -> tuple[dict[str, torch.Tensor], History] | None:
    """The state dict and History stored at ``path``; None (with a warning) unless intact."""
    try:
        if not path.is_file():
            return None
        tensors, metadata = _read_checked(path)
        if "history" not in metadata:
            raise ValueError("no history in its metadata")
        meta = json.loads(metadata["history"])
        state = {name[len("model.") :]: t for name, t in tensors.items() if name.startswith("model.")}
        frame = pd.DataFrame(
            {col: tensors[col].numpy() for col in FRAME_COLUMNS},
            index=pd.Index(tensors["epoch"].numpy(), name="epoch"),
        )
        history = History(frame, meta["diverged_at"], {**meta["settings"], "from_cache": True})
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        _warn(f"ignoring unreadable cached base {path}: {err}; training it again")
        return None
    return state, history
