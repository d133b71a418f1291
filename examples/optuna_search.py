"""Hyperparameter search over n_components, entropy_method and ent_coef with Optuna.

    python examples/optuna_search.py --n-trials 20 --timesteps 50000
    python examples/optuna_search.py --storage postgresql://user@host/db --study-name gmm   # on several machines

rl-zoo's own ``-optimize`` searches these options too with ``--gym-packages sb3_gmm.zoo`` (docs/usage.md); this
script searches them without rl-zoo3, over the same choices (``sb3_gmm.hyperparams.SEARCHED_*``). The storage is
an Optuna RDB URL (any SQLAlchemy URL): with a shared database, several machines running this script with the same
``--study-name`` fill one study (tests/test_optuna_postgres.py runs two workers on one PostgreSQL server).
"""

import argparse
import time

import optuna
import sqlalchemy.exc
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.hyperparams import SEARCHED_ENTROPY_METHODS, SEARCHED_N_COMPONENTS


def objective(trial: optuna.Trial, env_id: str, timesteps: int) -> float:
    n_components = trial.suggest_categorical("n_components", SEARCHED_N_COMPONENTS)
    entropy_method = trial.suggest_categorical("entropy_method", SEARCHED_ENTROPY_METHODS)
    ent_coef = trial.suggest_float("ent_coef", 1e-5, 0.05, log=True)
    env = make_vec_env(env_id, n_envs=4, seed=trial.number)
    model = PPO(
        GMMActorCriticPolicy,
        env,
        n_steps=256,
        batch_size=64,
        ent_coef=ent_coef,
        policy_kwargs=dict(n_components=n_components, entropy_method=entropy_method),
        seed=trial.number,
    )
    model.learn(timesteps)
    mean_return, _ = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=10_000 + trial.number), 5)
    return float(mean_return)


def open_study(storage: str, study_name: str, attempts: int = 5) -> optuna.Study:
    """Create the study, or join it if another worker already did.

    Workers started together on an empty database race to create Optuna's tables (PostgreSQL answers the loser with
    a unique-key violation on the schema); the tables exist once the winner is done, so the loser tries again.

    :param storage: Optuna RDB URL
    :param study_name: the study every worker shares
    :param attempts: tries before the error is raised
    """
    for attempt in range(attempts - 1):
        try:
            return optuna.create_study(
                study_name=study_name, storage=storage, direction="maximize", load_if_exists=True
            )
        except sqlalchemy.exc.SQLAlchemyError:
            time.sleep(0.5 * (attempt + 1))
    return optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="sqlite:///gmm_study.db", help="Optuna RDB URL (SQLAlchemy)")
    parser.add_argument("--study-name", default="sb3-gmm")
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--env", default="Pendulum-v1")
    args = parser.parse_args()
    study = open_study(args.storage, args.study_name)
    study.optimize(lambda trial: objective(trial, args.env, args.timesteps), n_trials=args.n_trials)
    print(f"best return {study.best_value:.1f} with {study.best_params}")


if __name__ == "__main__":
    main()
