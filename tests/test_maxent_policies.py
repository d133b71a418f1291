"""GMM actors for stock SAC, TQC and CrossQ: K = 1 is SB3's actor, gradients reach the mixture, training, save/load."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TQC, CrossQ
from stable_baselines3 import SAC

import sb3_gmm
from sb3_gmm.entropy import validation
from sb3_gmm.maxent import (
    GMMCrossQPolicy,
    GMMSACCnnPolicy,
    GMMSACMultiInputPolicy,
    GMMSACPolicy,
    GMMTQCCnnPolicy,
    GMMTQCMultiInputPolicy,
    GMMTQCPolicy,
    SquashedGMMDistribution,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(net_arch=[32, 32])


@pytest.mark.parametrize(("algo", "gmm_policy"), [(SAC, GMMSACPolicy), (TQC, GMMTQCPolicy)])
def test_one_component_reproduces_sb3_actor(algo, gmm_policy):
    """Same seed: same parameters, same sampled actions, same log pi (up to SB3's 1e-6), same gradients."""
    reference = algo("MlpPolicy", "Pendulum-v1", seed=3, policy_kwargs=SMALL)
    mixture = algo(gmm_policy, "Pendulum-v1", seed=3, policy_kwargs=dict(n_components=1, **SMALL))
    reference_state, mixture_state = reference.policy.state_dict(), mixture.policy.state_dict()
    # the mixture's state also carries its estimator's name (sb3_gmm/estimator_state.py); every tensor is SB3's
    assert mixture_state.pop("actor._extra_state") == {"entropy_method": mixture.actor.action_dist.entropy_method}
    assert list(reference_state) == list(mixture_state)
    assert all(th.equal(reference_state[key], mixture_state[key]) for key in reference_state)

    observations = th.as_tensor(np.stack([reference.observation_space.sample() for _ in range(32)]))
    results = []
    for model in (reference, mixture):
        th.manual_seed(7)
        actions, log_prob = model.actor.action_log_prob(observations)
        # The loss's gradient sees SB3's epsilon in log(1 - a^2 + 1e-6) (below): near |a| = 1 its derivative alone
        # exceeds the tolerance (1 draw in ~60 of the unseeded observations did). The reference's loss gets the
        # exact term back, so the two gradients must agree up to rounding only.
        exact_log_prob = log_prob
        if model is reference:
            exact_log_prob = log_prob + th.log1p(1e-6 / (1.0 - actions.square())).sum(-1)
        loss = (0.2 * exact_log_prob - (actions - 0.1).square().sum(-1)).mean()
        gradients = th.autograd.grad(loss, list(model.actor.parameters()))
        results.append((actions, log_prob, gradients))
    (actions, log_prob, gradients), (mixture_actions, mixture_log_prob, mixture_gradients) = results
    assert th.equal(actions, mixture_actions)
    # SB3 subtracts log(1 - a^2 + 1e-6) where the mixture uses the exact log(1 - a^2): the gap is that epsilon's.
    # SB3 also forms 1 - a^2 in float32 from the rounded a: a relative error of a few eps / (1 - a^2).
    one_minus_squares = 1.0 - actions.double().square()
    epsilon_gap = th.log1p(1e-6 / one_minus_squares).sum(-1)
    rounding = 2e-6 + (4 * th.finfo(th.float32).eps / one_minus_squares).sum(-1)
    assert ((mixture_log_prob.double() - log_prob.double() - epsilon_gap).abs() <= rounding).all()
    for gradient, mixture_gradient in zip(gradients, mixture_gradients):
        th.testing.assert_close(mixture_gradient, gradient, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("log_pi", ["sample", "estimate"])
def test_gradients_reach_every_mixture_parameter(log_pi):
    model = SAC(GMMSACPolicy, "Pendulum-v1", seed=0, policy_kwargs=dict(n_components=3, log_pi=log_pi, **SMALL))
    actor = model.actor
    observations = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(64)]))
    actions, log_prob = actor.action_log_prob(observations)
    assert actions.shape == (64, 1) and log_prob.shape == (64,)
    if log_pi == "estimate":
        th.testing.assert_close(log_prob, -actor.get_distribution(observations).entropy())
    # A Q-like function of the action alone: the logits learn only through the sampled action's gradient.
    q_values = -(actions - 0.7).square().sum(-1)
    gradients = th.autograd.grad(-q_values.mean(), [actor.mixture_logits.weight, actor.mu.weight, actor.log_std.weight])
    for gradient in gradients:
        assert th.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_distribution_attributes_for_diagnostics():
    model = TQC(GMMTQCPolicy, "Pendulum-v1", seed=0, policy_kwargs=dict(n_components=4, **SMALL))
    observations = th.zeros(5, 3)
    dist = model.actor.get_distribution(observations)
    assert isinstance(dist, SquashedGMMDistribution) and dist.squashed
    assert dist.logits.shape == (5, 4) and dist.means.shape == (5, 4, 1) and dist.stds.shape == (5, 4, 1)
    assert model.policy.n_components == 4 and model.policy.log_pi == "sample"
    # The initial component means are spread (pre-squash levels -0.5 .. 0.5 in the head's bias).
    assert th.allclose(model.actor.mu.bias.sort().values, th.linspace(-0.5, 0.5, 4))
    deterministic = model.actor(observations, deterministic=True)
    assert deterministic.shape == (5, 1) and (deterministic.abs() < 1).all()


