"""Learning tests that take minutes: run with `python -m pytest -m slow`."""

import statistics

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.hyperparams import algorithm_kwargs, hyperparams


@pytest.mark.slow
def test_ppo_gmm_solves_pendulum_in_100k_steps():
    """Median over seeds 0-2 of the mean deterministic return (10 episodes) is at least -250."""
    returns = []
    for seed in range(3):
        # rl-zoo3's Pendulum-v1 PPO settings without gSDE (K = 4)
        zoo = hyperparams("ppo", "Pendulum-v1")
        env = make_vec_env("Pendulum-v1", n_envs=zoo["n_envs"], seed=seed)
        model = PPO(GMMActorCriticPolicy, env, seed=seed, **algorithm_kwargs("ppo", "Pendulum-v1"))
        model.learn(zoo["n_timesteps"])
        eval_env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed + 1000)
        mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        returns.append(mean_return)
    assert statistics.median(returns) >= -250, returns
