"""Save/load of GMM policies: every policy kwarg survives, deterministic actions are identical, training goes on."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO, SAC

from sb3_gmm import GMMActorCriticPolicy, GMMRecurrentActorCriticPolicy, GMMSACPolicy
from sb3_gmm.entropy import DEFAULT_METHOD

SMALL_NET = dict(net_arch=dict(pi=[16], vf=[16]))
# Every GMM option away from its default, so a forgotten one in _get_constructor_parameters shows up.
CUSTOM_GMM_KWARGS = dict(
    n_components=3,
    entropy_method="qmc",
    entropy_kwargs=dict(n_points=16),
    state_dependent_std=True,
    log_std_init=-0.5,
    log_std_min=-4.0,
    log_std_max=1.0,
    init_mean_spread=0.8,
    entropy_validate_args=False,
)
OBS = np.array([[0.3, -0.2, 0.7], [1.0, 0.0, -1.0], [-0.6, 0.8, 2.5]], dtype=np.float32)


def gmm_settings(policy: GMMActorCriticPolicy) -> dict:
    distribution = policy.action_dist
    return dict(
        n_components=policy.n_components,
        entropy_method=policy.entropy_method,
        entropy_kwargs=policy.entropy_kwargs,
        state_dependent_std=distribution.state_dependent_std,
        log_std_init=policy.log_std_init,
        log_std_min=distribution.log_std_min,
        log_std_max=distribution.log_std_max,
        init_mean_spread=policy.init_mean_spread,
        entropy_validate_args=distribution.validate_args,
    )


def test_ppo_load_in_a_fresh_process_gives_identical_actions_and_trains_on(tmp_path):
    model = PPO(
        GMMActorCriticPolicy,
        "Pendulum-v1",
        n_steps=64,
        batch_size=32,
        policy_kwargs=dict(**CUSTOM_GMM_KWARGS, **SMALL_NET),
        seed=0,
    )
    model.learn(128)
    path = tmp_path / "gmm_ppo.zip"
    model.save(path)
    np.save(tmp_path / "obs.npy", OBS)
    expected, _ = model.predict(OBS, deterministic=True)
    # A fresh interpreter: the policy class must be rebuilt from the saved policy_kwargs and the package import.
    script = textwrap.dedent(
        f"""
        import json
        import numpy as np
        import torch as th
        from stable_baselines3 import PPO
        model = PPO.load({str(path)!r}, env=None)
        actions, _ = model.predict(np.load({str(tmp_path / "obs.npy")!r}), deterministic=True)
        np.save({str(tmp_path / "actions.npy")!r}, actions)
        policy = model.policy
        settings = dict(
            n_components=policy.n_components, entropy_method=policy.entropy_method,
            entropy_kwargs=policy.entropy_kwargs, state_dependent_std=policy.action_dist.state_dependent_std,
            log_std_init=policy.log_std_init, log_std_min=policy.action_dist.log_std_min,
            log_std_max=policy.action_dist.log_std_max, init_mean_spread=policy.init_mean_spread,
            entropy_validate_args=policy.action_dist.validate_args,
        )
        print(json.dumps(dict(cls=type(policy).__name__, settings=settings)))
        import gymnasium as gym
        model.set_env(gym.make("Pendulum-v1"))
        before = policy.action_net.weight.detach().clone()
        model.learn(128, reset_num_timesteps=False)
        print(json.dumps(dict(changed=not th.equal(before, policy.action_net.weight), steps=model.num_timesteps)))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded, trained = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert loaded["cls"] == "GMMActorCriticPolicy"
    assert loaded["settings"] == json.loads(json.dumps(gmm_settings(model.policy)))
    np.testing.assert_array_equal(np.load(tmp_path / "actions.npy"), expected)
    assert trained == dict(changed=True, steps=model.num_timesteps + 128)


def test_policy_save_and_load_keeps_every_kwarg(tmp_path):
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", policy_kwargs=dict(**CUSTOM_GMM_KWARGS, **SMALL_NET), seed=0)
    path = tmp_path / "policy.pth"
    model.policy.save(path)
    loaded = GMMActorCriticPolicy.load(path)
    assert gmm_settings(loaded) == gmm_settings(model.policy)
    np.testing.assert_array_equal(
        loaded.predict(OBS, deterministic=True)[0], model.policy.predict(OBS, deterministic=True)[0]
    )
    obs = th.as_tensor(OBS)
    actions = th.randn(len(OBS), 1)
    assert th.allclose(loaded.evaluate_actions(obs, actions)[1], model.policy.evaluate_actions(obs, actions)[1])


