"""Learning tests that take minutes: run with `python -m pytest -m slow`."""

import json
import statistics

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.cli import main
from sb3_gmm.hyperparams import BANDIT_ID, algorithm_kwargs, hyperparams


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


@pytest.mark.slow
def test_cli_reaches_the_bandit_optimum_with_the_shipped_settings(tmp_path):
    """`python -m sb3_gmm train --env sb3_gmm/TwoPeakBandit-v0` (the tuned zoo entry: K = 2, n_steps 128, lr 1e-3,
    20480 steps) ends near the optimum 5.0 (deterministic return >= 4.5; the valley gives < 0) for most seeds: the
    median over seeds 0-4. Not every seed: over seeds 0-11 it reached the optimum in 10 runs at commit 5f09f71 and
    in 9 with the compiled one-call paths, whose rounding changes each seed's trajectory; the others end between the
    valley and the lower peak."""
    returns = []
    for seed in range(5):
        out = tmp_path / f"s{seed}"
        main(["train", "--env", BANDIT_ID, "--seed", str(seed), "--output-dir", str(out), "--no-progress"])
        returns.append(json.loads((out / "summary.json").read_text())["mean_return"])
    assert statistics.median(returns) >= 4.5, returns
