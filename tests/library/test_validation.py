"""The shared argument checks: each error names the parameter, its value and what is allowed."""

import math
import re

import numpy as np
import pytest

from lora_core.validation import check_bool, check_choice, check_float, check_int


def test_check_int_returns_a_python_int_within_bounds():
    assert check_int("r", np.int64(4), 1) == 4 and type(check_int("r", np.int64(4), 1)) is int
    with pytest.raises(ValueError, match=r"^r=0 is not allowed: expected an integer >= 1$"):
        check_int("r", 0, 1)
    with pytest.raises(
        ValueError, match=r"^seed=4294967296 is not allowed: expected an integer in \[0, 4294967295\]$"
    ):
        check_int("seed", 2**32, 0, 2**32 - 1)


@pytest.mark.parametrize("value", [True, 2.0, "3", None])
def test_check_int_refuses_bools_floats_and_strings(value):
    with pytest.raises(ValueError, match="^" + re.escape(f"epochs={value!r} is not allowed")):
        check_int("epochs", value, 1)


def test_check_float_bounds_and_exclusive_low():
    assert check_float("lr", 1, 0, low_inclusive=False) == 1.0
    with pytest.raises(ValueError, match=r"^lr=0 is not allowed: expected a finite number > 0$"):
        check_float("lr", 0, 0, low_inclusive=False)
    with pytest.raises(ValueError, match=r"expected a finite number >= 0 and <= 1$"):
        check_float("p", 1.5, 0, 1)


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "1e-3"])
def test_check_float_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"^lora_alpha="):
        check_float("lora_alpha", value)


def test_check_choice_lists_the_choices():
    assert check_choice("init", "kaiming", ["gaussian", "kaiming"]) == "kaiming"
    with pytest.raises(
        ValueError, match=r"^init='xavier' is not allowed: expected one of 'gaussian', 'kaiming'$"
    ):
        check_choice("init", "xavier", ["gaussian", "kaiming"])


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.float64(1.0)])
def test_check_bool_accepts_only_true_and_false(value):
    with pytest.raises(
        ValueError,
        match="^" + re.escape(f"cache_base={value!r} is not allowed: expected True or False") + "$",
    ):
        check_bool("cache_base", value)
    assert check_bool("cache_base", False) is False
