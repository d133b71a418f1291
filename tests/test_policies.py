"""GMM policies with stock PPO, A2C, TRPO and RecurrentPPO; shapes, reproducibility, bad kwargs."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TRPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import CombinedExtractor

from sb3_gmm import (
    GMMActorCriticCnnPolicy,
    GMMActorCriticPolicy,
    GMMDistribution,
    GMMMultiInputActorCriticPolicy,
    GMMRecurrentActorCriticPolicy,
)
from sb3_gmm.policies import GMMRecurrentMultiInputActorCriticPolicy

SMALL_NET = dict(net_arch=dict(pi=[16], vf=[16]))


class BoxActionEnv(gym.Env):
    """A tiny env with a Box action of any shape: reward is minus the squared distance of the action to 0.5."""

    def __init__(self, action_shape=(2, 2)):
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, action_shape, dtype=np.float32)
        self._steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._steps = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._steps += 1
        reward = -float(np.sum((np.asarray(action) - 0.5) ** 2))
        return self.observation_space.sample(), reward, False, self._steps >= 20, {}


@pytest.mark.parametrize("action_shape", [(1,), (3,), (2, 2)])
def test_action_shapes(action_shape):
    env = BoxActionEnv(action_shape)
    model = PPO(GMMActorCriticPolicy, env, n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=SMALL_NET, seed=0)
    model.learn(64)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == action_shape
    obs_tensor = th.as_tensor(np.stack([obs] * 5))
    dist = model.policy.get_distribution(obs_tensor)
    dim = int(np.prod(action_shape))
    assert isinstance(dist, GMMDistribution)
    assert dist.means.shape == (5, 4, dim) and dist.logits.shape == (5, 4)
    actions = dist.get_actions()
    assert actions.shape == (5, dim)
    assert dist.log_prob(actions).shape == (5,) and th.isfinite(dist.log_prob(actions)).all()
    assert dist.entropy().shape == (5,)


def test_evaluate_actions_agrees_with_get_distribution():
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=32, policy_kwargs=SMALL_NET, seed=0)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(7)]))
    actions = th.randn(7, 1)
    values, log_prob, entropy = model.policy.evaluate_actions(obs, actions)
    dist = model.policy.get_distribution(obs)
    assert th.allclose(log_prob, dist.log_prob(actions))
    assert th.allclose(entropy, dist.entropy())
    assert th.allclose(values, model.policy.predict_values(obs))


@pytest.mark.parametrize(
    "algo, policy, algo_kwargs",
    [
        (PPO, GMMActorCriticPolicy, dict(n_steps=128, batch_size=64, n_epochs=2, ent_coef=0.01)),
        (A2C, GMMActorCriticPolicy, dict(n_steps=16, ent_coef=0.01)),
        (TRPO, GMMActorCriticPolicy, dict(n_steps=128, batch_size=64)),
        (RecurrentPPO, GMMRecurrentActorCriticPolicy, dict(n_steps=64, batch_size=64, n_epochs=2, ent_coef=0.01)),
    ],
)
def test_algorithms_train(algo, policy, algo_kwargs):
    policy_kwargs = dict(n_components=3, **SMALL_NET)
    if policy is GMMRecurrentActorCriticPolicy:
        policy_kwargs["lstm_hidden_size"] = 16
    model = algo(policy, "Pendulum-v1", policy_kwargs=policy_kwargs, seed=0, **algo_kwargs)
    before = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    model.learn(384)
    after = dict(model.policy.named_parameters())
    # The actor itself moved (for TRPO: a line-search step through the registered KL was accepted).
    for name in ("action_net.weight", "log_std"):
        assert not th.equal(before[name], after[name]), f"training did not change {name}"
    assert all(th.isfinite(p).all() for p in after.values())
    assert model.policy.n_components == 3


def test_trpo_kl_path_is_the_registered_gmm_kl():
    model = TRPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=64, policy_kwargs=SMALL_NET, seed=0)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(4)]))
    dist = model.policy.get_distribution(obs)
    kl = th.distributions.kl_divergence(dist.distribution, dist.distribution)
    assert th.allclose(kl, th.zeros(4), atol=1e-6)


def test_same_seed_gives_identical_actions():
    def run():
        model = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=32, policy_kwargs=SMALL_NET, seed=3)
        model.learn(128)
        obs = np.stack([np.array([0.5, -0.5, 0.1], dtype=np.float32)] * 3)
        deterministic, _ = model.predict(obs, deterministic=True)
        th.manual_seed(7)
        stochastic, _ = model.predict(obs, deterministic=False)
        return deterministic, stochastic

    first, second = run(), run()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_single_component_policy_matches_mlp_policy():
    """With n_components=1 and copied weights, log_prob, entropy and mode equal SB3's MlpPolicy's."""
    env = gym.make("Pendulum-v1")
    schedule = lambda _: 1e-3  # noqa: E731
    gaussian = ActorCriticPolicy(env.observation_space, env.action_space, schedule, **SMALL_NET)
    mixture = GMMActorCriticPolicy(env.observation_space, env.action_space, schedule, n_components=1, **SMALL_NET)
    mixture.mlp_extractor.load_state_dict(gaussian.mlp_extractor.state_dict())
    mixture.value_net.load_state_dict(gaussian.value_net.state_dict())
    with th.no_grad():
        mixture.action_net.weight[1:] = gaussian.action_net.weight
        mixture.action_net.bias[1:] = gaussian.action_net.bias
        mixture.log_std.copy_(gaussian.log_std.unsqueeze(0) + 0.1)
        gaussian.log_std += 0.1
    obs = th.as_tensor(np.stack([env.observation_space.sample() for _ in range(6)]))
    actions = th.randn(6, 1)
    _, log_prob_g, entropy_g = gaussian.evaluate_actions(obs, actions)
    _, log_prob_m, entropy_m = mixture.evaluate_actions(obs, actions)
    assert th.allclose(log_prob_g, log_prob_m, atol=1e-5)
    assert th.allclose(entropy_g, entropy_m, atol=1e-5)
    assert th.allclose(gaussian.get_distribution(obs).mode(), mixture.get_distribution(obs).mode(), atol=1e-6)
    # The rollout's forward: the same seed gives the same draws (one normal per action, no component noise) and
    # log densities, on whichever path the mixture takes (compiled where a C compiler is present).
    with th.no_grad():
        th.manual_seed(3)
        actions_g, values_g, log_prob_g = gaussian(obs)
        th.manual_seed(3)
        actions_m, values_m, log_prob_m = mixture(obs)
    assert th.allclose(actions_g, actions_m, atol=1e-6)
    assert th.allclose(values_g, values_m) and th.allclose(log_prob_g, log_prob_m, atol=1e-5)


def test_cnn_and_multi_input_policies():
    image_env = BoxActionEnv((2,))
    image_env.observation_space = spaces.Box(0, 255, (36, 36, 1), dtype=np.uint8)
    model = PPO(GMMActorCriticCnnPolicy, image_env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(32)
    assert isinstance(model.policy.action_dist, GMMDistribution)
    assert model.predict(image_env.observation_space.sample(), deterministic=True)[0].shape == (2,)

    # The MultiInput name and the plain policy alike: a Dict space gets SB3's CombinedExtractor by default.
    for policy in (GMMMultiInputActorCriticPolicy, GMMActorCriticPolicy):
        dict_env = DictObservationEnv()
        model = PPO(policy, dict_env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
        model.learn(32)
        assert isinstance(model.policy.features_extractor, CombinedExtractor)
        assert model.predict(dict_env.observation_space.sample(), deterministic=True)[0].shape == (2,)


class DictObservationEnv(BoxActionEnv):
    """BoxActionEnv with a Dict observation whose parts come from different Box spaces."""

    def __init__(self):
        super().__init__((2,))
        self.observation_space = spaces.Dict(
            {"a": spaces.Box(-1, 1, (3,), dtype=np.float32), "b": spaces.Box(-1, 1, (2,), dtype=np.float32)}
        )


@pytest.mark.parametrize("policy", [GMMRecurrentActorCriticPolicy, GMMRecurrentMultiInputActorCriticPolicy])
def test_recurrent_policy_on_dict_observations_learns_and_predicts(policy):
    env = DictObservationEnv()
    policy_kwargs = dict(n_components=2, lstm_hidden_size=16, **SMALL_NET)
    model = RecurrentPPO(policy, env, n_steps=64, batch_size=64, n_epochs=2, policy_kwargs=policy_kwargs, seed=0)
    assert isinstance(model.policy.features_extractor, CombinedExtractor)
    before = model.policy.action_net.weight.detach().clone()
    model.learn(256)
    assert not th.equal(before, model.policy.action_net.weight)
    obs = {key: np.stack([space.sample() for _ in range(3)]) for key, space in env.observation_space.spaces.items()}
    actions, _ = model.predict(obs, episode_start=np.ones(3, dtype=bool), deterministic=True)
    assert actions.shape == (3, 2) and np.isfinite(actions).all()
    again, _ = model.predict(obs, episode_start=np.ones(3, dtype=bool), deterministic=True)
    np.testing.assert_array_equal(actions, again)


class CountingGMMDistribution(GMMDistribution):
    """A GMMDistribution whose entropy is unknown (SB3 then uses -log pi), counting its entropy calls."""

    entropy_calls = 0

    def entropy(self) -> None:  # type: ignore[override]
        type(self).entropy_calls += 1
        return None


class CountingGMMPolicy(GMMActorCriticPolicy):
    distribution_class = CountingGMMDistribution


def test_distribution_class_hook_builds_the_policys_distribution():
    CountingGMMDistribution.entropy_calls = 0
    policy_kwargs = dict(n_components=3, entropy_method="pairwise_bhattacharyya", **SMALL_NET)
    model = PPO(
        CountingGMMPolicy, "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=policy_kwargs, seed=0
    )
    distribution = model.policy.action_dist
    assert type(distribution) is CountingGMMDistribution and model.policy.gmm_distribution is distribution
    assert distribution.n_components == 3 and distribution.entropy_method == "pairwise_bhattacharyya"
    before = model.policy.action_net.weight.detach().clone()
    model.learn(128)
    # Two iterations of two epochs of two minibatches: PPO asked the custom class for the entropy every time.
    assert CountingGMMDistribution.entropy_calls == 8
    assert not th.equal(before, model.policy.action_net.weight)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(4)]))
    assert type(model.policy.get_distribution(obs)) is CountingGMMDistribution
    assert GMMActorCriticPolicy.distribution_class is GMMDistribution


def test_initial_components_are_spread():
    """SB3 inits the head with gain 0.01 and zero bias; the bias then spreads the K means over [-0.5, 0.5]."""
    env = BoxActionEnv((2, 2))
    model = PPO(GMMActorCriticPolicy, env, policy_kwargs=dict(n_components=4, init_mean_spread=0.5), seed=0)
    means = model.policy.get_distribution(th.as_tensor(env.observation_space.sample()[None])).means[0]  # [K, D]
    levels = th.linspace(-0.5, 0.5, 4)
    for dim in range(4):
        assert th.allclose(means[:, dim].sort().values, levels, atol=0.05)
    assert not th.allclose(means[:, 0], means[:, 1], atol=0.05)  # a random order per dimension (seed 0)
    weights = th.softmax(model.policy.get_distribution(th.zeros(1, 3)).logits, -1)
    assert th.allclose(weights, th.full_like(weights, 0.25), atol=0.01)


def test_std_parameter_is_named_log_std_and_logged(tmp_path):
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=SMALL_NET)
    assert model.policy.log_std.shape == (4, 1)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(128)  # train/ keys are written by the second iteration's dump
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert "train/std" in header and "train/entropy_loss" in header


@pytest.mark.parametrize(
    "policy_kwargs, match",
    [
        (dict(n_components=0), "n_components"),
        (dict(entropy_method="not_a_method"), "entropy_method"),
        (dict(entropy_kwargs=dict(n_points=-3)), "entropy_kwargs.*n_points"),
        (dict(entropy_kwargs=dict(n_pionts=32)), "entropy_kwargs.*n_pionts"),
        (dict(log_std_min=1.0, log_std_max=0.0), "log_std_min"),
        (dict(init_mean_spread=-1.0), "init_mean_spread"),
    ],
)
def test_bad_policy_kwargs_raise(policy_kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPO(GMMActorCriticPolicy, "Pendulum-v1", policy_kwargs=policy_kwargs)


def test_use_sde_and_discrete_actions_are_rejected():
    with pytest.raises(ValueError, match="use_sde"):
        PPO(GMMActorCriticPolicy, "Pendulum-v1", use_sde=True)
    with pytest.raises(ValueError, match="action_space.*Box"):
        PPO(GMMActorCriticPolicy, "CartPole-v1")
    with pytest.raises(ValueError, match="action_space.*Box"):
        A2C(GMMActorCriticPolicy, "CartPole-v1")


def test_state_dependent_std_trains():
    model = PPO(
        GMMActorCriticPolicy,
        "Pendulum-v1",
        n_steps=64,
        batch_size=32,
        policy_kwargs=dict(state_dependent_std=True, log_std_init=-0.5, **SMALL_NET),
        seed=0,
    )
    assert not hasattr(model.policy, "log_std")
    stds = model.policy.get_distribution(th.zeros(2, 3)).stds
    assert th.allclose(stds, th.full_like(stds, np.exp(-0.5)), atol=0.05)
    model.learn(128)
