"""Bad input is refused up front, and a call that raises leaves its inputs as they were.

The first tests pin defects found by trying the library as a hostile user would (calls
that composed badly, failed half-way, or let a raw torch error through). The last ones
state the general property for every public function of ``lora_core``: a call that
raises ``ValueError`` changes none of its arguments (weights, flags, structure, files).
"""

import copy

import pytest
import torch
from torch import nn

import lora_core as lc
from lora_core.adapters import CONFIG_NAME


def two_layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))


def data(d_in=8, d_out=2, n=32):
    X = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1))
    return X, X @ torch.ones(d_in, d_out)


# ---------------------------------------------------------------------------------------
# add_lora


def test_a_second_add_lora_call_keeps_the_first_calls_adapters_trainable():
    model = two_layers()
    lc.add_lora(model, ["0"], r=1)
    lc.add_lora(model, ["1"], r=1)
    assert [p.requires_grad for p in lc.lora_parameters(model)] == [True] * 4
    assert not model[0].base.weight.requires_grad and not model[1].base.weight.requires_grad
    X, y = data()
    history = lc.train(model, X, y, epochs=2, batch_size=8, seed=0, progress=False, device="cpu")
    # Both adapters trained: each B moved away from its zero start.
    assert model[0].B.abs().sum() > 0 and model[1].B.abs().sum() > 0
    assert len(history.frame) == 2


def test_a_frozen_adapter_stays_frozen_when_another_is_added():
    model = two_layers()
    lc.add_lora(model, ["0"], r=1)
    model[0].A.requires_grad_(False)
    lc.add_lora(model, ["1"], r=1)
    assert not model[0].A.requires_grad and model[0].B.requires_grad


def test_add_lora_failing_on_its_second_target_changes_nothing():
    model = two_layers()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"^r=4 is not allowed: .*\[1, 2\] \(module '1'\)"):
        lc.add_lora(model, ["0", "1"], r=4)  # fits layer 0 (8 × 8), not layer 1 (8 × 2)
    assert_same_module(model, before)
    assert type(model[0]) is nn.Linear and model[0].weight.requires_grad


@pytest.mark.parametrize("targets", [5, None, 2.0])
def test_add_lora_refuses_targets_that_are_neither_text_nor_a_list(targets):
    with pytest.raises(ValueError, match=rf"^target_modules={targets!r} is not allowed"):
        lc.add_lora(two_layers(), targets)


def test_add_lora_refuses_an_unknown_layer_option_by_name():
    with pytest.raises(ValueError, match=r"^dropout=0.1 is not allowed: .*lora_dropout"):
        lc.add_lora(two_layers(), ["0"], dropout=0.1)


def test_merge_lora_with_one_diverged_layer_merges_none():
    model = two_layers()
    lc.add_lora(model, ["0", "1"], r=1)
    with torch.no_grad():
        model[0].B.fill_(0.5)
        model[1].B.fill_(float("nan"))
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"\['1'\] hold NaN or Inf"):
        lc.merge_lora(model)
    assert not model[0].merged
    assert_same_module(model, before)
    with pytest.raises(ValueError, match=r"\['1'\] hold NaN or Inf"):
        lc.unload_lora(model)
    assert isinstance(model[0], lc.LoRALinear)
    assert_same_module(model, before)


# ---------------------------------------------------------------------------------------
# Clear errors where torch's would surface