@pytest.mark.parametrize(
    ("algo", "policy", "log_pi"),
    [(SAC, GMMSACPolicy, "sample"), (TQC, GMMTQCPolicy, "estimate"), (CrossQ, GMMCrossQPolicy, "sample")],
)
def test_stock_algorithms_train_the_mixture(algo, policy, log_pi):
    net_arch = dict(pi=[32, 32], qf=[64, 64]) if algo is CrossQ else [32, 32]
    model = algo(
        policy,
        "Pendulum-v1",
        seed=0,
        learning_starts=50,
        batch_size=32,
        policy_kwargs=dict(n_components=4, log_pi=log_pi, net_arch=net_arch),
    )
    logits_before = model.actor.mixture_logits.weight.detach().clone()
    model.learn(150)
    assert not th.equal(model.actor.mixture_logits.weight, logits_before)
    assert all(th.isfinite(parameter).all() for parameter in model.policy.parameters())
    actions, _ = model.predict(np.zeros((2, 3), dtype=np.float32), deterministic=False)
    assert actions.shape == (2, 1) and (np.abs(actions) <= 2.0).all()


@pytest.mark.parametrize("policy", [GMMSACPolicy, GMMTQCPolicy])
def test_use_sde_is_rejected(policy):
    algo = SAC if policy is GMMSACPolicy else TQC
    with pytest.raises(ValueError, match="use_sde"):
        algo(policy, "Pendulum-v1", use_sde=True)


def test_bad_gmm_kwargs_raise():
    with pytest.raises(ValueError, match="log_pi"):
        SAC(GMMSACPolicy, "Pendulum-v1", policy_kwargs=dict(log_pi="exact"))
    with pytest.raises(ValueError, match="init_mean_spread"):
        SAC(GMMSACPolicy, "Pendulum-v1", policy_kwargs=dict(init_mean_spread=-1.0))
    with pytest.raises(ValueError, match="entropy_method"):
        SAC(GMMSACPolicy, "Pendulum-v1", policy_kwargs=dict(entropy_method="nope"))


@pytest.mark.parametrize(
    ("policy", "observation_space"),
    [
        (GMMSACCnnPolicy, spaces.Box(0, 255, (3, 40, 40), np.uint8)),
        (GMMTQCCnnPolicy, spaces.Box(0, 255, (3, 40, 40), np.uint8)),
        (GMMSACMultiInputPolicy, spaces.Dict(a=spaces.Box(-1, 1, (3,)), b=spaces.Box(-1, 1, (2,)))),
        (GMMTQCMultiInputPolicy, spaces.Dict(a=spaces.Box(-1, 1, (3,)), b=spaces.Box(-1, 1, (2,)))),
    ],
)
def test_cnn_and_multi_input_variants(policy, observation_space):
    action_space = spaces.Box(-1.0, 1.0, (2, 2))
    model = policy(observation_space, action_space, lambda _: 1e-3, n_components=3)
    action, _ = model.predict(observation_space.sample(), deterministic=True)
    assert action.shape == (2, 2)
    assert model.actor.action_dist.means.shape == (1, 3, 4)


