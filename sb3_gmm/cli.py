"""Command line: ``python -m sb3_gmm train`` (the main job) and ``python -m sb3_gmm plot MODEL.zip``.

The main job trains an agent with a Gaussian-mixture policy on a built-in environment (Pendulum-v1 by default) with
a progress bar, saves the model, writes a picture of the learned action distribution for a few observations and
prints a deterministic evaluation. Where ``sb3_gmm.hyperparams`` has tuned settings for the algorithm and environment
(the entries of ``zoo_configs/<algo>.yml``), they are used; options given on the command line override them.
"""

import argparse
import datetime
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from sb3_gmm.entropy import DEFAULT_METHOD
from sb3_gmm.hyperparams import ENTROPY_BONUS_ALGORITHMS, algorithm_kwargs, hyperparams, tuned_env_ids

# CLI name -> (module, class) of the algorithm and the sb3_gmm policy it trains.
ALGOS: Dict[str, Tuple[str, str, str]] = {
    "ppo": ("stable_baselines3", "PPO", "GMMActorCriticPolicy"),
    "a2c": ("stable_baselines3", "A2C", "GMMActorCriticPolicy"),
    "trpo": ("sb3_contrib", "TRPO", "GMMActorCriticPolicy"),
    "ppo_lstm": ("sb3_contrib", "RecurrentPPO", "GMMRecurrentActorCriticPolicy"),
    "sac": ("stable_baselines3", "SAC", "GMMSACPolicy"),
    "tqc": ("sb3_contrib", "TQC", "GMMTQCPolicy"),
}
# Used where sb3_gmm.hyperparams has no entry for the algorithm and environment.
FALLBACK_TOTAL_TIMESTEPS = 100_000
FALLBACK_N_ENVS = 4
OFF_POLICY_ALGOS = ("sac", "tqc")  # one environment by default: SAC/TQC take one gradient step per vector step
FALLBACK_N_COMPONENTS = 4
SUMMARY_NAME = "summary.json"
VECNORMALIZE_NAME = "vecnormalize.pkl"


def _algorithm(name: str) -> Any:
    import importlib

    module, class_name, _ = ALGOS[name]
    return getattr(importlib.import_module(module), class_name)


def _policy(algo: str) -> Any:
    import sb3_gmm

    return getattr(sb3_gmm, ALGOS[algo][2])


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except ``None`` defaults: their help says where the value comes from instead."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_gmm", description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train an agent with a GMM policy (the main job)",
        formatter_class=_HelpFormatter,
        epilog="tuned: the setting sb3_gmm.hyperparams (the same as zoo_configs/<algo>.yml) holds for --algo on "
        "--env, where it has an entry; options given here override it.",
    )
    train.add_argument("--env", default="Pendulum-v1", help="Gymnasium id (built-ins: sb3_gmm/TwoPeakBandit-v0, ...)")
    train.add_argument(
        "--algo", choices=tuple(ALGOS), default="ppo", help="algorithm (ppo_lstm = RecurrentPPO, tqc = sb3-contrib)"
    )
    train.add_argument(
        "--total-timesteps", type=int, default=None, help="steps to train for (default: tuned, else 100000)"
    )
    train.add_argument(
        "--n-envs", type=int, default=None, help="parallel environments (default: tuned, else 4; 1 for SAC/TQC)"
    )
    train.add_argument("--n-components", type=int, default=None, help="mixture components K (default: tuned, else 4)")
    train.add_argument(
        "--entropy-method",
        default=None,
        help="entropy estimator, a name in sb3_gmm.entropy.ESTIMATORS (default: the library's)",
    )
    train.add_argument(
        "--ent-coef",
        type=float,
        default=None,
        help="entropy coefficient; not for TRPO (default: tuned, else the algorithm's: 0, or 'auto' for SAC/TQC)",
    )
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--output-dir", default=None, help="run folder (default: runs/<env>-<algo>-<timestamp>)")
    train.add_argument("--wandb", default=None, metavar="PROJECT", help="log to this Weights & Biases project")
    train.add_argument("--device", default="cpu", help="torch device (auto, cpu, cuda)")
    train.add_argument("--eval-episodes", type=int, default=5, help="deterministic episodes for the final score")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    plot = commands.add_parser(
        "plot", help="plot the action distribution of a saved model", formatter_class=_HelpFormatter
    )
    plot.add_argument("model", help="path of a saved model .zip")
    plot.add_argument(
        "--env", default=None, help=f"environment to draw observations from; default: the run's {SUMMARY_NAME}"
    )
    plot.add_argument("--algo", choices=tuple(ALGOS), default=None, help=f"default: the run's {SUMMARY_NAME}")
    plot.add_argument("--output", default=None, help="PNG path (default: next to the model)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the environment resets that give the observations")
    return parser


