"""Pathwise gradients through a mixture sample (``sb3_gmm.maxent.reparam``) against ground truth.

- Values: the draws follow the mixture (KS in 1-D, per-marginal KS and cross moments in 2-D).
- Gradients, exactly: against central differences of the inverse conditional CDFs (Rosenblatt map) computed here by
  bisection, at fixed uniforms, in 1-D to 3-D, including both far tails.
- Gradients, in expectation: the mean over many draws of the gradient of ``f(x)`` against the exact gradient of
  ``E_pi[f]`` from Gauss-Hermite quadrature per component (autograd through the quadrature), with a z-score tolerance
  from the measured per-draw spread; every draw is seeded, so the tests are deterministic.
- K = 1 is bit for bit ``Normal.rsample`` (and SB3's squashed Gaussian sample) for the same seed.
- Extremes: far tails, weights of 1e-30 or 0, components 1e4 stds apart, float32 and float64: finite gradients.
"""

import math
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch as th
from scipy import stats
from torch.distributions import Normal

from sb3_gmm.maxent.reparam import (
    implicit_mixture_sample,
    implicit_mixture_surrogate,
    marginalized_mixture_expectation,
)

Mixture = Tuple[th.Tensor, th.Tensor, th.Tensor]  # logits [K], means [K, D], log stds [K, D]

# z-score bound for a mean of many draws against the exact value. Many parameters are compared across the
# parameterised cases; at 5 standard errors a false alarm has probability ~6e-7 per comparison (and the seeds are
# fixed, so a pass is reproducible).
Z_BOUND = 5.0


def make_mixture(name: str, dim: int) -> Mixture:
    """Test mixtures: components well overlapping, 6 stds apart, or one weight of ~1e-4."""
    if name == "overlapping":
        logits = [0.3, -0.4, 0.1]
        means = [[-0.8, 0.4], [0.2, -0.6], [0.9, 0.7]]
        log_stds = [[-0.3, 0.1], [0.2, -0.2], [-0.1, 0.3]]
    elif name == "far_apart":
        # 6 stds between the components: the weight gradient of the implicit estimator is large where the density
        # between them is low (bounded here by ~1 / p(gap)), the regime where its variance grows fastest.
        logits = [0.2, -0.2]
        means = [[-3.0, -3.0], [3.0, 3.0]]
        log_stds = [[0.0, 0.0], [0.0, 0.0]]
    elif name == "near_one_hot":
        logits = [0.0, -9.0]
        means = [[0.0, 0.3], [1.0, -0.5]]
        log_stds = [[0.0, -0.2], [-0.3, 0.2]]
    else:
        raise ValueError(name)
    as_tensor = lambda values: th.tensor(values, dtype=th.float64)  # noqa: E731
    return as_tensor(logits), as_tensor(means)[:, :dim], as_tensor(log_stds)[:, :dim]


TEST_FUNCTIONS: Dict[str, Callable[[th.Tensor], th.Tensor]] = {
    "sin": lambda x: th.sin(1.3 * x[..., 0] + 0.4 * x[..., -1] + 0.2),
    "square": lambda x: x[..., 0].square() + 0.5 * x[..., 0] * x[..., -1],
    "bump": lambda x: th.exp(-(x - 0.4).square().sum(-1)),
}


def quadrature_expectation(
    fn: Callable[[th.Tensor], th.Tensor], logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor, n_nodes: int = 48
) -> th.Tensor:
    """Exact ``E_pi[fn]`` for D <= 2 (tensor-product Gauss-Hermite per component), differentiable in the parameters."""
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    nodes = th.tensor(nodes, dtype=means.dtype)
    node_weights = th.tensor(node_weights / math.sqrt(2.0 * math.pi), dtype=means.dtype)
    dim = means.shape[-1]
    grid = th.stack(th.meshgrid(*[nodes] * dim, indexing="ij"), dim=-1).reshape(-1, dim)  # [n^D, D]
    grid_weights = th.stack(th.meshgrid(*[node_weights] * dim, indexing="ij"), dim=-1).reshape(-1, dim).prod(-1)
    points = means.unsqueeze(-2) + log_stds.exp().unsqueeze(-2) * grid  # [K, n^D, D]
    component_expectations = (fn(points) * grid_weights).sum(-1)  # [K]
    return (th.softmax(logits, dim=-1) * component_expectations).sum()


