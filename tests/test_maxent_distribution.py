"""SquashedGMMDistribution: exact squashed log density, the squashed-entropy estimate, the mode, the gradients."""

import math

import pytest
import torch as th

from sb3_gmm.maxent.distributions import (
    JACOBIAN_HERMITE_MAX_STD,
    SquashedGMMDistribution,
    expected_log_tanh_jacobian,
    log_tanh_jacobian,
)
from sb3_gmm.mixture import mixture_log_prob

# (logits [K], means [K, D], stds [K, D]) of one state; the cases span the regimes that matter to squashing.
CASES_2D = {
    "apart": ([0.0, 0.5, -0.5], [[-1.5, 0.5], [1.0, -1.0], [0.2, 1.5]], [[0.3, 0.4], [0.5, 0.2], [0.25, 0.3]]),
    "overlapping": ([0.0, 0.3, 0.1], [[-0.2, 0.1], [0.1, -0.1], [0.3, 0.2]], [[0.6, 0.5], [0.4, 0.7], [0.5, 0.5]]),
    "wide_near_bound": ([0.0, 1.0], [[2.5, -0.3], [-0.5, 0.0]], [[1.5, 2.0], [0.8, 3.0]]),
    "near_one_hot": ([6.0, -6.0, 0.0], [[0.5, -0.5], [-1.0, 1.0], [0.0, 0.0]], [[0.2, 0.3], [0.1, 0.1], [0.5, 0.5]]),
}


def bound(case, dtype=th.float64, batch=1) -> SquashedGMMDistribution:
    logits, means, stds = (th.tensor(value, dtype=dtype) for value in case)
    n_components, dim = means.shape
    dist = SquashedGMMDistribution(dim, n_components=n_components)
    expand = (batch, n_components, dim)
    return dist.proba_distribution(
        means.expand(expand).reshape(batch, -1),
        stds.log().expand(expand).reshape(batch, -1),
        logits.expand(batch, n_components) if n_components > 1 else None,
    )


def test_log_tanh_jacobian_is_exact_and_finite():
    u = th.linspace(-8.0, 8.0, 1001, dtype=th.float64)
    th.testing.assert_close(log_tanh_jacobian(u), th.log(1.0 - th.tanh(u).square()), rtol=1e-10, atol=1e-10)
    # Where 1 - tanh^2 rounds to 0 it is still exact: -2 |u| + 2 log 2.
    far = th.tensor([-50.0, 50.0, 1e4])
    th.testing.assert_close(log_tanh_jacobian(far), 2.0 * math.log(2.0) - 2.0 * far.abs())
    zero = th.zeros(1, requires_grad=True)
    log_tanh_jacobian(zero).sum().backward()
    assert zero.grad.item() == 0.0


def _fine_expectation(mean: float, std: float) -> float:
    z = th.linspace(-12.0, 12.0, 400_001, dtype=th.float64)
    density = th.exp(-0.5 * z.square()) / math.sqrt(2.0 * math.pi)
    return float(th.trapezoid(log_tanh_jacobian(mean + std * z) * density, z))


@pytest.mark.parametrize("log_std", [-20.0, -5.0, -1.0, -0.01, 0.0, 0.01, 0.7, 2.0])
def test_expected_log_jacobian_against_fine_quadrature(log_std):
    means = th.tensor([0.0, 0.3, -1.0, 3.0, 6.0], dtype=th.float64)
    stds = th.full_like(means, math.exp(log_std))
    expected = th.tensor([_fine_expectation(float(m), float(s)) for m, s in zip(means, stds)], dtype=th.float64)
    th.testing.assert_close(expected_log_tanh_jacobian(means, stds), expected, rtol=0.0, atol=1e-6)


def test_expected_log_jacobian_gradients_in_both_branches():
    means = th.tensor([0.2, -1.3, 0.4, 2.0], dtype=th.float64, requires_grad=True)
    stds = th.tensor([0.3, 0.7, 1.4, 5.0], dtype=th.float64, requires_grad=True)
    assert (stds[:2] <= JACOBIAN_HERMITE_MAX_STD).all() and (stds[2:] > JACOBIAN_HERMITE_MAX_STD).all()
    assert th.autograd.gradcheck(expected_log_tanh_jacobian, (means, stds))
    # The derivatives are those of the true expectation: d/dmu E[f] = E[f'] with f' = -2 tanh.
    z = th.linspace(-12.0, 12.0, 200_001, dtype=th.float64)
    density = th.exp(-0.5 * z.square()) / math.sqrt(2.0 * math.pi)
    for index in range(4):
        x = means[index].detach() + stds[index].detach() * z
        mean_derivative = float(th.trapezoid(-2.0 * th.tanh(x) * density, z))
        (gradient,) = th.autograd.grad(expected_log_tanh_jacobian(means, stds)[index], means)
        assert gradient[index].item() == pytest.approx(mean_derivative, abs=1e-6)
    # Tiny stds (SB3's LOG_STD_MIN = -20) keep finite gradients in float32.
    small = th.full((3,), math.exp(-20.0), requires_grad=True)
    expected_log_tanh_jacobian(th.tensor([0.0, 1.0, -3.0]), small).sum().backward()
    assert th.isfinite(small.grad).all()


