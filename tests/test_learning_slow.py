"""Learning tests that take minutes: run with `python -m pytest -m slow`."""

import statistics

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_gmm import GMMActorCriticPolicy

# rl-zoo3's Pendulum-v1 PPO hyperparameters without gSDE.
ZOO_PENDULUM = dict(
    n_steps=1024, batch_size=64, gamma=0.9, gae_lambda=0.95, n_epochs=10, learning_rate=1e-3, clip_range=0.2
)  # fmt: skip


@pytest.mark.slow
def test_ppo_gmm_solves_pendulum_in_100k_steps():
    """Median over seeds 0-2 of the mean deterministic return (10 episodes) is at least -250."""
    returns = []
    for seed in range(3):
        env = make_vec_env("Pendulum-v1", n_envs=4, seed=seed)
        model = PPO(GMMActorCriticPolicy, env, seed=seed, policy_kwargs=dict(n_components=4), **ZOO_PENDULUM)
        model.learn(100_000)
        eval_env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed + 1000)
        mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        returns.append(mean_return)
    assert statistics.median(returns) >= -250, returns