def per_draw_gradients(
    estimate: Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor], mixture: Mixture, n_draws: int
) -> List[th.Tensor]:
    """Gradients of each draw's estimate w.r.t. (logits, means, log stds), ``[n_draws, ...]`` each.

    Every draw gets its own copy of the parameters, so one backward pass gives all per-draw gradients.
    """
    leaves = [parameter.expand(n_draws, *parameter.shape).clone().requires_grad_() for parameter in mixture]
    logits, means, log_stds = leaves
    estimate(logits, means, log_stds).sum().backward()
    return [leaf.grad for leaf in leaves]


def assert_matches_in_expectation(draws: List[th.Tensor], exact: List[th.Tensor], names=("logits", "means", "stds")):
    for name, per_draw, expected in zip(names, draws, exact):
        mean = per_draw.mean(0)
        standard_error = per_draw.std(0) / math.sqrt(per_draw.shape[0])
        # The small absolute slack covers entries with (near) zero spread, e.g. a gradient that is exact per draw.
        tolerance = Z_BOUND * standard_error + 1e-9 * (1.0 + expected.abs())
        excess = ((mean - expected).abs() - tolerance).max()
        assert excess <= 0, (
            f"{name}: mean of draws {mean.flatten().tolist()} vs exact {expected.flatten().tolist()}, "
            f"standard error {standard_error.flatten().tolist()}"
        )


