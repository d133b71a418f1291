"""Command line: ``python -m sb3_gmm train`` (the main job) and ``python -m sb3_gmm plot MODEL.zip``.

The main job trains an agent with a Gaussian-mixture policy on a built-in environment (Pendulum-v1 by default) with
a progress bar, saves the model, writes a picture of the learned action distribution for a few observations and
prints a deterministic evaluation.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from sb3_gmm.hyperparams import algorithm_kwargs

ALGOS = ("ppo", "a2c", "trpo", "ppo_lstm")


def _algorithm(name: str) -> Any:
    if name == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if name == "a2c":
        from stable_baselines3 import A2C

        return A2C
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    from sb3_contrib import RecurrentPPO

    return RecurrentPPO


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sb3_gmm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent with a GMM policy (the main job)")
    train.add_argument("--env", default="Pendulum-v1", help="Gymnasium id (built-ins: sb3_gmm/TwoPeakBandit-v0, ...)")
    train.add_argument("--algo", choices=ALGOS, default="ppo", help="algorithm (ppo_lstm = sb3-contrib RecurrentPPO)")
    train.add_argument("--total-timesteps", type=int, default=100_000, help="environment steps to train for")
    train.add_argument("--n-envs", type=int, default=4, help="parallel environments (DummyVecEnv)")
    train.add_argument("--n-components", type=int, default=4, help="mixture components K")
    train.add_argument(
        "--entropy-method", default=None, help="entropy estimator (see sb3_gmm.entropy.ESTIMATORS); default: library's"
    )
    train.add_argument("--ent-coef", type=float, default=0.0, help="entropy bonus coefficient (not used by TRPO)")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--output-dir", default=None, help="default: runs/<env>-<algo>-<timestamp>")
    train.add_argument("--wandb", default=None, metavar="PROJECT", help="log to this Weights & Biases project")
    train.add_argument("--device", default="cpu", help="torch device (auto, cpu, cuda)")
    train.add_argument("--eval-episodes", type=int, default=5, help="deterministic episodes for the final score")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    plot = commands.add_parser("plot", help="plot the action distribution of a saved model")
    plot.add_argument("model", help="path of a saved model .zip")
    plot.add_argument("--env", default="Pendulum-v1", help="environment to draw observations from")
    plot.add_argument("--algo", choices=ALGOS, default="ppo")
    plot.add_argument("--output", default=None, help="PNG path (default: next to the model)")
    plot.add_argument("--seed", type=int, default=0)
    return parser


def _sample_observations(env_id: str, n: int, seed: int) -> np.ndarray:
    import gymnasium as gym

    import sb3_gmm  # noqa: F401  (registers the built-in environments)

    env = gym.make(env_id)
    observations = [env.reset(seed=seed + i)[0] for i in range(n)]
    env.close()
    return np.stack(observations)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    import sb3_gmm
    from sb3_gmm.callbacks import GMMDiagnosticsCallback
    from sb3_gmm.plotting import plot_policy_density

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = Path(args.output_dir or Path("runs") / f"{args.env.replace('/', '_')}-{args.algo}-{stamp}")
    output_dir.mkdir(parents=True, exist_ok=True)
    policy = sb3_gmm.GMMRecurrentActorCriticPolicy if args.algo == "ppo_lstm" else sb3_gmm.GMMActorCriticPolicy
    algo_kwargs: Dict[str, Any] = {}
    if args.env == "Pendulum-v1" and args.algo in ("ppo", "ppo_lstm"):
        # rl-zoo3's tuned PPO settings for Pendulum-v1, without gSDE (GMM policies do not use it)
        algo_kwargs.update(algorithm_kwargs("ppo", "Pendulum-v1"))
        del algo_kwargs["policy_kwargs"], algo_kwargs["ent_coef"]
    if args.algo != "trpo":
        algo_kwargs["ent_coef"] = args.ent_coef
    policy_kwargs = dict(n_components=args.n_components, entropy_method=args.entropy_method)

    callbacks: List[Any] = [GMMDiagnosticsCallback(plot_freq=10)]
    run = None
    if args.wandb:
        import wandb
        from wandb.integration.sb3 import WandbCallback

        run = wandb.init(project=args.wandb, config=vars(args), sync_tensorboard=True, dir=str(output_dir))
        callbacks.append(WandbCallback(verbose=0))
    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
    model = _algorithm(args.algo)(
        policy,
        env,
        policy_kwargs=policy_kwargs,
        seed=args.seed,
        device=args.device,
        tensorboard_log=str(output_dir / "tensorboard") if args.wandb else None,
        **algo_kwargs,
    )
    model.learn(
        total_timesteps=args.total_timesteps, callback=CallbackList(callbacks), progress_bar=not args.no_progress
    )
    model_path = output_dir / "model.zip"
    model.save(model_path)
    plot_path = output_dir / "action_density.png"
    plot_policy_density(model, _sample_observations(args.env, 3, args.seed), path=plot_path)
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 10_000)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    summary = {
        "env": args.env,
        "algo": args.algo,
        "total_timesteps": args.total_timesteps,
        "n_components": args.n_components,
        "entropy_method": args.entropy_method,
        "mean_return": float(mean_return),
        "std_return": float(std_return),
        "model": str(model_path),
        "plot": str(plot_path),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if run is not None:
        run.finish()
    print(f"model saved to {model_path}")
    print(f"action distribution plot: {plot_path}")
    print(f"deterministic return over {args.eval_episodes} episodes: {mean_return:.1f} +- {std_return:.1f}")
    return summary


def plot(args: argparse.Namespace) -> Path:
    from sb3_gmm.plotting import plot_policy_density

    model = _algorithm(args.algo).load(args.model, device="cpu")
    output = Path(args.output or Path(args.model).with_suffix(".png"))
    plot_policy_density(model, _sample_observations(args.env, 3, args.seed), path=output)
    print(f"action distribution plot: {output}")
    return output


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if args.total_timesteps < 1 or args.n_components < 1 or args.n_envs < 1:
            sys.exit("--total-timesteps, --n-components and --n-envs must be >= 1")
        train(args)
    else:
        plot(args)


if __name__ == "__main__":
    main()
