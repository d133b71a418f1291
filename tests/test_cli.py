"""The main job: `python -m sb3_gmm train` saves a reloadable model, a plot and a summary; `plot` re-plots."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from stable_baselines3 import A2C, PPO

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.cli import build_parser, main, resolve_settings
from sb3_gmm.entropy import DEFAULT_METHOD
from sb3_gmm.hyperparams import algorithm_kwargs, hyperparams


def _run(*args, cwd):
    # one thread: torch's default of one per core thrashes when pytest-xdist runs tests side by side
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "sb3_gmm", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=environment
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_train_saves_model_plot_and_summary(tmp_path):
    out = tmp_path / "run"
    stdout = _run(
        "train", "--total-timesteps", "2048", "--n-components", "3", "--output-dir", str(out), "--no-progress",
        "--eval-episodes", "1", cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_components"] == 3 and summary["env"] == "Pendulum-v1"
    assert np.isfinite(summary["mean_return"])
    assert f"{summary['mean_return']:.1f}" in stdout
    image = Image.open(out / "action_density.png")
    assert image.size[0] > 100 and image.size[1] > 100
    model = PPO.load(out / "model.zip")
    assert isinstance(model.policy, GMMActorCriticPolicy) and model.policy.n_components == 3
    # the estimator is saved by name, so a later change of the library default cannot switch it on load
    assert summary["entropy_method"] == DEFAULT_METHOD
    assert model.policy_kwargs["entropy_method"] == DEFAULT_METHOD
    obs = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    again = PPO.load(out / "model.zip")
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])

    plot_path = tmp_path / "replot.png"
    _run("plot", str(out / "model.zip"), "--output", str(plot_path), cwd=tmp_path)
    assert Image.open(plot_path).size == image.size


def test_train_on_a_builtin_env_with_another_algorithm(tmp_path):
    out = tmp_path / "bandit"
    _run(
        "train", "--env", "sb3_gmm/TwoPeakBandit-v0", "--algo", "a2c", "--total-timesteps", "400",
        "--entropy-method", "pairwise_bhattacharyya", "--output-dir", str(out), "--no-progress",
        "--eval-episodes", "1", cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "a2c" and summary["entropy_method"] == "pairwise_bhattacharyya"
    assert (out / "model.zip").stat().st_size > 0
    # plot reads env and algo from summary.json: no Pendulum default, no observation-shape error
    _run("plot", str(out / "model.zip"), "--output", str(tmp_path / "bandit.png"), cwd=tmp_path)
    assert Image.open(tmp_path / "bandit.png").size[0] > 100


def _parse_train(*options):
    return build_parser().parse_args(["train", *options])


def test_tuned_settings_come_from_the_hyperparams_module_and_options_override_them():
    bandit = "sb3_gmm/TwoPeakBandit-v0"
    settings = resolve_settings(_parse_train("--env", bandit))
    entry, tuned_kwargs = hyperparams("ppo", bandit), algorithm_kwargs("ppo", bandit)
    assert settings["tuned"] and settings["n_envs"] == entry["n_envs"]
    assert settings["total_timesteps"] == entry["n_timesteps"]
    for key in ("n_steps", "learning_rate", "batch_size", "ent_coef", "gamma"):
        assert settings["algo_kwargs"][key] == tuned_kwargs[key], key
    assert settings["algo_kwargs"]["policy_kwargs"]["n_components"] == entry["policy_kwargs"]["n_components"]
    overridden = resolve_settings(
        _parse_train(
            "--env", bandit, "--n-components", "3", "--ent-coef", "0", "--n-envs", "2", "--total-timesteps", "7"
        )
    )
    assert overridden["algo_kwargs"]["policy_kwargs"]["n_components"] == 3
    assert overridden["algo_kwargs"]["ent_coef"] == 0.0
    assert (overridden["n_envs"], overridden["total_timesteps"]) == (2, 7)
    untuned = resolve_settings(_parse_train("--env", bandit, "--algo", "a2c"))
    assert not untuned["tuned"] and untuned["algo_kwargs"] == {
        "policy_kwargs": dict(n_components=4, entropy_method=DEFAULT_METHOD)
    }
    assert (untuned["n_envs"], untuned["total_timesteps"]) == (4, 100_000)


def test_an_entropy_bonus_given_on_the_command_line_goes_through_the_estimate():
    """Pendulum's tuned PPO entry has no bonus, so it skips the estimate (entropy_in_loss=False); --ent-coef 0.01 must
    bring the estimate back into the loss (else PPO would use -log_prob), and --ent-coef 0 skips it anywhere."""
    assert hyperparams("ppo", "Pendulum-v1")["policy_kwargs"]["entropy_in_loss"] is False
    with_bonus = resolve_settings(_parse_train("--env", "Pendulum-v1", "--ent-coef", "0.01"))
    assert with_bonus["algo_kwargs"]["ent_coef"] == 0.01
    assert "entropy_in_loss" not in with_bonus["algo_kwargs"]["policy_kwargs"]
    bandit = "sb3_gmm/TwoPeakBandit-v0"
    assert hyperparams("ppo", bandit)["ent_coef"] > 0
    without = resolve_settings(_parse_train("--env", bandit, "--ent-coef", "0"))
    assert without["algo_kwargs"]["policy_kwargs"]["entropy_in_loss"] is False
    sac = resolve_settings(_parse_train("--env", "Pendulum-v1", "--algo", "sac", "--ent-coef", "0.1"))
    assert "entropy_in_loss" not in sac["algo_kwargs"]["policy_kwargs"]  # SAC has no entropy bonus term of this kind


def test_normalized_tuned_run_saves_and_uses_its_normalizer(tmp_path):
    """A2C on MountainCarContinuous is tuned with `normalize: true`: the run saves the statistics and plot uses them."""
    out = tmp_path / "mc"
    main(["train", "--env", "MountainCarContinuous-v0", "--algo", "a2c", "--total-timesteps", "400", "--output-dir",
          str(out), "--no-progress", "--eval-episodes", "1"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vecnormalize"] and (out / "vecnormalize.pkl").stat().st_size > 0
    assert summary["hyperparams"]["normalize"] is True and summary["n_envs"] == 4
    assert isinstance(A2C.load(out / "model.zip").policy, GMMActorCriticPolicy)
    main(["plot", str(out / "model.zip"), "--output", str(tmp_path / "mc.png")])
    assert Image.open(tmp_path / "mc.png").size[0] > 100


def test_failed_train_leaves_no_run_folder(tmp_path, monkeypatch):
    out = tmp_path / "bad-option"
    with pytest.raises(ValueError, match="entropy_method"):
        main(["train", "--entropy-method", "no_such_estimator", "--output-dir", str(out), "--no-progress"])
    assert not out.exists()

    def crash(*args, **kwargs):
        raise RuntimeError("diverged")

    monkeypatch.setattr(PPO, "learn", crash)
    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="diverged"):
        main(["train", "--output-dir", str(out), "--no-progress"])
    assert not out.exists()


def test_bad_options_are_refused_before_anything_runs(tmp_path, capsys):
    for options, message in (
        (["train", "--algo", "trpo", "--ent-coef", "0.01"], "TRPO has no entropy bonus"),
        (["train", "--n-components", "0"], "--n-components must be >= 1"),
        (["plot", str(tmp_path / "elsewhere.zip")], "pass --env and --algo"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(options)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_help_documents_the_options_and_their_defaults():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--env", "--algo", "--total-timesteps", "--n-components", "--entropy-method", "--ent-coef",
                   "--seed", "--output-dir", "--wandb", "--device"):  # fmt: skip
        assert option in help_text
    flat = " ".join(help_text.split())
    defaults = (
        "Pendulum-v1",
        "ppo",
        "0",
        "tuned, else 100000",
        "tuned, else 4",
        "cpu",
        "runs/<env>-<algo>-<timestamp>",
    )
    for default in defaults:
        assert f"(default: {default})" in flat, default
    assert "(default: None)" not in flat


@pytest.mark.parametrize("algo", ["sac", "tqc"])
def test_train_sac_and_tqc_with_the_squashed_gmm_actor(tmp_path, algo):
    """`train --algo sac|tqc` uses zoo_configs/<algo>.yml's Pendulum entry (one env, lr 1e-3) and the GMM actor."""
    import sb3_gmm
    from sb3_gmm.cli import _algorithm
    from sb3_gmm.hyperparams import POLICY_NAMES

    out = tmp_path / algo
    main(["train", "--algo", algo, "--total-timesteps", "150", "--n-components", "2", "--output-dir", str(out),
          "--no-progress", "--eval-episodes", "1"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tuned_settings"] and summary["n_envs"] == 1 and summary["n_components"] == 2
    model = _algorithm(algo).load(out / "model.zip")
    assert isinstance(model.policy, getattr(sb3_gmm, POLICY_NAMES[algo]))
    assert model.learning_rate == hyperparams(algo, "Pendulum-v1")["learning_rate"] and model.num_timesteps == 150
    assert model.policy.actor.action_dist.n_components == 2
    assert np.isfinite(summary["mean_return"]) and Image.open(out / "action_density.png").size[0] > 100
