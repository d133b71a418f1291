"""rl-zoo3 integration: the shipped hyperparameter files train with GMM policies and enjoy reloads the model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
import yaml
from stable_baselines3 import PPO

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.hyperparams import POLICY_NAMES, algorithm_kwargs, algorithms, hyperparams, tuned_env_ids

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


@pytest.mark.parametrize("algo", ["ppo", "a2c", "ppo_lstm", "trpo", "sac", "tqc"])
def test_config_files_use_gmm_policies_without_gsde(algo):
    config = yaml.safe_load((CONFIG_DIR / f"{algo}.yml").read_text())
    assert set(REQUIRED_ENVS) <= set(config)
    expected = {"ppo_lstm": "GMMRecurrentActorCriticPolicy", "sac": "GMMSACPolicy", "tqc": "GMMTQCPolicy"}.get(
        algo, "GMMActorCriticPolicy"
    )
    for env_id, entry in config.items():
        assert entry["policy"] == f"sb3_gmm.{expected}", env_id
        assert not {"use_sde", "sde_sample_freq", "use_sde_at_warmup"} & set(entry), env_id
        # gSDE-only policy options go with gSDE
        assert "n_components" in entry["policy_kwargs"] and "use_expln" not in entry["policy_kwargs"], env_id


@pytest.mark.parametrize("algo", algorithms())
def test_config_files_equal_the_hyperparams_module(algo):
    """zoo_configs/<algo>.yml and sb3_gmm.hyperparams hold the same settings, entry by entry and key by key."""
    config = yaml.safe_load((CONFIG_DIR / f"{algo}.yml").read_text())
    assert tuple(config) == tuned_env_ids(algo)
    for env_id, entry in config.items():
        assert entry.pop("policy") == f"sb3_gmm.{POLICY_NAMES[algo]}", env_id
        entry.pop("callback", None)
        # rl-zoo3 evaluates the string with torch.nn in scope as ``nn``
        entry["policy_kwargs"] = eval(entry["policy_kwargs"], {"nn": th.nn})
        assert entry == hyperparams(algo, env_id), env_id


def test_every_config_file_has_a_table():
    assert sorted(path.stem for path in CONFIG_DIR.glob("*.yml")) == sorted(algorithms())


def test_hyperparams_returns_fresh_copies_and_constructor_kwargs():
    entry = hyperparams("ppo", "Pendulum-v1")
    entry["policy_kwargs"]["n_components"] = 99
    assert hyperparams("ppo", "Pendulum-v1")["policy_kwargs"]["n_components"] == 4
    kwargs = algorithm_kwargs("a2c", "Pendulum-v1")
    assert not {"n_envs", "n_timesteps", "normalize"} & set(kwargs)
    # rl-zoo3's "lin_7e-4": the initial value times the remaining progress
    assert kwargs["learning_rate"](1.0) == pytest.approx(7e-4) and kwargs["learning_rate"](0.25) == pytest.approx(
        1.75e-4
    )
    with pytest.raises(ValueError, match="env_id='CartPole-v1'"):
        hyperparams("ppo", "CartPole-v1")
    with pytest.raises(ValueError, match="algo='dqn'"):
        hyperparams("dqn", "Pendulum-v1")


# tqc.yml repeats sac.yml's entries (checked above against sb3_gmm.hyperparams): its run is in the slow set
@pytest.mark.parametrize("algo", ["sac", pytest.param("tqc", marks=pytest.mark.slow)])
def test_zoo_trains_the_squashed_gmm_actor_from_the_shipped_config(tmp_path, algo):
    """A few hundred steps of rl-zoo3 with zoo_configs/<algo>.yml: the saved model has the config's GMM actor."""
    import sb3_gmm
    from sb3_gmm.cli import _algorithm

    _zoo(
        "rl_zoo3.train", "--algo", algo, "--env", "Pendulum-v1", "--conf-file", str(CONFIG_DIR / f"{algo}.yml"),
        "-n", "300", "-f", str(tmp_path / "logs"), "--eval-freq", "-1", "--seed", "0",
        "--hyperparams", "learning_starts:100", "batch_size:32",
        "policy_kwargs:dict(n_components=3, net_arch=[32, 32])", cwd=tmp_path,
    )  # fmt: skip
    models = list((tmp_path / "logs" / algo).glob("Pendulum-v1_*/Pendulum-v1.zip"))
    assert len(models) == 1
    model = _algorithm(algo).load(models[0])
    assert isinstance(model.policy, getattr(sb3_gmm, POLICY_NAMES[algo]))
    assert model.policy.actor.action_dist.n_components == 3 and model.num_timesteps == 300


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


def test_zoo_optimize_keeps_the_configs_gmm_options_and_searches_the_rest(tmp_path):
    """rl-zoo3 -optimize with --gym-packages sb3_gmm.zoo runs to its report; each trial model keeps the config's
    entropy_method and log_std_init, and has the n_components its trial sampled (the config leaves K out)."""
    import optuna
    from stable_baselines3 import A2C

    from sb3_gmm.zoo import SEARCHED_N_COMPONENTS

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _zoo(
        "rl_zoo3.train", "--algo", "a2c", "--env", "Pendulum-v1", "--conf-file", str(CONFIG_DIR / "a2c.yml"),
        "-optimize", "--gym-packages", "sb3_gmm.zoo", "--n-trials", "2", "-n", "256", "--n-evaluations", "1",
        "--eval-episodes", "1", "--sampler", "random", "--pruner", "none", "--no-optim-plots", "--seed", "1",
        "--storage", storage, "--study-name", "gmm", "-f", str(tmp_path / "logs"),
        "--optimization-log-path", str(tmp_path / "trials"),
        "--hyperparams", "n_envs:1", "policy_kwargs:dict(entropy_method='legendre', log_std_init=-0.5)",
        cwd=tmp_path,
    )  # fmt: skip
    assert list((tmp_path / "logs" / "a2c").glob("report_Pendulum-v1_*.csv"))  # pandas wrote the report
    trials = optuna.load_study(study_name="gmm", storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        assert trial.params["n_components"] in SEARCHED_N_COMPONENTS and "entropy_method" not in trial.params
        policy = A2C.load(tmp_path / "trials" / f"trial_{trial.number}" / "best_model.zip").policy
        assert policy.n_components == trial.params["n_components"]
        assert policy.entropy_method == "legendre" and policy.log_std_init == -0.5
        # rl-zoo3's own search space still applies on top
        assert (
            policy.net_arch
            == {"small": dict(pi=[64, 64], vf=[64, 64]), "medium": dict(pi=[256, 256], vf=[256, 256])}[
                trial.params["net_arch"]
            ]
        )


def test_zoo_sampler_outside_an_experiment_and_the_trial_converter():
    import optuna
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    import sb3_gmm.zoo  # noqa: F401  (registers the samplers)

    trial = optuna.create_study().ask()
    with pytest.raises(RuntimeError, match="examples/optuna_search.py"):
        HYPERPARAMS_SAMPLER["ppo"](trial, 1, 1, {})
    # --trial-id turns a finished trial's parameters back into hyperparameters: the GMM options go to policy_kwargs
    converted = HYPERPARAMS_CONVERTER["sac"](
        dict(one_minus_gamma=0.01, batch_size_pow=6, learning_rate=1e-3, train_freq=2, tau=0.01, net_arch="small",
             n_components=8, entropy_method="legendre")
    )  # fmt: skip
    assert converted["policy_kwargs"] == dict(net_arch=[64, 64], n_components=8, entropy_method="legendre")
    assert converted["batch_size"] == 64 and "n_components" not in converted