def test_log_prob_integrates_to_one_in_one_dimension():
    dist = bound(([0.0, -1.0, 0.5], [[-1.2], [0.3], [1.6]], [[0.3], [0.6], [0.4]]))
    actions = th.linspace(-1.0 + 1e-9, 1.0 - 1e-9, 400_001, dtype=th.float64)
    densities = dist.log_prob(actions.unsqueeze(-1)).exp()
    assert float(th.trapezoid(densities, actions)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(CASES_2D))
def test_log_prob_is_the_change_of_variables(name):
    dist = bound(CASES_2D[name], batch=64)
    gaussian_actions = dist.means[:, 0] + 1.5 * th.randn(64, 2, dtype=th.float64)
    actions = th.tanh(gaussian_actions)
    expected = mixture_log_prob(gaussian_actions, dist.log_weights, dist.means, dist.stds) - th.log(
        1.0 - actions.square()
    ).sum(-1)
    th.testing.assert_close(dist.log_prob(actions, gaussian_actions), expected)
    # Without the pre-squash values the actions are inverted: same value where atanh is well conditioned.
    th.testing.assert_close(dist.log_prob(actions), expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_log_prob_finite_at_the_bounds(dtype):
    dist = bound(CASES_2D["apart"], dtype=dtype, batch=4)
    edge = 1.0 - 1e-6
    actions = th.tensor([[edge, -edge], [-edge, edge], [1.0, -1.0], [0.0, edge]], dtype=dtype, requires_grad=True)
    log_prob = dist.log_prob(actions)
    assert th.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert th.isfinite(actions.grad).all()


@pytest.mark.parametrize("name", sorted(CASES_2D))
def test_entropy_against_monte_carlo(name):
    dist = bound(CASES_2D[name], batch=1)
    with th.no_grad():
        n_samples = 200_000
        many = bound(CASES_2D[name], batch=n_samples)
        actions = many.sample()
        negative_log_probs = -many.log_prob(actions, many.gaussian_actions)
        jacobians = log_tanh_jacobian(many.gaussian_actions).sum(-1)
    standard_error = float(negative_log_probs.std()) / math.sqrt(n_samples)
    # The Jacobian term is exact up to quadrature: only Monte Carlo error.
    jacobian_error = float(jacobians.std()) / math.sqrt(n_samples)
    assert float(dist.expected_log_jacobian()) == pytest.approx(float(jacobians.mean()), abs=4 * jacobian_error)
    # The whole estimate also carries the pre-squash estimator's error (qmc-64: a few hundredths at most).
    assert float(dist.entropy()) == pytest.approx(float(negative_log_probs.mean()), abs=0.03 + 4 * standard_error)


def test_single_gaussian_entropy_is_exact():
    dist = bound(([0.0], [[0.4, -1.0]], [[0.5, 1.7]]))
    gaussian_entropy = 0.5 * 2 * math.log(2 * math.pi * math.e) + math.log(0.5) + math.log(1.7)
    assert float(dist.gaussian_entropy()) == pytest.approx(gaussian_entropy, abs=1e-10)
    jacobian = _fine_expectation(0.4, 0.5) + _fine_expectation(-1.0, 1.7)
    assert float(dist.entropy()) == pytest.approx(gaussian_entropy + jacobian, abs=1e-6)


MODE_CASES_1D = {
    # A light but sharp component is the higher peak.
    "sharp_light": ([1.0, -1.0], [[-0.5], [0.8]], [[0.5], [0.05]]),
    # One wide Gaussian: the Jacobian moves its peak from tanh(0.2) = 0.2 to about tanh(1.9).
    "moved_by_jacobian": ([0.0], [[0.2]], [[0.9]]),
    "overlapping": ([0.0, 0.2], [[0.1], [0.5]], [[0.3], [0.35]]),
}


@pytest.mark.parametrize("name", sorted(MODE_CASES_1D))
def test_mode_is_the_highest_peak_in_one_dimension(name):
    dist = bound(MODE_CASES_1D[name])
    grid = th.linspace(-1.0 + 1e-7, 1.0 - 1e-7, 200_001, dtype=th.float64).unsqueeze(-1)
    grid_log_probs = dist.log_prob(grid)
    mode = dist.mode()
    assert mode.shape == (1, 1)
    assert float(dist.log_prob(mode)) >= float(grid_log_probs.max()) - 1e-6
    assert abs(float(mode) - float(grid[grid_log_probs.argmax()])) < 1e-3
    if name == "moved_by_jacobian":
        assert float(mode) > math.tanh(1.5)


@pytest.mark.parametrize("name", ["apart", "overlapping", "near_one_hot"])
def test_mode_is_the_highest_peak_in_two_dimensions(name):
    dist = bound(CASES_2D[name])
    axis = th.linspace(-1.0 + 1e-6, 1.0 - 1e-6, 601, dtype=th.float64)
    grid = th.cartesian_prod(axis, axis)
    grid_log_probs = dist.log_prob(grid)
    mode = dist.mode()
    mode_log_prob = float(dist.log_prob(mode))
    assert mode_log_prob >= float(grid_log_probs.max()) - 1e-6
    # Never below the best squashed component mean.
    assert mode_log_prob >= float(dist.log_prob(th.tanh(dist.means[0])).max())


def test_sample_gradient_of_an_expectation_matches_quadrature():
    """E[f(a)] over a 1-D squashed mixture: mean sample gradients vs the exact gradient, for all three parameters."""
    logits = th.tensor([0.3, -0.2], dtype=th.float64, requires_grad=True)
    means = th.tensor([[-0.8], [0.6]], dtype=th.float64, requires_grad=True)
    log_stds = th.tensor([[-1.0], [-0.5]], dtype=th.float64, requires_grad=True)
    parameters = (logits, means, log_stds)

    def f(actions: th.Tensor) -> th.Tensor:
        return (actions - 0.3).square() + 0.5 * actions

    # 20 independent batches: their spread gives the Monte Carlo standard error of the overall mean.
    n_batches, batch_size = 20, 5_000
    dist = SquashedGMMDistribution(1, n_components=2)
    batch_gradients = []
    for _ in range(n_batches):
        dist.proba_distribution(
            means.expand(batch_size, 2, 1), log_stds.expand(batch_size, 2, 1), logits.expand(batch_size, 2)
        )
        mean_value = f(dist.sample()).mean()
        batch_gradients.append(th.cat([g.flatten() for g in th.autograd.grad(mean_value, parameters)]))
    batch_gradients = th.stack(batch_gradients)
    estimate, standard_errors = batch_gradients.mean(0), batch_gradients.std(0) / math.sqrt(n_batches)

    u = th.linspace(-8.0, 8.0, 200_001, dtype=th.float64).unsqueeze(-1)
    density = mixture_log_prob(u, th.log_softmax(logits, -1), means, log_stds.exp()).exp()
    exact_value = th.trapezoid(density * f(th.tanh(u)).squeeze(-1), u.squeeze(-1))
    exact = th.cat([g.flatten() for g in th.autograd.grad(exact_value, parameters)])
    assert ((estimate - exact).abs() < 5 * standard_errors + 1e-4).all()
    assert exact[:2].abs().min() > 1e-3  # the logits matter to this f, so the check is not vacuous


def test_mode_and_sample_shapes_and_bounds():
    dist = bound(CASES_2D["wide_near_bound"], dtype=th.float32, batch=16)
    for actions in (dist.sample(), dist.mode()):
        assert actions.shape == (16, 2) and (actions.abs() <= 1.0).all()
    assert dist.squashed and dist.logits.shape == (16, 2) and dist.means.shape == dist.stds.shape == (16, 2, 2)
    assert dist.entropy().shape == (16,) and dist.log_prob(dist.sample()).shape == (16,)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="n_components"):
        SquashedGMMDistribution(2, n_components=0)
    with pytest.raises(ValueError, match="entropy_method"):
        SquashedGMMDistribution(2, entropy_method="nope")
    with pytest.raises(ValueError, match="entropy_kwargs"):
        SquashedGMMDistribution(2, entropy_method="qmc", entropy_kwargs=dict(order=3))
    dist = SquashedGMMDistribution(2, n_components=3)
    with pytest.raises(ValueError, match="logits"):
        dist.proba_distribution(th.zeros(4, 6), th.zeros(4, 6))
    with pytest.raises(ValueError, match="mean_actions"):
        dist.proba_distribution(th.zeros(4, 5), th.zeros(4, 5), th.zeros(4, 3))


def test_entropy_bias_benchmark_runs_and_agrees_with_its_truth(capsys):
    from benchmarks import maxent_entropy_bias

    rows = maxent_entropy_bias.main(["--samples", "4000", "--random-dims", "2"])
    assert "| 1d_apart | 4 | 1 |" in capsys.readouterr().out
    for row in rows.values():
        # The marginalized truth and the single-sample mean estimate the same entropy.
        assert abs(row["sample_mean_minus_truth"]) < 5 * row["sample_std"] / math.sqrt(4000) + 5 * row["truth_se"]
        assert abs(row["methods"]["qmc"]["bias"]) < 0.03 + 5 * row["truth_se"]