def _sample_observations(env_id: str, n: int, seed: int) -> np.ndarray:
    import gymnasium as gym

    import sb3_gmm  # noqa: F401  (registers the built-in environments)

    env = gym.make(env_id)
    observations = [env.reset(seed=seed + i)[0] for i in range(n)]
    env.close()
    return np.stack(observations)


def _fallback_n_envs(algo: str) -> int:
    return 1 if algo in OFF_POLICY_ALGOS else FALLBACK_N_ENVS


def resolve_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's settings: the tuned entry for ``args.algo`` on ``args.env`` where there is one, then the options.

    :param args: parsed ``train`` options
    :return: ``n_envs``, ``total_timesteps``, ``normalize``, ``algo_kwargs`` (constructor keywords, ``policy_kwargs``
        included) and ``tuned`` (whether a tuned entry was used)
    """
    tuned = args.env in tuned_env_ids(args.algo)
    entry = hyperparams(args.algo, args.env) if tuned else {}
    algo_kwargs = algorithm_kwargs(args.algo, args.env) if tuned else {}
    policy_kwargs = algo_kwargs.pop("policy_kwargs", {})
    policy_kwargs["n_components"] = args.n_components or policy_kwargs.get("n_components", FALLBACK_N_COMPONENTS)
    # The resolved name, not None, goes into the saved model: a later change of the library default must not
    # silently switch the estimator of a model trained today.
    policy_kwargs["entropy_method"] = args.entropy_method or policy_kwargs.get("entropy_method") or DEFAULT_METHOD
    algo_kwargs["policy_kwargs"] = policy_kwargs
    if args.ent_coef is not None:
        algo_kwargs["ent_coef"] = args.ent_coef
        if args.algo in ENTROPY_BONUS_ALGORITHMS:
            # A tuned entry without a bonus skips the estimate (entropy_in_loss=False); kept with a bonus given here,
            # the loss would silently take SB3's -log_prob in place of the mixture's entropy estimate.
            if args.ent_coef == 0:
                policy_kwargs["entropy_in_loss"] = False
            else:
                policy_kwargs.pop("entropy_in_loss", None)
    return dict(
        tuned=tuned,
        # rl-zoo3 runs an entry without n_envs on one environment
        n_envs=args.n_envs or (entry.get("n_envs", 1) if tuned else _fallback_n_envs(args.algo)),
        total_timesteps=args.total_timesteps or int(entry.get("n_timesteps", FALLBACK_TOTAL_TIMESTEPS)),
        normalize=bool(entry.get("normalize", False)),
        algo_kwargs=algo_kwargs,
    )


def _make_env(env_id: str, n_envs: int, seed: int, normalize: bool, gamma: float) -> Any:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import sb3_gmm  # noqa: F401  (registers the built-in environments)

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    # rl-zoo3's `normalize: true`: observations and rewards, with the algorithm's discount
    return VecNormalize(env, gamma=gamma) if normalize else env


def _eval_env(env_id: str, seed: int, train_env: Any) -> Any:
    """One environment for the final score; with normalization, the training statistics, frozen, and raw rewards."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(env_id, n_envs=1, seed=seed)
    if not isinstance(train_env, VecNormalize):
        return env
    env = VecNormalize(env, training=False, norm_reward=False)
    env.obs_rms = train_env.obs_rms
    return env


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Train, save, plot and score one run (the ``train`` command).

    :param args: parsed ``train`` options
    :return: the run's summary, also written to ``summary.json`` in the run folder
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_gmm.plotting import plot_policy_density

    settings = resolve_settings(args)
    algo_kwargs = settings["algo_kwargs"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = Path(args.output_dir or Path("runs") / f"{args.env.replace('/', '_')}-{args.algo}-{stamp}")
    # Environment and model are built before the run folder exists, so a bad option leaves nothing behind.
    env = _make_env(args.env, settings["n_envs"], args.seed, settings["normalize"], algo_kwargs.get("gamma", 0.99))
    model = _algorithm(args.algo)(
        _policy(args.algo),
        env,
        seed=args.seed,
        device=args.device,
        tensorboard_log=str(output_dir / "tensorboard") if args.wandb else None,
        **algo_kwargs,
    )
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary = _learn_and_save(args, settings, model, output_dir)
        eval_env = _eval_env(args.env, args.seed + 10_000, env)
        mean_return, std_return = evaluate_policy(
            model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True
        )
        observations = _sample_observations(args.env, 3, args.seed)
        if settings["normalize"]:
            observations = env.normalize_obs(observations)
        plot_policy_density(model, observations, path=summary["plot"])
    except Exception:
        # a failed run leaves no half-written run folder behind (one the user named and that existed is kept)
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    summary.update(mean_return=float(mean_return), std_return=float(std_return))
    (output_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str))
    print(f"model saved to {summary['model']}")
    print(f"action distribution plot: {summary['plot']}")
    print(f"deterministic return over {args.eval_episodes} episodes: {mean_return:.1f} +- {std_return:.1f}")
    return summary


