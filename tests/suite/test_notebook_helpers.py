"""What a notebook's own cells call: read_parameters, parse_list and metric_key."""

import os

import pytest
import torch

from lora_core.suite import metric_key, parse_list, read_parameters


def _cell(**declared):
    """A namespace as a parameters cell leaves it: values, and their annotations."""
    namespace = {name: value for name, (_, value) in declared.items()}
    namespace["__annotations__"] = {name: kind for name, (kind, _) in declared.items()}
    return namespace


def test_values_are_checked_parsed_and_recorded_as_given(tmp_path):
    out = str(tmp_path / "run")
    params = read_parameters(
        _cell(
            n=(int, 100),
            d_in=(int, 9),
            d_out=(int, 8),
            batch_size=(int, 10),
            lr=(float, 1),
            ranks=(str, "4, 1, 2"),
            scalings=(str, "rslora, standard"),
            cache_base=(bool, True),
            device=(str, "cpu"),
            label=(str, "anything"),
            output_dir=(str, out),
        )
    )
    assert params["ranks"] == [1, 2, 4]  # sorted
    assert params["scalings"] == ["rslora", "standard"]  # in the order given
    assert params["device"] == torch.device("cpu")
    assert params.recorded["ranks"] == "4, 1, 2" and params.recorded["lr"] == 1.0
    assert isinstance(params.recorded["lr"], float)
    assert list(params.recorded) == list(params) == [
        "n", "d_in", "d_out", "batch_size", "lr", "ranks", "scalings", "cache_base", "device", "label", "output_dir",
    ]  # fmt: skip
    assert os.path.isdir(out)  # made up front, so a bad folder fails before any work


@pytest.mark.parametrize(
    "declared, message",
    [
        (
            dict(n=(int, 10), batch_size=(int, 11)),
            "batch_size=11 is not allowed: expected an integer in [1, 10]",
        ),
        (
            dict(d_in=(int, 4), d_out=(int, 3), r=(int, 4)),
            "r=4 is not allowed: expected an integer in [1, 3]",
        ),
        (dict(epochs=(int, 5), eval_every=(int, 6)), "eval_every=6 is not allowed"),
        (dict(n=(int, True)), "n=True is not allowed"),
        (dict(lr=(float, "fast")), "lr='fast' is not allowed"),
        (dict(cache_base=(bool, 1)), "cache_base=1 is not allowed: expected True or False"),
        (dict(scaling=(str, "linear")), "scaling='linear' is not allowed: expected one of"),
        (dict(ranks=(str, "1, 1")), "ranks='1, 1' is not allowed: expected distinct"),
        (dict(lora_alphas=(str, "1, -2")), "lora_alphas=-2 is not allowed"),
        (dict(seed=(int, 2**32 - 1)), "seed=4294967295 is not allowed"),
        (dict(device=(str, "tpu")), "device='tpu' is not allowed"),
        (dict(label=(str, 3)), "label=3 is not allowed: expected a str"),
        (dict(sweep_dir=(str, "/nonexistent")), "expected a lora-sweep folder"),
    ],
)
def test_a_bad_value_is_refused_naming_it(declared, message):
    with pytest.raises(ValueError) as caught:
        read_parameters(_cell(**declared))
    assert message in str(caught.value)


def test_an_output_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        ValueError, match=r"output_dir='.*a-file/run' is not allowed: the folder cannot be created"
    ):
        read_parameters(_cell(output_dir=(str, str(blocker / "run"))))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="expected a folder this user can write to"):
            read_parameters(_cell(output_dir=(str, str(locked))))


def test_no_declared_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="run the cell tagged 'parameters' first"):
        read_parameters({"n": 3})


def test_parse_list_reads_numbers_and_refuses_empty_items():
    assert parse_list("x", "1, 2.5, rslora") == [1, 2.5, "rslora"]
    assert parse_list("x", [3, 4]) == [3, 4]
    assert parse_list("x", 7) == [7]
    with pytest.raises(ValueError, match="x='1,,2' is not allowed"):
        parse_list("x", "1,,2")


def test_metric_keys_name_numbers_by_their_parameter_and_text_alone():
    assert metric_key("final_loss", r=4) == "final_loss_r4"
    assert metric_key("final_loss", scaling="rslora", r=1, lora_alpha=0.1) == "final_loss_rslora_r1_alpha0.1"
    assert metric_key("best_loss", r=16, lora_alpha=1000.0) == "best_loss_r16_alpha1000"
    assert metric_key("loss") == "loss"