def exact_gradients(fn: Callable[[th.Tensor], th.Tensor], mixture: Mixture) -> List[th.Tensor]:
    leaves = [parameter.clone().requires_grad_() for parameter in mixture]
    return list(th.autograd.grad(quadrature_expectation(fn, *leaves), leaves))


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("mixture_name", ["overlapping", "far_apart", "near_one_hot"])
@pytest.mark.parametrize("fn_name", sorted(TEST_FUNCTIONS))
def test_implicit_gradient_is_unbiased(dim: int, mixture_name: str, fn_name: str) -> None:
    fn, mixture = TEST_FUNCTIONS[fn_name], make_mixture(mixture_name, dim)

    def implicit(logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> th.Tensor:
        return fn(implicit_mixture_sample(th.log_softmax(logits, -1), means, log_stds.exp(), log_stds))

    draws = per_draw_gradients(implicit, mixture, n_draws=20_000)
    assert_matches_in_expectation(draws, exact_gradients(fn, mixture))


@pytest.mark.parametrize("mixture_name", ["overlapping", "near_one_hot"])
def test_implicit_gradient_wrt_log_weights_and_stds(mixture_name: str) -> None:
    """Leaves passed straight in: normalised log weights and stds, no log stds (it goes through stds.log())."""
    fn, (logits, means, log_stds) = TEST_FUNCTIONS["sin"], make_mixture(mixture_name, 2)
    mixture = (th.log_softmax(logits, -1), means, log_stds.exp())

    def implicit(log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
        return fn(implicit_mixture_sample(log_weights, means, stds))

    draws = per_draw_gradients(implicit, mixture, n_draws=20_000)
    leaves = [parameter.clone().requires_grad_() for parameter in mixture]
    log_weights, leaf_means, stds = leaves
    # The quadrature reads softmax(log_weights): the gradient of the normalised weights, as the estimator gives.
    expectation = quadrature_expectation(fn, log_weights, leaf_means, stds.log())
    assert_matches_in_expectation(draws, list(th.autograd.grad(expectation, leaves)), ("log_weights", "means", "stds"))
    # Tangent to the simplex: shifting every log weight by a constant changes nothing.
    assert draws[0].sum(-1).abs().max() < 1e-12


@pytest.mark.parametrize("mixture_name", ["overlapping", "far_apart"])
def test_marginalized_gradient_is_unbiased(mixture_name: str) -> None:
    fn, mixture = TEST_FUNCTIONS["sin"], make_mixture(mixture_name, 2)

    def marginalized(logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> th.Tensor:
        return marginalized_mixture_expectation(fn, th.log_softmax(logits, -1), means, log_stds.exp(), n_samples=2)

    draws = per_draw_gradients(marginalized, mixture, n_draws=5_000)
    assert_matches_in_expectation(draws, exact_gradients(fn, mixture))


def test_marginalized_value_and_shape() -> None:
    logits, means, log_stds = make_mixture("overlapping", 2)
    batch = 4000
    values = marginalized_mixture_expectation(
        TEST_FUNCTIONS["bump"], th.log_softmax(logits, -1).expand(batch, -1), means.expand(batch, -1, -1),
        log_stds.exp(), n_samples=3,
    )  # fmt: skip
    assert values.shape == (batch,)
    exact = quadrature_expectation(TEST_FUNCTIONS["bump"], logits, means, log_stds)
    assert abs(values.mean() - exact) <= Z_BOUND * values.std() / math.sqrt(batch)


# --- values ---------------------------------------------------------------------------------------------------------


def mixture_cdf_1d(points: np.ndarray, logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> np.ndarray:
    weights = th.softmax(logits, -1).numpy()
    standardized = (points[:, None] - means[:, 0].numpy()) / np.exp(log_stds[:, 0].numpy())
    return (weights * stats.norm.cdf(standardized)).sum(-1)


@pytest.mark.parametrize("mixture_name", ["overlapping", "far_apart", "near_one_hot"])
def test_samples_follow_the_mixture(mixture_name: str) -> None:
    logits, means, log_stds = make_mixture(mixture_name, 2)
    n_draws = 20_000
    samples = implicit_mixture_sample(
        th.log_softmax(logits, -1).expand(n_draws, -1), means.expand(n_draws, -1, -1), log_stds.exp()
    )
    assert samples.shape == (n_draws, 2) and samples.dtype == th.float64
    for dim in range(2):
        marginal = (logits, means[:, dim : dim + 1], log_stds[:, dim : dim + 1])
        p_value = stats.kstest(
            samples[:, dim].numpy(), lambda x, marginal=marginal: mixture_cdf_1d(x, *marginal)
        ).pvalue
        assert p_value > 1e-4, f"dimension {dim}: KS p-value {p_value}"
    # The dimensions are dependent through the component: check the cross moment, not only the marginals.
    weights, stds = th.softmax(logits, -1), log_stds.exp()
    exact_cross_moment = (weights * means[:, 0] * means[:, 1]).sum()
    products = samples[:, 0] * samples[:, 1]
    assert abs(products.mean() - exact_cross_moment) <= Z_BOUND * products.std() / math.sqrt(n_draws)
    exact_second_moment = (weights[:, None] * (means.square() + stds.square())).sum(0)
    squares = samples.square()
    assert ((squares.mean(0) - exact_second_moment).abs() <= Z_BOUND * squares.std(0) / math.sqrt(n_draws)).all()


def test_sample_value_does_not_depend_on_grad_mode() -> None:
    """Under no_grad the surrogate is skipped (SAC's soft target): the draws must be the same."""
    logits, means, log_stds = make_mixture("overlapping", 2)
    parameters = (th.log_softmax(logits, -1).requires_grad_(), means.requires_grad_(), log_stds.exp())
    th.manual_seed(3)
    with_grad = implicit_mixture_sample(*[p.expand(64, *p.shape) for p in parameters])
    th.manual_seed(3)
    with th.no_grad():
        without_grad = implicit_mixture_sample(*[p.expand(64, *p.shape) for p in parameters])
    assert with_grad.requires_grad and not without_grad.requires_grad
    assert th.equal(with_grad, without_grad)


# --- K = 1: SB3's Gaussian, bit for bit -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_one_component_is_normal_rsample(dtype: th.dtype) -> None:
    means = th.randn(7, 1, 3, dtype=dtype, requires_grad=True)
    log_stds = th.randn(7, 1, 3, dtype=dtype).mul(0.5).requires_grad_()
    upstream = th.randn(7, 3, dtype=dtype)

    th.manual_seed(11)
    ours = implicit_mixture_sample(th.zeros(7, 1, dtype=dtype), means, log_stds.exp(), log_stds)
    our_gradients = th.autograd.grad((ours * upstream).sum(), [means, log_stds])
    after_ours = th.rand(1)
    th.manual_seed(11)
    reference = Normal(means[:, 0], log_stds[:, 0].exp()).rsample()
    reference_gradients = th.autograd.grad((reference * upstream).sum(), [means, log_stds])
    after_reference = th.rand(1)

    assert th.equal(ours, reference)
    assert all(th.equal(a, b) for a, b in zip(our_gradients, reference_gradients))
    assert th.equal(after_ours, after_reference), "the random stream was consumed differently"


def test_one_component_is_sb3_squashed_gaussian_sample() -> None:
    from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

    mean_actions, log_std = th.randn(5, 2), th.randn(5, 2) * 0.3
    th.manual_seed(5)
    ours = th.tanh(implicit_mixture_sample(th.zeros(5, 1), mean_actions.unsqueeze(-2), log_std.exp().unsqueeze(-2)))
    th.manual_seed(5)
    sb3_actions = SquashedDiagGaussianDistribution(2).actions_from_params(mean_actions, log_std)
    assert th.equal(ours, sb3_actions)


def test_one_component_implicit_gradient_is_the_reparameterization_gradient() -> None:
    """The implicit formula itself with K = 1: dx/dmu = 1 and dx/ds = eps = (x - mu) / s, per coordinate."""
    means = th.randn(6, 1, 3, dtype=th.float64, requires_grad=True)
    stds = th.rand(6, 1, 3, dtype=th.float64).add(0.2).requires_grad_()
    samples = (means + stds * th.randn_like(means)).squeeze(-2).detach()
    surrogate = implicit_mixture_surrogate(samples, th.zeros(6, 1, dtype=th.float64), means, stds)
    mean_gradient, std_gradient = th.autograd.grad(surrogate.sum(), [means, stds])
    assert th.allclose(mean_gradient, th.ones_like(mean_gradient), atol=1e-12)
    assert th.allclose(std_gradient.squeeze(-2), ((samples - means.squeeze(-2)) / stds.squeeze(-2)), atol=1e-12)


# --- exact gradients by finite differences of the inverse CDF --------------------------------------------------------


def inverse_conditional_cdfs(
    log_uniforms: th.Tensor, upper_tail: th.Tensor, log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor
) -> th.Tensor:
    """The Rosenblatt inverse ``x(theta)`` at fixed uniforms, by bisection, written independently of the module.

    Coordinate d solves ``log F_d(x_d | x_<d) = log u_d``, or ``log(1 - F_d) = log(1 - u_d)`` where ``upper_tail``.
    Batched over parameter sets: ``log_weights [P, K]``, ``means``/``stds [P, K, D]``; uniforms ``[D]``.
    """
    n_sets, _, dim = means.shape
    log_joint = log_weights.clone()
    coordinates = []
    for d in range(dim):
        log_responsibilities = log_joint - th.logsumexp(log_joint, -1, keepdim=True)
        low = th.full((n_sets,), -60.0, dtype=means.dtype)
        high = th.full((n_sets,), 60.0, dtype=means.dtype)
        for _ in range(200):
            middle = 0.5 * (low + high)
            standardized = (middle[:, None] - means[..., d]) / stds[..., d]
            if upper_tail[d]:
                too_low = th.logsumexp(log_responsibilities + th.special.log_ndtr(-standardized), -1) > log_uniforms[d]
            else:
                too_low = th.logsumexp(log_responsibilities + th.special.log_ndtr(standardized), -1) < log_uniforms[d]
            low, high = th.where(too_low, middle, low), th.where(too_low, high, middle)
        coordinate = 0.5 * (low + high)
        coordinates.append(coordinate)
        standardized = (coordinate[:, None] - means[..., d]) / stds[..., d]
        log_joint = log_joint - 0.5 * standardized.square() - stds[..., d].log()
    return th.stack(coordinates, -1)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("tail", ["central", "lower", "upper"])
def test_implicit_gradient_equals_finite_differences_of_the_inverse_cdf(dim: int, tail: str) -> None:
    log_weights = th.log_softmax(th.tensor([0.4, -0.3, 0.0], dtype=th.float64), -1)
    means = th.tensor([[-1.5, 0.5, 0.2], [0.3, -0.8, 1.0], [2.0, 1.2, -0.6]], dtype=th.float64)[:, :dim]
    stds = th.tensor([[0.6, 1.1, 0.8], [1.3, 0.5, 0.9], [0.7, 0.9, 1.4]], dtype=th.float64)[:, :dim]
    # Far tails: u = 1e-12 or 1 - 1e-12 in every coordinate (about 7 stds out).
    uniforms = {"central": [0.3, 0.8, 0.55], "lower": [1e-12] * 3, "upper": [1e-12] * 3}[tail][:dim]
    upper_tail = th.tensor([tail == "upper"] * dim)
    log_uniforms = th.tensor(uniforms, dtype=th.float64).log()
    direction = th.linspace(0.5, 1.5, dim, dtype=th.float64)  # the gradient of direction . x

    samples = inverse_conditional_cdfs(log_uniforms, upper_tail, log_weights[None], means[None], stds[None])[0]
    leaves = [log_weights.clone().requires_grad_(), means.clone().requires_grad_(), stds.clone().requires_grad_()]
    surrogate = implicit_mixture_surrogate(samples, *leaves)
    assert th.equal(surrogate, samples)
    analytic = th.autograd.grad((direction * surrogate).sum(), leaves)

    step = 1e-6
    for index, (parameter, gradient) in enumerate(zip((log_weights, means, stds), analytic)):
        n_entries = parameter.numel()
        # Every entry perturbed up and down at once, as a batch of parameter sets.
        perturbation = step * th.eye(n_entries, dtype=th.float64).reshape(n_entries, *parameter.shape)
        numeric_parts = []
        for sign in (1.0, -1.0):
            batch = [p.expand(n_entries, *p.shape).clone() for p in (log_weights, means, stds)]
            batch[index] = batch[index] + sign * perturbation
            if index == 0:  # the estimator differentiates normalised weights: renormalise the perturbed ones
                batch[0] = th.log_softmax(batch[0], -1)
            numeric_parts.append(inverse_conditional_cdfs(log_uniforms, upper_tail, *batch) @ direction)
        numeric = ((numeric_parts[0] - numeric_parts[1]) / (2 * step)).reshape(parameter.shape)
        if index == 0:
            numeric = numeric - numeric.mean()  # the perturbation of one log weight, projected on the simplex
            gradient = gradient - gradient.mean()
        assert th.allclose(gradient, numeric, rtol=1e-5, atol=1e-6), (index, gradient, numeric)


# --- extremes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("log_weights_list", [[0.0, -69.0, -1.0], [0.0, -math.inf, -1.0], [-1.1, -1.1, -1.1]])
@pytest.mark.parametrize("separation", [1.0, 1e4])
def test_gradients_are_finite_at_extreme_inputs(dtype: th.dtype, log_weights_list: List[float], separation: float):
    """Samples 50 to 1e15 stds into the tails, weights of 1e-30 (log -69) or exactly 0, components 1e4 stds apart."""
    log_weights = th.log_softmax(th.tensor(log_weights_list, dtype=dtype), -1).requires_grad_()
    means = th.tensor([[0.0, 0.0], [separation, -separation], [0.5, 0.5]], dtype=dtype, requires_grad=True)
    stds = th.tensor([[1.0, 0.5], [1.0, 2.0], [0.1, 1.0]], dtype=dtype, requires_grad=True)
    offsets = th.tensor([0.0, 8.0, 50.0, 1e3, 1e6, 1e15], dtype=dtype)
    samples = th.cat([th.stack([offsets, -offsets], -1), th.stack([-offsets, 0.5 * offsets], -1)])
    surrogate = implicit_mixture_surrogate(samples, log_weights, means, stds)
    assert th.equal(surrogate, samples)
    gradients = th.autograd.grad((surrogate * th.tensor([1.0, -2.0], dtype=dtype)).sum(), [log_weights, means, stds])
    for name, gradient in zip(("log_weights", "means", "stds"), gradients):
        assert th.isfinite(gradient).all(), f"{name}: {gradient}"


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_far_apart_components_give_the_drawn_components_reparameterization_gradient(dtype: th.dtype) -> None:
    """1e4 stds apart, the other component has zero responsibility: dx/dmu_k = 1 for the drawn k, 0 for the other."""
    n_draws = 500
    log_weights = th.log_softmax(th.tensor([0.3, -0.3], dtype=dtype), -1).expand(n_draws, 2)
    means = th.tensor([[0.0, 0.0], [1e4, 1e4]], dtype=dtype).expand(n_draws, 2, 2).clone().requires_grad_()
    stds = th.tensor([[1.0, 0.5], [2.0, 1.0]], dtype=dtype).expand(n_draws, 2, 2).clone().requires_grad_()
    samples = implicit_mixture_sample(log_weights, means, stds)
    mean_gradient, std_gradient = th.autograd.grad(samples.sum(), [means, stds])
    drawn = (samples[:, 0] > 5e3).long()  # which component each draw came from
    assert 0.3 < drawn.double().mean() < 0.6  # weights 0.65 / 0.35 over 500 draws
    expected = th.nn.functional.one_hot(drawn, 2).to(dtype).unsqueeze(-1).expand(n_draws, 2, 2)
    assert th.allclose(mean_gradient, expected, atol=1e-5)
    drawn_means = means.detach()[th.arange(n_draws), drawn]
    drawn_stds = stds.detach()[th.arange(n_draws), drawn]
    eps = (samples.detach() - drawn_means) / drawn_stds
    assert th.allclose(std_gradient[th.arange(n_draws), drawn], eps, atol=1e-4)


def test_tiny_weight_sample_has_finite_gradients_in_float32() -> None:
    log_weights = th.log_softmax(th.tensor([0.0, math.log(1e-30), -2.0]), -1).expand(1000, 3).requires_grad_()
    means = th.tensor([[0.0, 1.0], [5.0, -5.0], [-1.0, 0.0]]).requires_grad_()
    log_stds = th.tensor([[0.0, -1.0], [-2.0, 0.5], [0.3, 0.0]]).requires_grad_()
    samples = implicit_mixture_sample(log_weights, means, log_stds.exp(), log_stds)
    gradients = th.autograd.grad(th.sin(samples).sum(), [log_weights, means, log_stds])
    assert all(th.isfinite(gradient).all() for gradient in gradients)


def test_float32_matches_float64() -> None:
    logits, means, log_stds = make_mixture("overlapping", 2)
    samples = implicit_mixture_sample(
        th.log_softmax(logits, -1).expand(300, -1), means.expand(300, -1, -1), log_stds.exp()
    ).detach()
    gradients: Dict[th.dtype, List[th.Tensor]] = {}
    for dtype in (th.float32, th.float64):
        leaves = [p.to(dtype).expand(300, *p.shape).clone().requires_grad_() for p in (logits, means, log_stds)]
        surrogate = implicit_mixture_surrogate(
            samples.to(dtype), th.log_softmax(leaves[0], -1), leaves[1], leaves[2].exp(), leaves[2]
        )
        gradients[dtype] = [g.double() for g in th.autograd.grad(th.sin(surrogate).sum(), leaves)]
    for single, double in zip(gradients[th.float32], gradients[th.float64]):
        assert th.allclose(single, double, rtol=1e-3, atol=1e-4)


def test_shared_stds_broadcast() -> None:
    """A state-independent ``[K, D]`` std (SB3's default for SAC is state dependent, but the head allows both)."""
    log_weights = th.log_softmax(th.randn(8, 3), -1)
    means = th.randn(8, 3, 2, requires_grad=True)
    log_stds = th.zeros(3, 2, requires_grad=True)
    samples = implicit_mixture_sample(log_weights, means, log_stds.exp(), log_stds)
    assert samples.shape == (8, 2)
    mean_gradient, log_std_gradient = th.autograd.grad(samples.sum(), [means, log_stds])
    assert mean_gradient.shape == (8, 3, 2) and log_std_gradient.shape == (3, 2)
    # Every draw moves one-for-one with a common shift of all means.
    assert th.allclose(mean_gradient.sum(-2), th.ones(8, 2), atol=1e-5)


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_weights_shape", "means_shape", "stds_shape", "message"),
    [
        ((4, 3), (4, 2, 2), (4, 2, 2), "log_weights must have shape"),
        ((3,), (3,), (3,), "means must have shape"),
        ((4, 3), (4, 3, 2), (4, 3, 5), "stds of shape"),
    ],
)
def test_bad_shapes_raise(log_weights_shape, means_shape, stds_shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        implicit_mixture_sample(th.zeros(log_weights_shape), th.zeros(means_shape), th.ones(stds_shape))


def test_bad_surrogate_and_marginalized_arguments_raise() -> None:
    log_weights, means, stds = th.zeros(4, 3), th.zeros(4, 3, 2), th.ones(4, 3, 2)
    with pytest.raises(ValueError, match="samples must have shape"):
        implicit_mixture_surrogate(th.zeros(4, 3), log_weights, means, stds)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        marginalized_mixture_expectation(lambda x: x.sum(-1), log_weights, means, stds, n_samples=0)


# --- the benchmark script -------------------------------------------------------------------------------------------


def test_variance_benchmark_writes_its_page(tmp_path) -> None:
    """benchmarks/reparam_variance.py at a tiny budget: its tables land in the page's generated block."""
    from benchmarks import reparam_variance

    page = tmp_path / "maxent_gradients.md"
    page.write_text("# Gradients\n\nHand-written reading.\n")
    reparam_variance.main(["--draws", "400", "--timing-rounds", "1", "--sac-rounds", "0", "--write", str(page)])
    text = page.read_text()
    assert "Hand-written reading." in text and "reparam_variance --draws 400" in text
    for heading in ("Gradient variance per draw", "Bias check", "Separation sweep", "Cost"):
        assert heading in text
    # The separation sweep's integrated implicit gradient equals the exact one (a check of the estimator and grid).
    sweep = text.split("Separation sweep")[1].split("**Cost**")[0]
    bias_cells = [row.split("|")[3] for row in sweep.splitlines() if row.startswith("| ") and row[2].isdigit()]
    assert len(bias_cells) == 5 and all(float(cell) < 1e-9 for cell in bias_cells)
