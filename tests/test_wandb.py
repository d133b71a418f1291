"""rl-zoo3 with --track in W&B offline mode: the GMM diagnostics reach the offline run's files."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("wandb")
pytest.importorskip("rl_zoo3")

CONFIG = """
Pendulum-v1:
  policy: 'sb3_gmm.GMMActorCriticPolicy'
  n_envs: 2
  n_timesteps: 1024
  n_steps: 256
  batch_size: 64
  n_epochs: 2
  policy_kwargs: "dict(n_components=3, net_arch=dict(pi=[16], vf=[16]))"
  callback:
    - sb3_gmm.callbacks.GMMDiagnosticsCallback:
        plot_freq: 1
"""


def test_zoo_track_offline_logs_gmm_keys(tmp_path):
    conf = tmp_path / "conf.yml"
    conf.write_text(CONFIG)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "Pendulum-v1", "--conf-file", str(conf),
        "-f", str(tmp_path / "logs"), "--eval-freq", "-1", "--seed", "0", "--track",
        "--wandb-project-name", "sb3-gmm-test",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list((tmp_path / "wandb").glob("*"))
    content = runs[0].read_bytes()
    for key in ("gmm/entropy", "gmm/entropy_lower", "gmm/entropy_upper", "gmm/effective_components",
                "gmm/std_mean", "gmm/mean_separation", "train/std"):  # fmt: skip
        assert key.encode() in content, key
    assert list((tmp_path / "logs" / "ppo").glob("Pendulum-v1_*/Pendulum-v1.zip"))
