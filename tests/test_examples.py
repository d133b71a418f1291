"""Every example runs with tiny settings and produces what it promises."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
from stable_baselines3 import PPO

from sb3_gmm import GMMActorCriticPolicy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script, *args, cwd, env=None):
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart_saves_a_gmm_model(tmp_path):
    stdout = _run("quickstart.py", "--timesteps", "256", "--save-path", str(tmp_path / "m.zip"), cwd=tmp_path)
    assert "deterministic action" in stdout
    model = PPO.load(tmp_path / "m.zip")
    assert isinstance(model.policy, GMMActorCriticPolicy) and model.policy.n_components == 4


def test_wandb_logging_offline_writes_gmm_keys(tmp_path):
    env = dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true")
    _run("wandb_logging.py", "--timesteps", "2048", "--n-components", "2", cwd=tmp_path, env=env)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    content = runs[0].read_bytes()
    for key in (b"gmm/entropy", b"gmm/effective_components", b"gmm/action_density", b"train/std"):
        assert key in content, key


def test_optuna_search_fills_an_rdb_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    stdout = _run(
        "optuna_search.py", "--storage", storage, "--study-name", "t", "--n-trials", "2", "--timesteps", "256",
        cwd=tmp_path,
    )  # fmt: skip
    assert "best return" in stdout
    study = optuna.load_study(study_name="t", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        assert set(trial.params) == {"n_components", "entropy_method", "ent_coef"}
    # A second process continues the same study (what several machines sharing one database do).
    _run("optuna_search.py", "--storage", storage, "--study-name", "t", "--n-trials", "1", "--timesteps", "256",
         cwd=tmp_path)  # fmt: skip
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3
