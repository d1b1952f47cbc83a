"""The cache key covers every file whose code decides what a cached model holds.

Traced, not listed by hand: whatever lora_core code runs while a base is pre-trained must
be hashed into its key, or a change to it would silently reuse stale bases.
"""

import sys
from pathlib import Path

import pytest
import torch

import lora_core as lc
from lora_core.cache import PACKAGE_DIR, TRAINING_CODE, TRANSFORMER_CODE

# Code that runs but decides nothing the cache stores: argument checks, and the cache itself.
DECIDES_NOTHING = {"validation.py", "cache.py", "layer.py", "__init__.py"}


def _lora_core_files_run(call) -> set[str]:
    # The first optimizer of a process imports torch._dynamo: done before tracing, which
    # would otherwise profile that whole import.
    lc.make_optimizer("adam", [torch.zeros(1, requires_grad=True)], 1e-3)
    seen = set()

    def tracer(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(PACKAGE_DIR):
            seen.add(path.relative_to(PACKAGE_DIR).as_posix())
        return None

    sys.setprofile(tracer)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("model", ["regression", "transformer"])
def test_every_file_run_by_pretraining_is_in_its_cache_key(model, tmp_path):
    if model == "regression":
        X, y, _ = lc.make_regression(64, 5, 4, seed=0)
        run = lambda: lc.pretrain_base(X, y, epochs=2, batch_size=16, cache=False, progress=False)
        covered = TRAINING_CODE
    else:
        X, y = lc.make_sequences("previous", 32, seq_len=6, vocab_size=5)
        config = lc.TransformerConfig(vocab_size=5, seq_len=6, d_model=8, n_heads=2, n_layers=1, d_mlp=8)
        run = lambda: lc.pretrain_transformer(
            X, y, config, epochs=1, batch_size=16, cache=False, progress=False
        )
        covered = TRANSFORMER_CODE
    ran = _lora_core_files_run(run)
    assert "training.py" in ran  # the trace sees the loop
    assert ran - DECIDES_NOTHING <= set(covered)
