"""Pre-training the blog's base model, cached on disk.

Every notebook run and sweep config starts from the same "pre-trained" ``nn.Linear``.
Pre-training it is most of a run's cost, so the trained weight and its History are kept
in a cache folder, keyed by a hash of everything that determines them: the data itself
(its bytes, not just its seed), the training settings and seed, the device type, the
training loop's source, and the lora_core and torch versions. A changed input gives a new
key, so the cache is never silently stale; deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .training import History, check_data, resolve_device, seed_everything, train

FRAME_COLUMNS = ("train_loss", "eval_loss", "seconds")
PACKAGE_DIR = Path(__file__).resolve().parent
# Every file whose code decides what pre-training computes: the loop and its fast path.
TRAINING_CODE = ("training.py", "fast/steps.py", "fast/optim.py")


def default_cache_dir() -> Path:
    """``$LORA_CORE_CACHE`` if set, else ``~/.cache/lora_core``."""
    return Path(os.environ.get("LORA_CORE_CACHE", Path.home() / ".cache" / "lora_core"))


def cache_key(X: torch.Tensor, y: torch.Tensor, settings: dict) -> str:
    from . import __version__

    digest = hashlib.sha256()
    for t in (X, y):
        t = t.detach().cpu().contiguous()
        digest.update(repr((t.dtype, tuple(t.shape))).encode())
        digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    # The training code is part of the key too: a change to the loop (a new fast path,
    # say) must not silently reuse bases trained by the old one.
    code = hashlib.sha256()
    for module in TRAINING_CODE:
        code.update((PACKAGE_DIR / module).read_bytes())
    meta = {
        **settings,
        "lora_core": __version__,
        "torch": torch.__version__,
        "training_code": code.hexdigest(),
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


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
    dev = resolve_device(device)
    schedule = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        sampling=sampling,
        eval_every=eval_every,
        seed=seed,
    )
    path = None
    if cache:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = folder / f"base-{cache_key(X, y, {**schedule, 'device': dev.type})}.safetensors"
        cached = _load(path, X.shape[1], y.shape[1])
        if cached is not None:
            return cached[0].to(dev), cached[1]

    seed_everything(seed)
    base = nn.Linear(X.shape[1], y.shape[1], bias=False)
    history = train(base, X, y, device=dev, progress=progress, **schedule)
    if path is not None:
        _save(path, base, history)
    return base, history


def _save(path: Path, base: nn.Linear, history: History) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = history.frame
    tensors = {"weight": base.weight.detach().cpu().contiguous()}
    tensors["epoch"] = torch.tensor(frame.index.to_numpy(), dtype=torch.int64)
    for col in FRAME_COLUMNS:
        tensors[col] = torch.tensor(frame[col].to_numpy(), dtype=torch.float64)
    meta = {"diverged_at": history.diverged_at, "settings": history.settings}
    metadata = {"history": json.dumps(meta, default=str)}
    # Written under a temporary name and renamed, so a reader never sees half a file.
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _load(path: Path, d_in: int, d_out: int) -> tuple[nn.Linear, History] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            meta = json.loads(fh.metadata()["history"])
        weight = tensors["weight"]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        warnings.warn(f"ignoring unreadable cached base {path}: {err}; training it again", stacklevel=3)
        return None
    if tuple(weight.shape) != (d_out, d_in):
        return None
    base = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        base.weight.copy_(weight)
    frame = pd.DataFrame(
        {col: tensors[col].numpy() for col in FRAME_COLUMNS},
        index=pd.Index(tensors["epoch"].numpy(), name="epoch"),
    )
    settings = {**meta["settings"], "from_cache": True}
    return base, History(frame, meta["diverged_at"], settings)
