"""The policy head's one-call paths (sb3_gmm.compiled_head) against the separate torch path they replace.

PPO's evaluate_actions gets log_prob and the entropy from one compiled call and one autograd node, and the rollout's
draw comes with its log density: values, gradients (first in float64 by gradcheck, second through the reference) and
draws must equal the separate path's up to rounding, NaN in must give NaN out, and where the one-call path does not
apply the separate one must serve.
"""

import os
import shutil
from typing import List

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_gmm import GMMActorCriticPolicy, native
from sb3_gmm.distributions import GMMDistribution

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler: the distribution uses the torch path"
)

# The per-component rule: the one that the one-call kernel serves in D >= 2.
PER_COMPONENT = {"rule_nd": "per_component"}


@pytest.fixture
def head_calls(monkeypatch) -> List[bool]:
    """One entry per call into native.head_evaluate (whether it computed the entropy), to show the path ran."""
    calls: List[bool] = []
    original = native.head_evaluate

    def spy(kernels, head, shared_log_std, actions, bounds, rule, *args):
        calls.append(rule is not None)
        return original(kernels, head, shared_log_std, actions, bounds, rule, *args)

    monkeypatch.setattr(native, "head_evaluate", spy)
    return calls


def _bound(n_components, dim, state_dependent_std, dtype, scale=3.0, seed=0, **kwargs):
    """A distribution bound to a random head output whose log stds reach into both saturating stretches."""
    generator = th.Generator().manual_seed(seed)
    distribution = GMMDistribution(dim, n_components, state_dependent_std=state_dependent_std, **kwargs)
    n_params = distribution.n_params
    params = (scale * th.randn(16, n_params, generator=generator, dtype=dtype)).requires_grad_()
    log_std = None
    if not state_dependent_std:
        log_std = (3.0 * th.randn(n_components, dim, generator=generator, dtype=dtype) - 1.0).requires_grad_()
    actions = th.randn(16, dim, generator=generator, dtype=dtype)
    return distribution.proba_distribution(params, log_std), params, log_std, actions


def _values_and_grads(distribution, params, log_std, actions, paired: bool):
    if paired:
        log_prob, entropy = distribution.log_prob_and_entropy(actions)
    else:
        with native.disabled():
            distribution.proba_distribution(params, log_std)
            log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
    weights = th.linspace(-1.0, 2.0, log_prob.shape[0], dtype=log_prob.dtype)
    loss = (weights * log_prob).sum() + (0.0 if entropy is None else 0.7 * entropy.sum())
    inputs = [params] + ([] if log_std is None else [log_std])
    return log_prob, entropy, th.autograd.grad(loss, inputs)


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("state_dependent_std", [False, True])
@pytest.mark.parametrize(
    "n_components, dim, method, kwargs",
    [
        (1, 3, None, {}),
        (4, 1, None, {}),
        (3, 2, None, {}),  # the pooled rule, the default in D >= 2
        (4, 1, None, {"rule_1d": "widened_mis"}),
        (3, 6, None, {"rule_nd": "per_component"}),
        (8, 2, None, {"rule_nd": "per_component"}),
        (2, 3, "qmc", {"integrand": "log_responsibility", "n_points": 16, "rule_nd": "per_component"}),
        (4, 2, "sigma_points", {"degree": 5}),
        (4, 1, "qmc", {"rule_1d": "union"}),
        (8, 1, "qmc", {"rule_1d": "union", "n_points": 32}),
    ],
)
def test_paired_evaluation_equals_the_separate_path(
    head_calls, n_components, dim, method, kwargs, state_dependent_std, dtype
):
    settings = dict(entropy_method=method, entropy_kwargs=kwargs)
    distribution, params, log_std, actions = _bound(n_components, dim, state_dependent_std, dtype, **settings)
    log_prob, entropy, grads = _values_and_grads(distribution, params, log_std, actions, paired=True)
    assert head_calls == [True]
    # The reference: the separate torch path in float64 on the same inputs. In float32 both paths round (these
    # inputs saturate the log stds and put actions many stds out), so each is compared with float64, and the
    # compiled one must not be the less accurate.
    reference_inputs = [None if tensor is None else tensor.detach().double() for tensor in (params, log_std)]
    reference_inputs = [None if tensor is None else tensor.requires_grad_() for tensor in reference_inputs]
    reference = GMMDistribution(dim, n_components, state_dependent_std=state_dependent_std, **settings)
    reference.proba_distribution(*reference_inputs)
    ref_log_prob, ref_entropy, ref_grads = _values_and_grads(
        reference, *reference_inputs, actions.double(), paired=False
    )
    errors = _errors(log_prob, entropy, grads, ref_log_prob, ref_entropy, ref_grads)
    if dtype == th.float64:
        assert max(errors) < 1e-9
    else:
        torch_errors = _errors(
            *_values_and_grads(distribution, params, log_std, actions, paired=False),
            ref_log_prob,
            ref_entropy,
            ref_grads,
        )
        for error, torch_error in zip(errors, torch_errors):
            assert error <= max(2 * torch_error, 1e-4)


