"""rl-zoo3 integration: the shipped hyperparameter files train with GMM policies and enjoy reloads the model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from stable_baselines3 import PPO

from sb3_gmm import GMMActorCriticPolicy

pytest.importorskip("rl_zoo3")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "zoo_configs"
REQUIRED_ENVS = ("Pendulum-v1", "MountainCarContinuous-v0", "LunarLanderContinuous-v3", "BipedalWalker-v3")


def _zoo(module, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("algo", ["ppo", "a2c", "ppo_lstm", "trpo"])
def test_config_files_use_gmm_policies_without_gsde(algo):
    config = yaml.safe_load((CONFIG_DIR / f"{algo}.yml").read_text())
    assert set(REQUIRED_ENVS) <= set(config)
    expected = "sb3_gmm.GMMRecurrentActorCriticPolicy" if algo == "ppo_lstm" else "sb3_gmm.GMMActorCriticPolicy"
    for env_id, hyperparams in config.items():
        assert hyperparams["policy"] == expected, env_id
        assert "use_sde" not in hyperparams and "sde_sample_freq" not in hyperparams, env_id
        assert "n_components" in hyperparams["policy_kwargs"], env_id


def test_zoo_train_then_enjoy(tmp_path):
    config = str(CONFIG_DIR / "ppo.yml")
    _zoo(
        "rl_zoo3.train", "--algo", "ppo", "--env", "Pendulum-v1", "--conf-file", config, "-n", "2048",
        "-f", str(tmp_path / "logs"), "--eval-freq", "-1", "--seed", "0",
        "--hyperparams", "n_steps:256", "n_envs:2", "n_epochs:2", cwd=tmp_path,
    )  # fmt: skip
    models = list((tmp_path / "logs" / "ppo").glob("Pendulum-v1_*/Pendulum-v1.zip"))
    assert len(models) == 1
    model = PPO.load(models[0])
    assert isinstance(model.policy, GMMActorCriticPolicy)
    assert model.policy.n_components == 4  # from the config's policy_kwargs
    stdout = _zoo(
        "rl_zoo3.enjoy", "--algo", "ppo", "--env", "Pendulum-v1", "-f", str(tmp_path / "logs"), "--no-render",
        "-n", "400", "--exp-id", "0", cwd=tmp_path,
    )  # fmt: skip
    assert "Mean reward" in stdout or "Atari Episode Score" in stdout or "Episode Reward" in stdout, stdout[-500:]
