"""GMMDistribution: SB3's Distribution API, exact log_prob, entropy against Monte Carlo, mode, KL."""

import copy
import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution, kl_divergence

from sb3_gmm import GMMDistribution
from sb3_gmm.distributions import GMMTorchDistribution, soft_clamp
from sb3_gmm.entropy import gmm_entropy


def make_distribution(batch: int = 5, dim: int = 3, n_components: int = 4, state_dependent_std: bool = False, seed=0):
    th.manual_seed(seed)
    dist = GMMDistribution(dim, n_components=n_components, state_dependent_std=state_dependent_std)
    action_params = th.randn(batch, dist.n_params)
    log_std = None if state_dependent_std else 0.3 * th.randn(n_components, dim)
    return dist.proba_distribution(action_params, log_std), action_params, log_std


@pytest.mark.parametrize("state_dependent_std", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 4])
def test_shapes(dim, state_dependent_std):
    dist, _, _ = make_distribution(batch=6, dim=dim, state_dependent_std=state_dependent_std)
    assert dist.logits.shape == (6, 4)
    assert dist.means.shape == (6, 4, dim) and dist.stds.shape == (6, 4, dim)
    actions = dist.sample()
    assert actions.shape == (6, dim)
    assert dist.mode().shape == (6, dim)
    assert dist.log_prob(actions).shape == (6,)
    assert dist.entropy().shape == (6,)
    assert th.isfinite(dist.log_prob(actions)).all()


def test_log_prob_is_the_exact_mixture_density():
    dist, _, _ = make_distribution(batch=3, dim=2, n_components=3)
    actions = th.randn(3, 2)
    weights = th.softmax(dist.logits, -1)
    normal = th.distributions.Normal(dist.means, dist.stds)
    expected = (weights * normal.log_prob(actions.unsqueeze(1)).sum(-1).exp()).sum(-1).log()
    assert th.allclose(dist.log_prob(actions), expected, atol=1e-5)
    # And it is what torch's own MixtureSameFamily says (the object SB3's kl_divergence sees).
    assert th.allclose(dist.distribution.log_prob(actions), expected, atol=1e-5)


def test_samples_follow_the_mixture():
    """Sample mean and variance match the mixture's closed-form moments (4 standard errors)."""
    th.manual_seed(1)
    dist = GMMDistribution(1, n_components=2)
    dist.proba_distribution(th.tensor([[0.0, 1.0, -2.0, 2.0]]), th.tensor([[-1.0], [-0.5]]))
    samples = th.cat([dist.sample() for _ in range(20000)])
    weights = th.softmax(dist.logits[0], -1)
    means, variances = dist.means[0, :, 0], dist.stds[0, :, 0] ** 2
    mixture_mean = (weights * means).sum()
    mixture_var = (weights * (variances + means**2)).sum() - mixture_mean**2
    standard_error = math.sqrt(mixture_var / len(samples))
    assert abs(samples.mean() - mixture_mean) < 4 * standard_error
    assert abs(samples.var() - mixture_var) < 0.05 * mixture_var


@pytest.mark.parametrize("dim, n_components, seed", [(2, 3, 3), (1, 4, 8), (4, 4, 9)])
def test_entropy_agrees_with_monte_carlo(dim, n_components, seed):
    """entropy() with the library default estimator against -mean(log_prob(samples)) from 2e5 samples, within
    0.1 nats + 4 standard errors (the default, qmc with 64 points, is within 0.07 nats on docs/entropy_accuracy.md)."""
    dist, _, _ = make_distribution(batch=3, dim=dim, n_components=n_components, seed=seed)
    th.manual_seed(4)
    n = 200_000
    component = th.distributions.Categorical(logits=dist.logits).sample((n,))  # [n, B]
    index = component.unsqueeze(-1).unsqueeze(-1).expand(n, 3, 1, dim)
    means = dist.means.unsqueeze(0).expand(n, -1, -1, -1).gather(-2, index).squeeze(-2)
    stds = dist.stds.unsqueeze(0).expand(n, -1, -1, -1).gather(-2, index).squeeze(-2)
    samples = means + stds * th.randn_like(means)
    log_probs = dist.log_prob(samples)  # broadcasts over the leading sample axis: [n, B]
    mc_entropy = -log_probs.mean(0)
    standard_error = log_probs.std(0) / math.sqrt(n)
    assert ((dist.entropy() - mc_entropy).abs() < 0.1 + 4 * standard_error).all()


