"""PPO on Pendulum-v1: SB3's MlpPolicy vs GMMActorCriticPolicy with the tuned settings of ``sb3_gmm.hyperparams``.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.pendulum_ppo     # 3 seeds x 100k steps, writes docs/pendulum.md
    OMP_NUM_THREADS=1 python -m benchmarks.pendulum_ppo --timesteps 20000 --seeds 0 --no-write   # smoke run

Runs are interleaved (seed 0 Gaussian, seed 0 GMM, seed 1 Gaussian, ...) so both policies see the same machine load.
Each trained model is scored with 10 deterministic episodes (what rl-zoo reports). The per-run results are stored
in docs/data/pendulum.json and the page's generated block is rendered from them.
"""

import argparse
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch as th

from benchmarks import _report
from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.hyperparams import algorithm_kwargs, hyperparams

ENV_ID = "Pendulum-v1"
GMM_NAME = "GMMActorCriticPolicy (K=4, default entropy)"
RESULTS = _report.DOCS / "data" / "pendulum.json"


def train_and_evaluate(gmm: bool, seed: int, timesteps: int) -> Dict[str, float]:
    """One training run; the Gaussian gets the same settings without the mixture's ``n_components``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    kwargs = algorithm_kwargs("ppo", ENV_ID)
    if not gmm:
        kwargs["policy_kwargs"] = {k: v for k, v in kwargs["policy_kwargs"].items() if k != "n_components"}
    env = make_vec_env(ENV_ID, n_envs=hyperparams("ppo", ENV_ID)["n_envs"], seed=seed)
    model = PPO(GMMActorCriticPolicy if gmm else "MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - start
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=seed + 1000)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return {"return": float(mean_return), "return_std": float(std_return), "wall_s": wall}


def render(payload: Dict[str, Any]) -> str:
    """The generated block of docs/pendulum.md from stored results."""
    seeds, results = payload["seeds"], payload["results"]
    header = ["policy", *(f"seed {seed}" for seed in seeds), "median", "mean wall time (s)"]
    rows = []
    for name, runs in results.items():
        returns = [run["return"] for run in runs]
        rows.append([name, *(f"{value:.1f}" for value in returns), f"{statistics.median(returns):.1f}"])
        rows[-1].append(f"{np.mean([run['wall_s'] for run in runs]):.0f}")
    gmm_median = statistics.median(run["return"] for run in results[GMM_NAME])
    return "\n".join([
        _report.provenance(payload["record"], payload["minutes"]),
        "",
        f"Settings: `sb3_gmm.hyperparams` PPO entry for Pendulum-v1 ({payload['settings']}), {payload['timesteps']:,} "
        f"steps, seeds {seeds}; score = mean return of 10 deterministic episodes (what rl-zoo reports).",
        "",
        _report.markdown_table(header, rows),
        "",
        f"The bar for the GMM policy is a median deterministic return >= -250 within 100k steps: it "
        f"{'meets' if gmm_median >= -250 else 'misses'} it ({gmm_median:.1f}). Wall time: training only, mean per run.",
    ])  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=hyperparams("ppo", ENV_ID)["n_timesteps"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/pendulum.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    record, start = _report.run_record("benchmarks.pendulum_ppo", argv), time.perf_counter()
    results: Dict[str, List[Dict[str, float]]] = {"MlpPolicy (Gaussian)": [], GMM_NAME: []}
    for seed in args.seeds:
        for name, runs in results.items():
            runs.append(train_and_evaluate(name == GMM_NAME, seed, args.timesteps))
            print(f"seed {seed} {name}: return {runs[-1]['return']:.1f} ({runs[-1]['wall_s']:.0f} s)", flush=True)
    payload = dict(record=record, minutes=(time.perf_counter() - start) / 60, timesteps=args.timesteps)
    payload |= dict(seeds=args.seeds, settings=hyperparams("ppo", ENV_ID), results=results)
    print(render(payload))
    if not args.no_write:
        _report.write_json(RESULTS, payload)
        _report.write_generated(_report.DOCS / "pendulum.md", "benchmarks/pendulum_ppo.py", render(payload), "Pendulum")


if __name__ == "__main__":
    main()