def test_train_refuses_x_of_the_wrong_width_by_name():
    X, y = data(d_in=7)
    with pytest.raises(ValueError, match=r"^X.shape=\(32, 7\) is not allowed: .*width 7"):
        lc.train(nn.Linear(8, 2), X, y, epochs=1, batch_size=8, progress=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_train_refuses_x_of_another_dtype_than_the_model(dtype):
    X, y = data()
    with pytest.raises(
        ValueError, match=rf"^X.dtype={dtype} is not allowed: expected the model's dtype torch.float32"
    ):
        lc.train(nn.Linear(8, 2), X.to(dtype), y, epochs=1, batch_size=8, progress=False)


def test_train_refuses_a_merged_lora_layer():
    layer = lc.LoRALinear(nn.Linear(8, 2), r=1)
    layer.merge()
    X, y = data()
    with pytest.raises(ValueError, match=r"merged LoRA layers \['<model>'\].*unmerge_lora"):
        lc.train(layer, X, y, epochs=1, batch_size=8, progress=False)


def test_train_refusing_its_input_leaves_the_global_generator_alone():
    X, y, model = *data(d_in=7), nn.Linear(8, 2)
    state = torch.get_rng_state()
    with pytest.raises(ValueError):
        lc.train(model, X, y, epochs=1, batch_size=8, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_make_regression_refuses_an_integer_dtype():
    with pytest.raises(
        ValueError, match=r"^dtype=torch.int64 is not allowed: expected a real floating-point"
    ):
        lc.make_regression(n=4, d_in=3, d_out=2, dtype=torch.int64)


def test_save_adapter_refuses_a_name_that_is_not_text(tmp_path):
    with pytest.raises(ValueError, match=r"^name=123 is not allowed: expected a non-empty str"):
        lc.save_adapter(lc.LoRALinear(nn.Linear(8, 2), r=1), tmp_path / "a", name=123)
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------
# The general property: a call that raises leaves its inputs unchanged


def snapshot(value):
    """Everything about an argument that a call could change, in comparable form."""
    if isinstance(value, nn.Module):
        return {
            "structure": [
                (name, type(m).__name__, m.training, getattr(m, "merged", None))
                for name, m in value.named_modules()
            ],
            "parameters": [
                (name, p.detach().clone(), p.requires_grad, p.device) for name, p in value.named_parameters()
            ],
            "buffers": [(name, b.clone()) for name, b in value.named_buffers()],
        }
    if isinstance(value, torch.Tensor):
        return (value.detach().clone(), value.requires_grad, value.device, value.dtype)
    if isinstance(value, (list, tuple)):
        return [snapshot(v) for v in value]
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    return copy.deepcopy(value)


def same(a, b):
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        equal = a == b
        if a.is_floating_point():
            equal |= a.isnan() & b.isnan()  # a diverged adapter left as it was is unchanged
        return bool(equal.all())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_module(model, before):
    assert same(snapshot(model), snapshot(before))


def lora_model():
    model = two_layers()
    lc.add_lora(model, ["0"], r=1)
    return model


def saved_adapter(tmp_path):
    model = lora_model()
    lc.save_adapter(model, tmp_path / "adapter")
    return tmp_path / "adapter"


def diverged_layer():
    layer = lc.LoRALinear(nn.Linear(8, 2), r=1)
    with torch.no_grad():
        layer.B.fill_(float("inf"))
    return layer


# name -> a function of tmp_path giving (callable, positional args, keyword args) that
# must raise ValueError. Every public function of lora_core with an input it could change
# has a case here (test_every_public_function_has_a_case).
CASES = {
    "add_lora": lambda t: (lc.add_lora, [lora_model(), ["0", "1"]], {"r": 3}),
    "LoRALinear": lambda t: (lc.LoRALinear, [nn.Linear(8, 2)], {"r": 1, "lora_alpha": -1.0}),
    "train": lambda t: (
        lc.train,
        [lora_model(), *data(d_in=7)],
        {"epochs": 1, "batch_size": 8, "progress": False},
    ),
    "train_many": lambda t: (
        lc.train_many,
        [nn.Linear(8, 2), *data()],
        {"configs": [{"r": 1}, {"r": 5}], "epochs": 1, "batch_size": 8, "progress": False},
    ),
    "evaluate": lambda t: (lc.evaluate, [lora_model(), data()[0], data()[1][:3]], {}),
    "merge_lora": lambda t: (
        lc.merge_lora,
        [nn.Sequential(lc.LoRALinear(nn.Linear(8, 8), r=1), diverged_layer())],
        {},
    ),
    "unload_lora": lambda t: (
        lc.unload_lora,
        [nn.Sequential(lc.LoRALinear(nn.Linear(8, 8), r=1), diverged_layer())],
        {},
    ),
    "save_adapter": lambda t: (lc.save_adapter, [lora_model(), t / "out"], {"name": ""}),
    "load_adapter": lambda t: (lc.load_adapter, [two_layers_adapted_elsewhere(), saved_adapter(t)], {}),
    "read_adapter_config": lambda t: (lc.read_adapter_config, [broken_adapter(t)], {}),
    "adapter_deltas": lambda t: (lc.adapter_deltas, [broken_adapter(t)], {}),
    "make_regression": lambda t: (
        lc.make_regression,
        [],
        {"n": 4, "d_in": 3, "d_out": 2, "theta": torch.ones(2, 3)},
    ),
    "cached_regression": lambda t: (
        lc.cached_regression,
        [],
        {"n": 4, "d_in": 3, "d_out": 2, "theta": torch.ones(2, 3), "cache_dir": t / "cache"},
    ),
    "shift_theta": lambda t: (lc.shift_theta, [torch.zeros(3, 2)], {"kind": "ones", "rank": 2}),
    "compare_delta": lambda t: (lc.compare_delta, [torch.ones(3, 2), torch.ones(2, 3)], {}),
    "low_rank_error": lambda t: (lc.low_rank_error, [torch.ones(3, 2)], {"r": 3}),
    "make_optimizer": lambda t: (
        lc.make_optimizer,
        ["lbfgs", list(nn.Linear(2, 2).parameters())],
        {"lr": 0.1},
    ),
    "pretrain_base": lambda t: (
        lc.pretrain_base,
        [*data()],
        {"epochs": 0, "cache": False, "progress": False},
    ),
    "seed_everything": lambda t: (lc.seed_everything, [-1], {}),
    "resolve_device": lambda t: (lc.resolve_device, ["tpu"], {}),
    "export_peft": lambda t: (lc.export_peft, [learnable_model(), t / "peft"], {}),
    "import_peft": lambda t: (lc.import_peft, [two_layers_adapted_elsewhere(), peft_adapter(t)], {}),
    "build_transformer": lambda t: (lc.build_transformer, [], {"seed": -1}),
    "TransformerConfig": lambda t: (lc.TransformerConfig, [], {"d_model": 10, "n_heads": 3}),
    "make_sequences": lambda t: (lc.make_sequences, ["reversed", 4], {}),
    "optimizer_state_bytes": lambda t: (lc.optimizer_state_bytes, [two_layers()], {"optimizer": "lbfgs"}),
    "pretrain_transformer": lambda t: (
        lc.pretrain_transformer,
        [*lc.make_sequences("previous", 8, seq_len=4, vocab_size=5)],
        {"epochs": 0, "cache": False, "progress": False},
    ),
}
# Public names with no input a call could change, or no input it refuses.
NO_CASE = {
    "config_grid",
    "count_parameters",
    "lora_modules",
    "lora_parameters",
    "lora_scale",
    "unmerge_lora",
    "AdapterRun",
    "History",
    "TinyTransformer",  # its settings are a TransformerConfig, checked there
    "token_accuracy",
    "weights_checksum",
}


def learnable_model():
    model = two_layers()
    lc.add_lora(model, ["0"], r=1, scaling="learnable")  # PEFT has no learnable scale
    return model


def peft_adapter(tmp_path):
    lc.export_peft(lora_model(), tmp_path / "peft")
    return tmp_path / "peft"


def two_layers_adapted_elsewhere():
    model = two_layers()
    lc.add_lora(model, ["1"], r=1)  # the saved adapter is on "0"
    return model


def broken_adapter(tmp_path):
    folder = saved_adapter(tmp_path)
    (folder / CONFIG_NAME).write_text('{"modules": {"0": {"r": "one"}}}')
    return folder


def test_every_public_function_has_a_case():
    public = {name for name in lc.__all__ if callable(getattr(lc, name))}
    assert public - set(CASES) - NO_CASE == set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_call_that_raises_leaves_its_inputs_unchanged(name, tmp_path):
    function, args, kwargs = CASES[name](tmp_path)
    files_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    before = snapshot((args, kwargs))
    with pytest.raises(ValueError):
        function(*args, **kwargs)
    assert same(snapshot((args, kwargs)), before), f"{name} changed its arguments before raising"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files_before