def test_single_component_matches_diag_gaussian():
    """K = 1 gives SB3's DiagGaussianDistribution: same log_prob, entropy and mode."""
    th.manual_seed(0)
    dim = 3
    mean_actions = th.randn(4, dim)
    log_std = 0.2 * th.randn(dim)
    gaussian = DiagGaussianDistribution(dim).proba_distribution(mean_actions, log_std)
    gmm = GMMDistribution(dim, n_components=1).proba_distribution(
        th.cat([th.zeros(4, 1), mean_actions], dim=-1), log_std.unsqueeze(0)
    )
    actions = th.randn(4, dim)
    assert th.allclose(gmm.log_prob(actions), gaussian.log_prob(actions), atol=1e-5)
    assert th.allclose(gmm.entropy(), gaussian.entropy(), atol=1e-5)
    assert th.allclose(gmm.mode(), gaussian.mode(), atol=1e-6)


def test_mode_picks_the_highest_peak_not_the_heaviest_component():
    """Weights 0.4 on a sharp peak vs 0.6 spread over a wide one: the mode is the sharp peak."""
    dist = GMMDistribution(1, n_components=2)
    logits = th.log(th.tensor([[0.4, 0.6]]))
    params = th.cat([logits, th.tensor([[-1.0, 1.0]])], dim=-1)
    dist.proba_distribution(params, th.log(th.tensor([[0.1], [2.0]])))
    assert th.allclose(dist.mode(), th.tensor([[-1.0]]), atol=1e-3)


def test_mode_refines_to_a_true_peak():
    """Two heavily overlapping equal components: the true mode lies between the means, not at either."""
    dist = GMMDistribution(1, n_components=2)
    dist.proba_distribution(th.tensor([[0.0, 0.0, -0.3, 0.3]]), th.zeros(2, 1))
    grid = th.linspace(-2, 2, 4001).unsqueeze(-1)
    single = GMMDistribution(1, n_components=2).proba_distribution(
        th.tensor([[0.0, 0.0, -0.3, 0.3]]).expand(4001, -1), th.zeros(2, 1)
    )
    density = single.log_prob(grid)
    true_mode = grid[density.argmax()]
    assert abs(dist.mode().item() - true_mode.item()) < 0.01
    assert dist.log_prob(dist.mode()) >= single.log_prob(th.tensor([[0.3]]))[0]


def test_proba_distribution_rebinds_instead_of_mutating():
    """TRPO keeps a shallow copy of the old distribution: a new batch must not change the copy's tensors."""
    dist, params, log_std = make_distribution()
    old = copy.copy(dist)
    old_means = old.means.clone()
    dist.proba_distribution(params + 1.0, log_std)
    assert th.equal(old.means, old_means)
    assert not th.equal(dist.means, old_means)


def test_torch_distribution_is_our_mixture_class():
    """SB3's kl_divergence reads .distribution: it must be our registered subclass, with the batch's parameters."""
    dist, _, _ = make_distribution(batch=4, dim=2, n_components=3)
    torch_dist = dist.distribution
    assert isinstance(torch_dist, GMMTorchDistribution)
    assert torch_dist.batch_shape == (4,) and torch_dist.event_shape == (2,)
    assert th.allclose(torch_dist.mixture_distribution.probs, th.softmax(dist.logits, -1))
    assert th.equal(torch_dist.component_distribution.base_dist.loc, dist.means)
    # The registration is for our class only: plain MixtureSameFamily keeps torch's NotImplementedError.
    plain = th.distributions.MixtureSameFamily(torch_dist.mixture_distribution, torch_dist.component_distribution)
    with pytest.raises(NotImplementedError):
        th.distributions.kl_divergence(plain, plain)


def test_kl_matches_closed_form_for_single_gaussians():
    """K = 1: the bound is the exact Gaussian KL, summed over action dimensions."""
    dim = 3
    mean_p, mean_q = th.randn(5, dim), th.randn(5, dim)
    log_std_p, log_std_q = 0.3 * th.randn(1, dim), 0.3 * th.randn(1, dim)
    gmm_p = GMMDistribution(dim, n_components=1).proba_distribution(th.cat([th.zeros(5, 1), mean_p], -1), log_std_p)
    gmm_q = GMMDistribution(dim, n_components=1).proba_distribution(th.cat([th.zeros(5, 1), mean_q], -1), log_std_q)
    normal_p = th.distributions.Normal(mean_p, log_std_p.exp())
    normal_q = th.distributions.Normal(mean_q, log_std_q.exp())
    expected = th.distributions.kl_divergence(normal_p, normal_q).sum(-1)
    assert th.allclose(kl_divergence(gmm_p, gmm_q), expected, atol=1e-5)