def _learn_and_save(args: argparse.Namespace, settings: Dict[str, Any], model: Any, output_dir: Path) -> Dict[str, Any]:
    """Train (with W&B when asked), save the model and its normalizer; return the summary without the score."""
    from stable_baselines3.common.callbacks import CallbackList

    from sb3_gmm.callbacks import GMMDiagnosticsCallback

    callbacks: List[Any] = [GMMDiagnosticsCallback(plot_freq=10)]
    run = None
    if args.wandb:
        import wandb
        from wandb.integration.sb3 import WandbCallback

        run = wandb.init(project=args.wandb, config=vars(args), sync_tensorboard=True, dir=str(output_dir))
        callbacks.append(WandbCallback(verbose=0))
    try:
        model.learn(
            total_timesteps=settings["total_timesteps"],
            callback=CallbackList(callbacks),
            progress_bar=not args.no_progress,
        )
    finally:
        if run is not None:
            run.finish()
    model_path = output_dir / "model.zip"
    model.save(model_path)
    vecnormalize_path = None
    if settings["normalize"]:
        vecnormalize_path = output_dir / VECNORMALIZE_NAME
        model.get_env().save(str(vecnormalize_path))
    algo_kwargs = settings["algo_kwargs"]
    return {
        "env": args.env,
        "algo": args.algo,
        "seed": args.seed,
        "total_timesteps": settings["total_timesteps"],
        "n_envs": settings["n_envs"],
        "n_components": algo_kwargs["policy_kwargs"]["n_components"],
        "entropy_method": algo_kwargs["policy_kwargs"]["entropy_method"],
        "ent_coef": getattr(model, "ent_coef", None),
        "tuned_settings": settings["tuned"],
        "hyperparams": hyperparams(args.algo, args.env) if settings["tuned"] else None,
        "model": str(model_path),
        "vecnormalize": None if vecnormalize_path is None else str(vecnormalize_path),
        "plot": str(output_dir / "action_density.png"),
    }


def plot_target(model_path: str, env_id: Optional[str], algo: Optional[str]) -> Tuple[str, str]:
    """Environment and algorithm of a saved model: the options where given, else the run's ``summary.json``.

    :param model_path: the model .zip
    :param env_id: ``--env``, or None
    :param algo: ``--algo``, or None
    """
    summary_path = Path(model_path).parent / SUMMARY_NAME
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    env_id = env_id or summary.get("env")
    algo = algo or summary.get("algo")
    if env_id is None or algo is None:
        raise ValueError(
            f"no {SUMMARY_NAME} next to {model_path} says which environment and algorithm trained it: "
            "pass --env and --algo"
        )
    return env_id, algo


def plot(args: argparse.Namespace) -> Path:
    """Plot the action distribution of a saved model (the ``plot`` command).

    :param args: parsed ``plot`` options
    :return: the PNG's path
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from sb3_gmm.plotting import plot_policy_density

    env_id, algo = plot_target(args.model, args.env, args.algo)
    model = _algorithm(algo).load(args.model, device="cpu")
    observations = _sample_observations(env_id, 3, args.seed)
    vecnormalize_path = Path(args.model).parent / VECNORMALIZE_NAME
    if vecnormalize_path.exists():
        # the policy was trained on normalized observations
        import gymnasium as gym

        normalizer = VecNormalize.load(str(vecnormalize_path), DummyVecEnv([lambda: gym.make(env_id)]))
        observations = normalizer.normalize_obs(observations)
    output = Path(args.output or Path(args.model).with_suffix(".png"))
    plot_policy_density(model, observations, path=output)
    print(f"action distribution plot: {output}")
    return output


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        for option in ("total_timesteps", "n_components", "n_envs"):
            value = getattr(args, option)
            if value is not None and value < 1:
                parser.error(f"--{option.replace('_', '-')} must be >= 1 (got {value})")
        if args.algo == "trpo" and args.ent_coef is not None:
            parser.error("--ent-coef: TRPO has no entropy bonus; leave the option out")
        train(args)
    else:
        try:
            plot_target(args.model, args.env, args.algo)
        except ValueError as error:
            parser.error(str(error))
        plot(args)


if __name__ == "__main__":
    main()