def _errors(log_prob, entropy, grads, ref_log_prob, ref_entropy, ref_grads) -> List[float]:
    """Largest errors relative to the reference's scale: log_prob, entropy, then each gradient."""
    pairs = [(log_prob, ref_log_prob), (entropy, ref_entropy), *zip(grads, ref_grads)]
    errors = []
    for value, ref in pairs:
        value, ref = value.detach().double(), ref.detach()
        errors.append(float(((value - ref) / ref.abs().max()).abs().max()))
    return errors


def test_without_entropy_in_loss_only_the_log_density_is_computed(head_calls):
    distribution, params, log_std, actions = _bound(4, 2, False, th.float64, entropy_in_loss=False)
    log_prob, entropy = distribution.log_prob_and_entropy(actions)
    assert entropy is None and head_calls == [False]
    ref_log_prob, _, ref_grads = _values_and_grads(distribution, params, log_std, actions, paired=False)
    grads = th.autograd.grad((log_prob * th.linspace(-1.0, 2.0, 16, dtype=th.float64)).sum(), [params, log_std])
    th.testing.assert_close(log_prob, ref_log_prob)
    for grad, ref_grad in zip(grads, ref_grads):
        th.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_gradcheck_and_second_derivatives(state_dependent_std):
    distribution, params, log_std, actions = _bound(3, 2, state_dependent_std, th.float64, scale=1.0)
    params = params.detach()[:5].requires_grad_()
    actions = actions[:5]
    inputs = (params,) if log_std is None else (params, log_std)

    def function(*tensors):
        distribution.proba_distribution(tensors[0], None if log_std is None else tensors[1])
        return distribution.log_prob_and_entropy(actions)

    assert th.autograd.gradcheck(function, inputs)
    # Second derivatives come from the torch reference (the kernel's first derivative is not differentiable).
    assert th.autograd.gradgradcheck(function, inputs)


def test_one_node_in_the_graph_and_the_same_values_under_no_grad(head_calls):
    distribution, params, log_std, actions = _bound(4, 1, False, th.float32)
    log_prob, entropy = distribution.log_prob_and_entropy(actions)
    assert log_prob.grad_fn is entropy.grad_fn is not None
    assert type(log_prob.grad_fn).__name__ == "_CompiledHeadEvaluationBackward"
    with th.no_grad():
        distribution.proba_distribution(params, log_std)
        no_grad_log_prob, no_grad_entropy = distribution.log_prob_and_entropy(actions)
    th.testing.assert_close(no_grad_log_prob, log_prob.detach())
    th.testing.assert_close(no_grad_entropy, entropy.detach())