def test_exports_from_the_package():
    for name in (
        "GMMSACPolicy",
        "GMMSACCnnPolicy",
        "GMMSACMultiInputPolicy",
        "GMMTQCPolicy",
        "GMMTQCCnnPolicy",
        "GMMTQCMultiInputPolicy",
        "GMMCrossQPolicy",
        "SquashedGMMDistribution",
    ):
        assert getattr(sb3_gmm, name) is getattr(sb3_gmm.maxent, name)


LOAD_AND_ACT = """
import json, sys
import numpy as np, torch as th
from stable_baselines3 import SAC
from sb3_contrib import TQC
th.set_num_threads(1)  # as in the tests: another thread count may sum in another order
observations = np.load(sys.argv[1])
results = {}
for name, algo in (("SAC", SAC), ("TQC", TQC)):
    model = algo.load(sys.argv[2 + len(results)], device="cpu")
    th.manual_seed(0)
    stochastic, _ = model.predict(observations, deterministic=False)
    deterministic, _ = model.predict(observations, deterministic=True)
    kwargs = {key: model.policy_kwargs[key] for key in ("n_components", "log_pi")}
    results[name] = dict(stochastic=stochastic.tolist(), deterministic=deterministic.tolist(), kwargs=kwargs)
print(json.dumps(results))
"""


def test_save_and_load_in_a_fresh_process_gives_identical_actions(tmp_path):
    observations_path = tmp_path / "observations.npy"
    expected, paths = {}, []
    for algo, policy in ((SAC, GMMSACPolicy), (TQC, GMMTQCPolicy)):
        model = algo(
            policy,
            "Pendulum-v1",
            seed=1,
            learning_starts=20,
            batch_size=16,
            policy_kwargs=dict(n_components=3, log_pi="estimate", **SMALL),
        )
        model.learn(40)
        paths.append(tmp_path / f"{algo.__name__}.zip")
        model.save(paths[-1])
        if not expected:
            observations = np.stack([model.observation_space.sample() for _ in range(6)])
            np.save(observations_path, observations)
        th.manual_seed(0)
        stochastic, _ = model.predict(observations, deterministic=False)
        deterministic, _ = model.predict(observations, deterministic=True)
        expected[algo.__name__] = (stochastic, deterministic)
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_AND_ACT, str(observations_path), *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    for name, (stochastic, deterministic) in expected.items():
        assert np.array_equal(np.array(loaded[name]["stochastic"], dtype=np.float32), stochastic)
        assert np.array_equal(np.array(loaded[name]["deterministic"], dtype=np.float32), deterministic)
        assert loaded[name]["kwargs"] == dict(n_components=3, log_pi="estimate")


def test_nan_observation_is_named_before_an_action_reaches_the_env():
    """The squashed mixture checks its parameters at bind time, so predict() raises instead of returning NaN."""
    model = SAC(GMMSACPolicy, "Pendulum-v1", seed=0, policy_kwargs=dict(n_components=3, **SMALL))
    observations = np.zeros((4, 3), dtype=np.float32)
    observations[2, 1] = np.nan
    for deterministic in (False, True):
        with pytest.raises(
            ValueError, match=r"non-finite \(NaN or inf\) at batch index 2 \(logits, means, log stds; 1 of 4"
        ):
            model.predict(observations, deterministic=deterministic)
    with pytest.raises(ValueError, match="batch index 2"):
        model.actor.action_log_prob(th.as_tensor(observations))
    with validation(False):  # switched off, as the library-wide validation switch promises
        actions, _ = model.predict(observations)
    assert np.isnan(actions[2]).all() and np.isfinite(np.delete(actions, 2, axis=0)).all()
