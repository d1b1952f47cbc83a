import pytest
import torch

from lora_core import compare_delta, low_rank_error, make_regression, shift_theta


def test_regression_is_y_equals_x_theta_and_seeded():
    X, y, theta = make_regression(50, 7, 5, seed=3)
    assert X.shape == (50, 7) and theta.shape == (7, 5) and y.shape == (50, 5)
    assert torch.allclose(y, X @ theta)
    X2, _, theta2 = make_regression(50, 7, 5, seed=3)
    assert torch.equal(X, X2) and torch.equal(theta, theta2)
    assert not torch.equal(X, make_regression(50, 7, 5, seed=4)[0])


def test_regression_does_not_depend_on_the_global_rng():
    torch.manual_seed(0)
    a = make_regression(10, 3, 2, seed=1)[0]
    torch.randn(100)
    assert torch.equal(a, make_regression(10, 3, 2, seed=1)[0])


def test_given_theta_draws_fresh_x_for_it():
    _, _, theta = make_regression(10, 4, 3, seed=0)
    X, y, same = make_regression(10, 4, 3, seed=1, theta=theta + 1)
    assert torch.equal(same, theta + 1) and torch.allclose(y, X @ (theta + 1))
    with pytest.raises(ValueError, match=r"^theta.shape=\(4, 3\)"):
        make_regression(10, 3, 4, theta=theta)


def test_ones_shift_is_the_blogs_theta_plus_one():
    theta = torch.randn(6, 4)
    theta2, shift = shift_theta(theta)
    assert torch.equal(shift, torch.ones(6, 4)) and torch.equal(theta2, theta + 1)


@pytest.mark.parametrize("rank", [1, 3])
def test_lowrank_shift_has_the_asked_rank_and_scale(rank):
    theta = torch.zeros(200, 150)
    theta2, shift = shift_theta(theta, "lowrank", rank=rank, scale=2.0, seed=5)
    assert torch.equal(theta2, shift)
    assert torch.linalg.matrix_rank(shift).item() == rank
    assert shift.std().item() == pytest.approx(2.0, rel=0.15)


def test_compare_delta_on_exact_and_perturbed_recovery():
    shift = torch.ones(20, 10)
    exact = compare_delta(shift, shift)
    assert exact["delta_relative_error"] == 0 and exact["delta_cosine"] == pytest.approx(1)
    assert exact["delta_mean"] == 1 and exact["delta_energy_beyond_rank1"] == pytest.approx(0, abs=1e-12)
    noisy = compare_delta(shift + 0.1 * torch.randn(20, 10), shift)
    assert 0.05 < noisy["delta_relative_error"] < 0.2 and noisy["delta_energy_beyond_rank1"] > 1e-3


def test_low_rank_error_is_the_truncated_svd_error():
    torch.manual_seed(0)
    shift = torch.randn(30, 3) @ torch.randn(3, 20)
    assert low_rank_error(shift, 3) == pytest.approx(0, abs=1e-6)
    sv = torch.linalg.svdvals(shift.double())
    assert low_rank_error(shift, 1) == pytest.approx(float((sv[1:] ** 2).sum().sqrt() / sv.norm()))
    assert low_rank_error(shift, 1) > low_rank_error(shift, 2) > 0


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: make_regression(0, 3, 3), "n"),
        (lambda: make_regression(5, -1, 3), "d_in"),
        (lambda: make_regression(5, 3, 3, seed=-1), "seed"),
        (lambda: make_regression(5, 3, 3, seed=2**32), "seed"),
        (lambda: shift_theta(torch.ones(3, 3), kind="diag"), "kind"),
        (lambda: shift_theta(torch.ones(3, 3), kind="lowrank", rank=4), "rank"),
        (lambda: shift_theta(torch.ones(3, 3), kind="ones", rank=2), "rank"),
        (lambda: shift_theta(torch.ones(3, 3), scale=float("nan")), "scale"),
        (lambda: compare_delta(torch.ones(3, 3), torch.ones(3, 2)), r"delta.shape"),
        (lambda: low_rank_error(torch.ones(3, 3), 0), "r"),
    ],
)
def test_invalid_task_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        call()


def test_compare_delta_of_a_diverged_delta_is_all_nan():
    delta = torch.ones(4, 3)
    delta[1, 2] = float("nan")
    metrics = compare_delta(delta, torch.ones(4, 3))
    assert metrics and all(v != v for v in metrics.values())