def test_non_finite_parameters_give_nan_not_numbers():
    settings = dict(validate_args=False, entropy_kwargs=PER_COMPONENT)
    distribution, params, log_std, actions = _bound(4, 2, True, th.float32, **settings)
    params = params.detach().clone()
    params[3, 1] = float("nan")
    params[5, -1] = float("inf")
    distribution.proba_distribution(params.requires_grad_(), None)
    log_prob, entropy = distribution.log_prob_and_entropy(actions)
    bad = th.zeros(16, dtype=th.bool)
    bad[[3, 5]] = True
    assert log_prob[bad].isnan().all() and entropy[bad].isnan().all()
    assert log_prob[~bad].isfinite().all() and entropy[~bad].isfinite().all()


def test_where_the_one_call_path_does_not_apply_the_separate_one_serves(head_calls):
    # An estimator that is no point rule, and actions that need a gradient.
    distribution, params, log_std, actions = _bound(4, 1, False, th.float64, entropy_method="component_average")
    distribution.log_prob_and_entropy(actions)
    distribution, params, log_std, actions = _bound(4, 1, False, th.float64)
    log_prob, _ = distribution.log_prob_and_entropy(actions.requires_grad_())
    assert head_calls == []
    assert th.autograd.grad(log_prob.sum(), actions)[0].shape == actions.shape
    with native.disabled():
        distribution.proba_distribution(params, log_std)
        distribution.log_prob_and_entropy(actions.detach())
    assert head_calls == []


def test_a_rebinding_drops_the_paired_entropy():
    distribution, params, log_std, actions = _bound(4, 1, False, th.float64)
    distribution.pair_entropy_with_log_prob = True
    distribution.log_prob(actions)
    distribution.proba_distribution(params[:4], log_std)
    distribution.pair_entropy_with_log_prob = False
    assert distribution.entropy().shape == (4,)


@pytest.mark.parametrize("n_components", [1, 4])
@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_compiled_draw_equals_the_torch_draw_and_carries_its_log_density(n_components, state_dependent_std):
    distribution, params, log_std, _ = _bound(n_components, 3, state_dependent_std, th.float32, scale=1.0)
    with th.no_grad():
        th.manual_seed(7)
        distribution.proba_distribution(params, log_std)
        actions = distribution.sample()
        log_prob = distribution.log_prob(actions)
        assert distribution._sampled is not None and log_prob is distribution._sampled[1]
        with native.disabled():
            th.manual_seed(7)
            distribution.proba_distribution(params, log_std)
            torch_actions = distribution.sample()
            torch_log_prob = distribution.log_prob(torch_actions)
    # The same noise in the same order: the same components and the same draws up to rounding.
    th.testing.assert_close(actions, torch_actions, rtol=1e-5, atol=1e-5)
    th.testing.assert_close(log_prob, torch_log_prob, rtol=1e-4, atol=1e-4)
    # log_prob of any other tensor is computed, not read from the draw.
    with th.no_grad():
        distribution.proba_distribution(params, log_std)
        drawn = distribution.sample()
        th.testing.assert_close(distribution.log_prob(drawn.clone()), distribution.log_prob(drawn))


def test_a_draw_that_records_a_graph_stays_on_torch():
    distribution, params, log_std, _ = _bound(4, 2, False, th.float32)
    actions = distribution.sample()
    assert distribution._sampled is None
    assert actions.requires_grad  # reparameterised through the component's mean and std


