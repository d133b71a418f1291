"""The main job: `python -m sb3_gmm train` saves a reloadable model, a plot and a summary; `plot` re-plots."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image
from stable_baselines3 import PPO

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.cli import build_parser


def _run(*args, cwd):
    result = subprocess.run(
        [sys.executable, "-m", "sb3_gmm", *args], capture_output=True, text=True, timeout=300, cwd=cwd
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


def test_help_documents_the_options():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--env", "--algo", "--total-timesteps", "--n-components", "--entropy-method", "--ent-coef",
                   "--seed", "--output-dir", "--wandb", "--device"):  # fmt: skip
        assert option in help_text