def test_recurrent_policy_save_and_load(tmp_path):
    policy_kwargs = dict(n_components=2, lstm_hidden_size=8, n_lstm_layers=2, **SMALL_NET)
    model = RecurrentPPO(GMMRecurrentActorCriticPolicy, "Pendulum-v1", n_steps=32, batch_size=32, seed=0,
                         policy_kwargs=policy_kwargs)  # fmt: skip
    model.learn(64)
    path = tmp_path / "recurrent.zip"
    model.save(path)
    loaded = RecurrentPPO.load(path)
    expected, state = model.predict(OBS, deterministic=True)
    actions, loaded_state = loaded.predict(OBS, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_array_equal(loaded_state[0], state[0])
    # policy.save() alone must also restore the LSTM settings (RecurrentActorCriticPolicy does not save them).
    model.policy.save(tmp_path / "recurrent_policy.pth")
    policy = GMMRecurrentActorCriticPolicy.load(tmp_path / "recurrent_policy.pth")
    assert policy.lstm_actor.hidden_size == 8 and policy.lstm_actor.num_layers == 2 and policy.n_components == 2
    np.testing.assert_array_equal(policy.predict(OBS, deterministic=True)[0], expected)


def test_default_estimator_is_saved_by_name(tmp_path):
    """entropy_method=None is resolved when the policy is built, so a saved policy keeps today's default."""
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", policy_kwargs=dict(entropy_method=None, **SMALL_NET), seed=0)
    assert model.policy.entropy_method == DEFAULT_METHOD
    assert model.policy._get_constructor_parameters()["entropy_method"] == DEFAULT_METHOD
    model.policy.save(tmp_path / "policy.pth")
    saved = th.load(tmp_path / "policy.pth", weights_only=False)["data"]
    assert saved["entropy_method"] == DEFAULT_METHOD
    assert not {"use_sde", "full_std", "use_expln", "sde_net_arch"} & set(saved)


def test_policy_saved_with_entropy_method_none_still_loads(tmp_path, monkeypatch):
    """Files written before the name was resolved hold entropy_method=None; they load with the current default."""
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", policy_kwargs=SMALL_NET, seed=0)
    save_parameters = GMMActorCriticPolicy._get_constructor_parameters
    # Reproduce an old save: the constructor parameters as they were written before, with None.
    monkeypatch.setattr(
        GMMActorCriticPolicy,
        "_get_constructor_parameters",
        lambda self: {**save_parameters(self), "entropy_method": None},
    )
    model.policy.save(tmp_path / "old_policy.pth")
    monkeypatch.undo()
    assert th.load(tmp_path / "old_policy.pth", weights_only=False)["data"]["entropy_method"] is None
    loaded = GMMActorCriticPolicy.load(tmp_path / "old_policy.pth")
    assert loaded.entropy_method == DEFAULT_METHOD
    np.testing.assert_array_equal(
        loaded.predict(OBS, deterministic=True)[0], model.policy.predict(OBS, deterministic=True)[0]
    )
    obs, actions = th.as_tensor(OBS), th.randn(len(OBS), 1)
    assert th.equal(loaded.evaluate_actions(obs, actions)[2], model.policy.evaluate_actions(obs, actions)[2])


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_model_keeps_its_estimator_when_the_library_default_changes(algo, tmp_path, monkeypatch):
    """model.save() stores the user's policy_kwargs (entropy_method None here); the resolved name travels with the
    weights, so a reload after a change of the default still uses the estimator the model trained with."""
    import sb3_gmm.entropy

    if algo == "ppo":
        model = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=32, seed=0)
    else:
        model = SAC(GMMSACPolicy, "Pendulum-v1", learning_starts=10, seed=0)
    assert model.policy_kwargs.get("entropy_method") is None
    model.save(tmp_path / "model.zip")
    other_default = next(name for name in sorted(sb3_gmm.entropy.ESTIMATORS) if name != DEFAULT_METHOD)
    monkeypatch.setattr(sb3_gmm.entropy, "DEFAULT_METHOD", other_default)
    loaded = type(model).load(tmp_path / "model.zip")
    policy = loaded.policy
    distribution = policy.gmm_distribution if algo == "ppo" else policy.actor.action_dist
    assert distribution.entropy_method == DEFAULT_METHOD
    # a fresh model under the patched default does resolve to the other name: the patch took effect
    fresh = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=64, batch_size=32)
    assert fresh.policy.entropy_method == other_default
