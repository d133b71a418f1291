"""Shortcuts taken for speed give the same results: K = 1 without the mixture machinery, entropy_in_loss=False."""

import gymnasium as gym
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO

from sb3_gmm import GMMActorCriticPolicy, GMMDistribution, GMMRecurrentActorCriticPolicy
from sb3_gmm.entropy import gmm_entropy
from sb3_gmm.mixture import mixture_log_prob

SMALL_NET = dict(net_arch=dict(pi=[16], vf=[16]))


def _bound(dim: int, state_dependent_std: bool, entropy_method=None, batch: int = 7, seed: int = 0):
    generator = th.Generator().manual_seed(seed)
    distribution = GMMDistribution(
        dim, n_components=1, entropy_method=entropy_method, state_dependent_std=state_dependent_std
    )
    params = th.randn(batch, distribution.n_params, generator=generator, dtype=th.float64, requires_grad=True)
    log_std = None
    if not state_dependent_std:
        log_std = (0.3 * th.randn(1, dim, generator=generator, dtype=th.float64)).requires_grad_(True)
    return distribution.proba_distribution(params, log_std), params, log_std


@pytest.mark.parametrize("state_dependent_std", [False, True])
@pytest.mark.parametrize("dim", [1, 3])
def test_single_component_log_prob_and_entropy_equal_the_mixture_formulas(dim, state_dependent_std):
    """K = 1's direct Gaussian formulas give the mixture's log density and the estimators' closed form, gradients
    included (w.r.t. the head output and the log-std parameter)."""
    distribution, params, log_std = _bound(dim, state_dependent_std)
    actions = th.randn(7, dim, dtype=th.float64)
    leaves = [params] + ([log_std] if log_std is not None else [])
    fast = distribution.log_prob(actions).sum() + 0.7 * distribution.entropy().sum()
    fast_grads = th.autograd.grad(fast, leaves, retain_graph=True)
    weights = th.log_softmax(distribution.logits, -1)
    reference = mixture_log_prob(actions, weights, distribution.means, distribution.stds).sum()
    reference = reference + 0.7 * gmm_entropy(distribution.logits, distribution.means, distribution.stds).sum()
    reference_grads = th.autograd.grad(reference, leaves)
    th.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    for got, expected in zip(fast_grads, reference_grads):
        th.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert distribution.entropy().shape == (7,) and distribution.log_prob(actions).shape == (7,)


def test_single_component_keeps_an_estimator_that_is_not_exact_for_one_gaussian():
    """monte_carlo is noisy even for K = 1: the shortcut must not replace it with the closed form."""
    distribution, _, _ = _bound(2, False, entropy_method="monte_carlo")
    closed_form = _bound(2, False)[0].entropy()
    assert not th.allclose(distribution.entropy(), closed_form, atol=1e-3)


def test_entropy_in_loss_false_returns_none_and_keeps_the_estimate():
    distribution = GMMDistribution(2, n_components=3, entropy_in_loss=False)
    params = th.randn(5, distribution.n_params)
    distribution.proba_distribution(params, th.zeros(3, 2))
    assert distribution.entropy() is None
    expected = gmm_entropy(distribution.logits, distribution.means, distribution.stds)
    th.testing.assert_close(distribution.entropy_estimate(), expected)
    with pytest.raises(ValueError, match="entropy_in_loss must be True or False"):
        GMMDistribution(2, entropy_in_loss="no")


def _parameters_after_training(algo, policy, entropy_in_loss: bool, **kwargs):
    env = gym.make("Pendulum-v1")
    policy_kwargs = dict(n_components=3, entropy_in_loss=entropy_in_loss, **SMALL_NET)
    model = algo(policy, env, ent_coef=0.0, seed=3, policy_kwargs=policy_kwargs, **kwargs)
    model.learn(64)
    return model, [parameter.detach().clone() for parameter in model.policy.parameters()]


@pytest.mark.parametrize(
    "algo, policy, kwargs",
    [
        (PPO, GMMActorCriticPolicy, dict(n_steps=32, batch_size=16, n_epochs=2)),
        (A2C, GMMActorCriticPolicy, dict(n_steps=8)),
        (RecurrentPPO, GMMRecurrentActorCriticPolicy, dict(n_steps=32, batch_size=16, n_epochs=1)),
    ],
)
def test_entropy_in_loss_false_trains_bit_for_bit_the_same_at_ent_coef_zero(algo, policy, kwargs):
    """With ent_coef = 0 the entropy only enters the loss times zero: skipping it changes no parameter."""
    with_entropy, expected = _parameters_after_training(algo, policy, True, **kwargs)
    without_entropy, found = _parameters_after_training(algo, policy, False, **kwargs)
    assert without_entropy.policy.gmm_distribution.entropy_in_loss is False
    for got, want in zip(found, expected):
        assert th.equal(got, want)
    # The skip is real: the policy hands the algorithm no entropy.
    obs = th.as_tensor(without_entropy.env.observation_space.sample()).unsqueeze(0)
    if algo is not RecurrentPPO:
        assert without_entropy.policy.evaluate_actions(obs, th.zeros(1, 1))[2] is None
        assert with_entropy.policy.evaluate_actions(obs, th.zeros(1, 1))[2] is not None


def test_entropy_in_loss_survives_save_and_load(tmp_path):
    model, _ = _parameters_after_training(PPO, GMMActorCriticPolicy, False, n_steps=32, batch_size=16, n_epochs=1)
    model.save(tmp_path / "model")
    loaded = PPO.load(tmp_path / "model")
    assert loaded.policy.gmm_distribution.entropy_in_loss is False


def test_compiled_code_takes_graph_friendly_paths(monkeypatch):
    """Under torch.compile (is_compiling() True) the CPU shortcuts that read values into Python are skipped: the
    log-std clamp takes its general path, the bind-time finiteness check is skipped and the entropy uses the autograd
    reference, so a compiled policy neither breaks its graph nor recompiles every step (docs/compile.md). The values
    are the same."""
    from sb3_gmm.distributions import soft_clamp
    from sb3_gmm.entropy import quadrature

    distribution = GMMDistribution(2, n_components=3)
    params = th.randn(5, distribution.n_params)
    log_std = th.zeros(3, 2)
    expected = distribution.proba_distribution(params, log_std).entropy_estimate()
    expected_clamp = soft_clamp(th.tensor([0.0, 1.0]), -5.0, 2.0)

    calls = []
    monkeypatch.setattr(quadrature._FusedQuadratureEntropy, "apply", lambda *args: calls.append(args))
    monkeypatch.setattr(th.compiler, "is_compiling", lambda: True)
    bad = params.clone()
    bad[0, 0] = float("nan")
    distribution.proba_distribution(bad, log_std)  # no check, no raise (the rollout, run eagerly, still checks)
    found = distribution.proba_distribution(params, log_std).entropy_estimate()
    th.testing.assert_close(found, expected)
    assert not calls, "the hand-written kernel ran under compile"
    th.testing.assert_close(soft_clamp(th.tensor([0.0, 1.0]), -5.0, 2.0), expected_clamp)
