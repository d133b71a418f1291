"""GMMDistribution under misuse and bad input: NaN from the network, wrong head sizes, calls before binding."""

import threading

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO

import sb3_gmm.distributions as distributions_module
from sb3_gmm import GMMActorCriticPolicy, GMMDistribution
from sb3_gmm.entropy import set_validate_args, validation

SMALL_NET = dict(net_arch=dict(pi=[16], vf=[16]))
CAUSES = "NaN or inf observations.*VecNormalize.*diverged network.*learning rate.*max_grad_norm"


def bind(dist: GMMDistribution, action_params: th.Tensor) -> GMMDistribution:
    log_std = None if dist.state_dependent_std else th.zeros(dist.n_components, dist.action_dim)
    return dist.proba_distribution(action_params, log_std)


class NaNObservationEnv(gym.Env):
    """Observations turn NaN from step ``nan_from`` on, as a broken env or VecNormalize would produce."""

    def __init__(self, nan_from: int = 5):
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.nan_from = nan_from
        self.actions_seen = []
        self._steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.actions_seen.append(np.array(action))
        self._steps += 1
        obs = np.full(3, np.nan if self._steps >= self.nan_from else 0.1, dtype=np.float32)
        return obs, 0.0, False, False, {}


@pytest.fixture
def validation_switch():
    """Restore the entropy package's global switch after a test flips it."""
    yield set_validate_args
    set_validate_args(True)


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_nan_in_one_row_names_the_row_the_parameters_and_the_causes(state_dependent_std):
    dist = GMMDistribution(2, n_components=3, state_dependent_std=state_dependent_std, validate_args=True)
    action_params = th.randn(6, dist.n_params)
    action_params[4, dist.layout.means_slice.start + 1] = float("nan")
    action_params[5, 0] = float("inf")
    with pytest.raises(
        ValueError, match=f"non-finite .*batch index 4 \\(means; 2 of 6 states affected\\); likely causes: {CAUSES}"
    ):
        bind(dist, action_params)
    if state_dependent_std:
        action_params = th.randn(6, dist.n_params)
        action_params[1, -1] = float("nan")
        with pytest.raises(ValueError, match="batch index 1 \\(log stds; 1 of 6"):
            bind(dist, action_params)


def test_nan_row_of_a_multi_dimensional_batch_is_named_by_its_index():
    dist = GMMDistribution(2, n_components=2, validate_args=True)
    action_params = th.randn(3, 4, dist.n_params)
    action_params[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"batch index \(2, 1\) \(logits; 1 of 12"):
        bind(dist, action_params)


def test_nan_log_std_parameter_is_blamed_on_the_parameter():
    dist = GMMDistribution(2, n_components=3, validate_args=True)
    log_std = th.zeros(3, 2)
    log_std[1, 0] = float("nan")
    with pytest.raises(ValueError, match=f"log_std parameter.*non-finite.*{CAUSES}"):
        dist.proba_distribution(th.randn(4, dist.n_params), log_std)


def test_large_finite_parameters_pass_although_their_sum_overflows():
    dist = GMMDistribution(1, n_components=2, validate_args=True)
    action_params = th.full((4, dist.n_params), 3e38)  # float32: the sum is inf, every entry finite
    assert th.isinf(action_params.sum())
    bind(dist, action_params)
    assert th.isfinite(dist.log_prob(th.full((4, 1), 3e38))).all()


def test_switching_validation_off_lets_nan_through(validation_switch):
    action_params = th.full((2, 6), float("nan"))
    dist = bind(GMMDistribution(2, n_components=2, validate_args=False), action_params)
    assert th.isnan(dist.sample()).all()
    # None follows the entropy package's switch, read on every call (not when the distribution was built).
    dist = GMMDistribution(2, n_components=2)
    with pytest.raises(ValueError, match="non-finite"):
        bind(dist, action_params)
    validation_switch(False)
    assert th.isnan(bind(dist, action_params).mode()).all()
    validation_switch(True)
    with pytest.raises(ValueError, match="non-finite"):
        bind(dist, action_params)


def test_validation_block_switches_the_check_in_this_thread_only():
    action_params = th.full((2, 6), float("nan"))
    dist = GMMDistribution(2, n_components=2)
    other_thread_errors = []

    def bind_in_another_thread():
        try:
            bind(GMMDistribution(2, n_components=2), action_params)
        except ValueError as error:
            other_thread_errors.append(str(error))

    with validation(False):
        assert th.isnan(bind(dist, action_params).sample()).all()
        thread = threading.Thread(target=bind_in_another_thread)
        thread.start()
        thread.join()
    assert len(other_thread_errors) == 1 and "non-finite" in other_thread_errors[0]
    with pytest.raises(ValueError, match="non-finite"):
        bind(dist, action_params)