def test_kl_is_zero_for_identical_and_positive_otherwise_and_twice_differentiable():
    dist, params, log_std = make_distribution(batch=4, dim=2, n_components=3)
    same = copy.copy(dist)
    assert th.allclose(kl_divergence(dist, same), th.zeros(4), atol=1e-6)
    params = params.clone().requires_grad_(True)
    moved = GMMDistribution(2, n_components=3).proba_distribution(params + 0.3 * th.randn_like(params), log_std)
    kl = kl_divergence(copy.copy(dist), moved)
    assert (kl > 0).all()
    # TRPO's Hessian-vector product: grad of (grad . v) must exist.
    (grad,) = th.autograd.grad(kl.mean(), params, create_graph=True)
    (hvp,) = th.autograd.grad((grad * th.randn_like(grad)).sum(), params)
    assert th.isfinite(hvp).all() and hvp.abs().sum() > 0


def test_kl_bound_is_above_monte_carlo_kl():
    """The chain-rule bound is an upper bound on the true KL between the two mixtures."""
    dist_p, params, log_std = make_distribution(batch=2, dim=2, n_components=3, seed=5)
    dist_q = GMMDistribution(2, n_components=3).proba_distribution(params + 0.5 * th.randn_like(params), log_std)
    th.manual_seed(6)
    samples = dist_p.distribution.sample((100_000,))  # [n, B, D]
    mc_kl = (dist_p.distribution.log_prob(samples) - dist_q.distribution.log_prob(samples)).mean(0)
    bound = kl_divergence(dist_p, dist_q)
    assert (bound >= mc_kl - 0.02).all()


def test_entropy_gradient_raises_entropy():
    """A few optimizer steps on -entropy alone raise the estimate: the bonus reaches the parameters."""
    th.manual_seed(0)
    params = (0.1 * th.randn(8, GMMDistribution(2, n_components=3).n_params)).requires_grad_(True)
    log_std = th.full((3, 2), -1.0, requires_grad=True)
    dist = GMMDistribution(2, n_components=3)
    optimizer = th.optim.SGD([params, log_std], lr=0.05)
    start = dist.proba_distribution(params, log_std).entropy().mean().item()
    for _ in range(20):
        optimizer.zero_grad()
        loss = -dist.proba_distribution(params, log_std).entropy().mean()
        loss.backward()
        assert params.grad.abs().sum() > 0 and log_std.grad.abs().sum() > 0
        optimizer.step()
    assert dist.proba_distribution(params, log_std).entropy().mean().item() > start + 0.1


