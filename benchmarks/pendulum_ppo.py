"""PPO on Pendulum-v1: SB3's MlpPolicy vs GMMActorCriticPolicy, rl-zoo hyperparameters without gSDE.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.pendulum_ppo     # 3 seeds x 100k steps, writes docs/pendulum.md
    OMP_NUM_THREADS=1 python -m benchmarks.pendulum_ppo --timesteps 20000 --seeds 0 --no-write   # smoke run

Runs are interleaved (seed 0 Gaussian, seed 0 GMM, seed 1 Gaussian, ...) so both policies see the same machine load.
Each trained model is scored with 10 deterministic episodes (what rl-zoo reports).
"""

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sb3_gmm import GMMActorCriticPolicy  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# rl-zoo3's hyperparams/ppo.yml entry for Pendulum-v1, minus gSDE (use_sde, sde_sample_freq, its log_std_init).
ZOO_PENDULUM = dict(
    n_steps=1024, batch_size=64, gamma=0.9, gae_lambda=0.95, n_epochs=10, learning_rate=1e-3, clip_range=0.2,
    ent_coef=0.0,
)  # fmt: skip
N_ENVS = 4
GMM_NAME = "GMMActorCriticPolicy (K=4, default entropy)"
POLICIES: Dict[str, Any] = {
    "MlpPolicy (Gaussian)": ("MlpPolicy", {}),
    GMM_NAME: (GMMActorCriticPolicy, dict(n_components=4)),
}


def train_and_evaluate(policy: Any, policy_kwargs: Dict[str, Any], seed: int, timesteps: int) -> Dict[str, float]:
    env = make_vec_env("Pendulum-v1", n_envs=N_ENVS, seed=seed)
    model = PPO(policy, env, seed=seed, policy_kwargs=policy_kwargs, device="cpu", **ZOO_PENDULUM)
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - start
    eval_env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed + 1000)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return {"return": float(mean_return), "return_std": float(std_return), "wall_s": wall}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/pendulum.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    run_start = time.perf_counter()
    results: Dict[str, List[Dict[str, float]]] = {name: [] for name in POLICIES}
    for seed in args.seeds:
        for name, (policy, policy_kwargs) in POLICIES.items():
            result = train_and_evaluate(policy, policy_kwargs, seed, args.timesteps)
            results[name].append(result)
            print(f"seed {seed} {name}: return {result['return']:.1f} +- {result['return_std']:.1f} "
                  f"({result['wall_s']:.0f} s)", flush=True)  # fmt: skip

    total_minutes = (time.perf_counter() - run_start) / 60
    command = "OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.pendulum_ppo" + (" " + " ".join(argv) if argv else "")
    lines = [
        "# PPO on Pendulum-v1: Gaussian vs Gaussian-mixture policy",
        "",
        f"Produced by `{command}` (script `benchmarks/pendulum_ppo.py`) on {datetime.date.today()}, "
        f"{platform.machine()} 2-core CPU shared with other jobs, torch {th.__version__}; the whole run took "
        f"{total_minutes:.0f} min.",
        "",
        f"Settings: rl-zoo3's PPO hyperparameters for Pendulum-v1 without gSDE ({ZOO_PENDULUM}, n_envs {N_ENVS}), "
        f"{args.timesteps:,} steps, seeds {args.seeds}; score = mean return of 10 deterministic episodes "
        "(what rl-zoo reports). The two policies were trained interleaved in one run.",
        "",
        "| policy | " + " | ".join(f"seed {seed}" for seed in args.seeds) + " | median | mean wall time (s) |",
        "| --- | " + " | ".join("---:" for _ in args.seeds) + " | ---: | ---: |",
    ]
    for name, runs in results.items():
        returns = [run["return"] for run in runs]
        lines.append(
            f"| {name} | " + " | ".join(f"{value:.1f}" for value in returns)
            + f" | {statistics.median(returns):.1f} | {np.mean([run['wall_s'] for run in runs]):.0f} |"
        )  # fmt: skip
    gmm_median = statistics.median(run["return"] for run in results[GMM_NAME])
    verdict = "meets" if gmm_median >= -250 else "misses"
    lines += [
        "",
        f"The bar for the GMM policy is a median deterministic return >= -250 within 100k steps: it {verdict} it "
        f"({gmm_median:.1f}). The GMM policy uses the library defaults apart from n_components=4. Wall time is "
        "training only, mean per run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (REPO_ROOT / "docs" / "pendulum.md").write_text(text)


if __name__ == "__main__":
    main()