def test_parameters_are_checked_once_per_batch_not_again_by_the_entropy(monkeypatch):
    seen = []
    original = distributions_module.mixture_entropy

    def recording_mixture_entropy(*args, **kwargs):
        seen.append(kwargs["validate_args"])
        return original(*args, **kwargs)

    monkeypatch.setattr(distributions_module, "mixture_entropy", recording_mixture_entropy)
    dist = bind(GMMDistribution(2, n_components=3, validate_args=True), th.randn(5, 9))
    assert dist.entropy().shape == (5,)
    assert seen == [False]


def test_nan_observation_raises_in_predict_and_evaluate_actions():
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", policy_kwargs=SMALL_NET, seed=0)
    obs = np.zeros((4, 3), dtype=np.float32)
    obs[2, 1] = np.nan
    with pytest.raises(ValueError, match=f"non-finite .*batch index 2 .*{CAUSES}"):
        model.predict(obs, deterministic=True)
    with pytest.raises(ValueError, match="batch index 2"):
        model.predict(obs, deterministic=False)
    with pytest.raises(ValueError, match="batch index 2"):
        model.policy.evaluate_actions(th.as_tensor(obs), th.zeros(4, 1))


def test_nan_observations_stop_the_rollout_before_a_nan_action_reaches_the_env():
    env = NaNObservationEnv(nan_from=5)
    model = PPO(GMMActorCriticPolicy, env, n_steps=32, batch_size=32, policy_kwargs=SMALL_NET, seed=0)
    with pytest.raises(ValueError, match=f"non-finite .*batch index 0 .*{CAUSES}"):
        model.learn(32)
    assert len(env.actions_seen) == 5  # every step up to the first NaN observation, none after
    assert np.isfinite(np.stack(env.actions_seen)).all()


@pytest.mark.parametrize("state_dependent_std", [False, True])
@pytest.mark.parametrize("extra_columns", [1, -1, 5])
def test_wrong_number_of_head_columns_is_a_clear_error(state_dependent_std, extra_columns):
    dist = GMMDistribution(2, n_components=3, state_dependent_std=state_dependent_std)
    n_params = 9 + (6 if state_dependent_std else 0)
    assert dist.n_params == n_params
    with pytest.raises(ValueError, match=f"action_params must have {n_params} columns .*proba_distribution_net"):
        bind(dist, th.zeros(4, n_params + extra_columns))


def test_malformed_proba_distribution_arguments_are_clear_errors():
    dist = GMMDistribution(2, n_components=3)
    with pytest.raises(ValueError, match="action_params must be the action head's output"):
        dist.proba_distribution(th.tensor(1.0), th.zeros(3, 2))
    with pytest.raises(ValueError, match="action_params must be the action head's output"):
        dist.proba_distribution(np.zeros((2, 9)), th.zeros(3, 2))
    with pytest.raises(ValueError, match="log_std is required when state_dependent_std=False"):
        dist.proba_distribution(th.zeros(2, 9))
    with pytest.raises(ValueError, match=r"log_std must have shape \(K, D\) = \(3, 2\).*got \(2,\)"):
        dist.proba_distribution(th.zeros(2, 9), th.zeros(2))
    state_dependent = GMMDistribution(2, n_components=3, state_dependent_std=True)
    with pytest.raises(ValueError, match="log_std must be None with state_dependent_std=True"):
        state_dependent.proba_distribution(th.zeros(2, 15), th.zeros(3, 2))


@pytest.mark.parametrize(
    "call",
    [
        lambda dist: dist.log_prob(th.zeros(1, 2)),
        lambda dist: dist.entropy(),
        lambda dist: dist.sample(),
        lambda dist: dist.mode(),
        lambda dist: dist.get_actions(deterministic=True),
        lambda dist: dist.distribution,
    ],
    ids=["log_prob", "entropy", "sample", "mode", "get_actions", "distribution"],
)
def test_use_before_binding_says_to_call_proba_distribution_first(call):
    with pytest.raises(RuntimeError, match=r"call proba_distribution\(action_params, log_std\) first"):
        call(GMMDistribution(2, n_components=3))