def test_entropy_method_and_options_are_used():
    dist, _, _ = make_distribution(batch=2, dim=2, n_components=3)
    lower = GMMDistribution(2, n_components=3, entropy_method="pairwise_bhattacharyya")
    lower.proba_distribution(th.cat([dist.logits, dist.means.reshape(2, -1)], -1), dist.stds[0].log())
    expected = gmm_entropy(dist.logits, dist.means, dist.stds, method="pairwise_bhattacharyya")
    assert th.allclose(lower.entropy(), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_components=0), "n_components"),
        (dict(n_components=2.0), "n_components"),
        (dict(entropy_method="nope"), "entropy_method"),
        (dict(entropy_method="taylor", entropy_kwargs=dict(ordr=2)), "entropy_kwargs.*ordr"),
        (dict(entropy_method="taylor", entropy_kwargs=dict(order=-1)), "entropy_kwargs.*order"),
        (dict(entropy_kwargs=[("n_points", 8)]), "entropy_kwargs"),
        (dict(log_std_min=2.0, log_std_max=-2.0), "log_std_min"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GMMDistribution(2, **kwargs)


def test_actions_from_params_and_log_prob_from_params():
    dist, params, log_std = make_distribution(batch=4, dim=2, n_components=2)
    deterministic = dist.actions_from_params(params, log_std, deterministic=True)
    assert th.allclose(deterministic, dist.mode())
    actions, log_prob = dist.log_prob_from_params(params, log_std)
    assert th.allclose(log_prob, dist.log_prob(actions))
    assert np.all(np.isfinite(log_prob.detach().numpy()))


def test_soft_clamp_is_identity_inside_and_bounded_with_gradient_outside():
    values = th.linspace(-30.0, 30.0, 2001, requires_grad=True)
    clamped = soft_clamp(values, -5.0, 2.0)
    assert (clamped >= -5.0).all() and (clamped <= 2.0).all()  # reached only in float rounding, far out
    inside = (values > -4.5) & (values < 1.5)
    assert th.equal(clamped[inside], values[inside])
    assert (clamped[1:] >= clamped[:-1]).all()  # monotone
    (grad,) = th.autograd.grad(clamped.sum(), values)
    assert th.isfinite(grad).all() and (grad >= 0).all() and (grad <= 1).all()
    # Half a unit past the identity region the gradient is still e^-1: a hard clamp would give exactly 0.
    just_past = (values > 1.95) & (values < 2.05)
    assert (grad[just_past] > 0.3).all()


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_stds_stay_within_the_bounds(state_dependent_std):
    dist = GMMDistribution(2, n_components=3, state_dependent_std=state_dependent_std, log_std_min=-3, log_std_max=1)
    extreme_log_stds = th.linspace(-50, 50, 24).view(4, 6)
    mixture_params = th.zeros(4, 3 + 6)
    if state_dependent_std:
        params, log_std = th.cat([mixture_params, extreme_log_stds], -1), None
    else:
        params, log_std = mixture_params, th.tensor([[-50.0, 0.0], [50.0, -2.0], [0.5, -3.5]])
    stds = dist.proba_distribution(params, log_std).stds
    assert (stds.log() >= -3.0 - 1e-6).all() and (stds.log() <= 1.0 + 1e-6).all()
    assert th.isfinite(dist.entropy()).all() and th.isfinite(dist.log_prob(th.randn(4, 2))).all()


def test_mode_handles_extra_batch_dimensions():
    dist, params, log_std = make_distribution(batch=6, dim=2, n_components=3)
    flat_mode = dist.mode()
    dist.proba_distribution(params.view(2, 3, -1), log_std)
    assert dist.mode().shape == (2, 3, 2)
    assert th.allclose(dist.mode().view(6, 2), flat_mode)


def test_component_frequencies_match_the_weights_per_state():
    """Gumbel-max component draws: per state, the share of each (well separated) component is its weight (4 SE)."""
    th.manual_seed(2)
    n_components, n_draws = 4, 20000
    logits = th.tensor([[0.0, 1.0, -1.0, 0.5], [2.0, -2.0, 0.0, 0.0]])
    means = th.tensor([-30.0, -10.0, 10.0, 30.0]).view(1, n_components, 1).expand(2, -1, -1)
    dist = GMMDistribution(1, n_components=n_components)
    dist.proba_distribution(th.cat([logits, means.reshape(2, -1)], -1), th.zeros(n_components, 1))
    samples = th.stack([dist.sample() for _ in range(n_draws)])  # [n_draws, 2, 1]
    nearest = (samples - means[0, :, 0]).abs().argmin(-1)  # [n_draws, 2]
    for state in range(2):
        weights = th.softmax(logits[state], -1)
        shares = th.bincount(nearest[:, state], minlength=n_components).double() / n_draws
        standard_errors = (weights * (1 - weights) / n_draws).sqrt()
        assert ((shares - weights).abs() < 4 * standard_errors).all(), (shares, weights)


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_empty_batch_gives_empty_results(state_dependent_std):
    dist = GMMDistribution(2, n_components=3, state_dependent_std=state_dependent_std)
    dist.proba_distribution(th.zeros(0, dist.n_params), None if state_dependent_std else th.zeros(3, 2))
    assert dist.sample().shape == (0, 2) and dist.mode().shape == (0, 2)
    assert dist.log_prob(th.zeros(0, 2)).shape == (0,) and dist.entropy().shape == (0,)


def test_parameters_first_derived_without_autograd_are_derived_again_with_it():
    # mode() runs under no_grad; a log_prob after it must still differentiate into the head and the log stds.
    dist, action_params, log_std = make_distribution(batch=4, dim=2, n_components=3)
    action_params.requires_grad_()
    log_std.requires_grad_()
    dist.proba_distribution(action_params, log_std)
    dist.mode()
    assert dist._binding_cache is not None and not dist._binding_cache.records_graph
    actions = th.randn(4, 2)
    grads = th.autograd.grad(dist.log_prob(actions).sum(), [action_params, log_std])
    reference = GMMDistribution(2, n_components=3).proba_distribution(action_params, log_std)
    expected = th.autograd.grad(reference.log_prob(actions).sum(), [action_params, log_std])
    for grad, expected_grad in zip(grads, expected):
        assert grad.abs().sum() > 0
        th.testing.assert_close(grad, expected_grad)


def test_binding_records_no_ops_until_a_method_needs_them():
    dist, action_params, log_std = make_distribution(batch=4, dim=2, n_components=3)
    assert dist._binding_cache is None
    with pytest.raises(ValueError, match="action_params must have 9 columns"):
        dist.proba_distribution(th.randn(4, 10), log_std)


def test_a_shallow_copy_keeps_its_batch_when_first_read_after_a_rebinding():
    dist, params, log_std = make_distribution()
    expected = dist.means.clone()
    dist.proba_distribution(params, log_std)  # nothing derived yet
    old = copy.copy(dist)
    dist.proba_distribution(params + 1.0, log_std)
    assert th.equal(old.means, expected)
    assert th.equal(dist.means, expected + 1.0)