def test_ppo_evaluate_actions_equals_sb3s(head_calls):
    model = PPO(GMMActorCriticPolicy, gym.make("Pendulum-v1"), n_steps=64, batch_size=64, device="cpu", seed=0)
    policy = model.policy
    observations = th.randn(32, 3)
    actions = th.randn(32, 1)
    values, log_prob, entropy = policy.evaluate_actions(observations, actions)
    assert head_calls == [True] and policy.gmm_distribution.pair_entropy_with_log_prob is False
    with native.disabled():
        ref_values, ref_log_prob, ref_entropy = ActorCriticPolicy.evaluate_actions(policy, observations, actions)
    th.testing.assert_close(values, ref_values)
    th.testing.assert_close(log_prob, ref_log_prob, rtol=1e-5, atol=1e-5)
    th.testing.assert_close(entropy, ref_entropy, rtol=1e-5, atol=1e-5)
    grads = th.autograd.grad((log_prob - 0.01 * entropy).sum(), list(policy.parameters()), allow_unused=True)
    ref_grads = th.autograd.grad(
        (ref_log_prob - 0.01 * ref_entropy).sum(), list(policy.parameters()), allow_unused=True
    )
    for grad, ref_grad in zip(grads, ref_grads):
        if ref_grad is None:
            assert grad is None or not grad.any()
        else:
            th.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_the_pairing_is_switched_off_when_evaluate_actions_raises():
    model = PPO(GMMActorCriticPolicy, gym.make("Pendulum-v1"), n_steps=64, batch_size=64, device="cpu", seed=0)
    with pytest.raises(RuntimeError):
        model.policy.evaluate_actions(th.randn(4, 5), th.randn(4, 1))  # wrong observation size
    assert model.policy.gmm_distribution.pair_entropy_with_log_prob is False


def test_custom_log_std_bounds_with_a_clipped_margin(head_calls):
    # An interval narrower than two margins: the margin is clipped to half of it in both paths.
    settings = dict(log_std_min=-1.0, log_std_max=-0.4, entropy_kwargs=PER_COMPONENT)
    distribution, params, log_std, actions = _bound(3, 2, True, th.float64, **settings)
    log_prob, entropy, grads = _values_and_grads(distribution, params, log_std, actions, paired=True)
    ref_log_prob, ref_entropy, ref_grads = _values_and_grads(distribution, params, log_std, actions, paired=False)
    assert head_calls == [True]
    th.testing.assert_close(log_prob, ref_log_prob)
    th.testing.assert_close(entropy, ref_entropy)
    th.testing.assert_close(grads[0], ref_grads[0])


def test_recurrent_ppo_evaluate_actions_equals_sb3_contribs(head_calls):
    from sb3_contrib import RecurrentPPO
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    from sb3_gmm import GMMRecurrentActorCriticPolicy

    model = RecurrentPPO(GMMRecurrentActorCriticPolicy, "Pendulum-v1", n_steps=16, batch_size=16, device="cpu", seed=0)
    policy = model.policy
    n_layers, _, hidden = policy.lstm_hidden_state_shape
    generator = th.Generator().manual_seed(0)
    lstm = tuple(0.1 * th.randn(n_layers, 8, hidden, generator=generator) for _ in range(2))
    states = RNNStates(lstm, lstm)
    observations, actions = th.randn(8, 3, generator=generator), th.randn(8, 1, generator=generator)
    episode_starts = th.zeros(8)
    outputs = policy.evaluate_actions(observations, actions, states, episode_starts)
    assert head_calls == [True]
    with native.disabled():
        reference = RecurrentActorCriticPolicy.evaluate_actions(policy, observations, actions, states, episode_starts)
    for output, expected in zip(outputs, reference):
        th.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_a_draw_from_non_finite_parameters_is_nan(state_dependent_std):
    distribution, params, log_std, _ = _bound(3, 2, state_dependent_std, th.float32, validate_args=False)
    params = params.detach().clone()
    params[2, 0] = float("nan")  # a logit
    params[4, -1] = float("inf")  # a mean (or a raw log std)
    with th.no_grad():
        distribution.proba_distribution(params, None if log_std is None else log_std.detach())
        actions = distribution.sample()
        log_prob = distribution.log_prob(actions)
    bad = th.zeros(16, dtype=th.bool)
    bad[[2, 4]] = True
    assert actions[bad].isnan().all() and log_prob[bad].isnan().all()
    assert actions[~bad].isfinite().all() and log_prob[~bad].isfinite().all()
