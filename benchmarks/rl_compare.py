"""PPO with a Gaussian (SB3 MlpPolicy) vs a Gaussian-mixture policy under several entropy treatments.

Grid: for every environment, seed and entropy coefficient (0 and a positive one)

- ``gaussian``: SB3's ``MlpPolicy`` (diagonal Gaussian, no gSDE),
- ``gmm-K{2,4}-<entropy>``: :class:`sb3_gmm.GMMActorCriticPolicy` with the library default estimator, ``legendre``,
  ``component_average`` or ``none`` (the distribution's ``entropy()`` returns None, so PPO falls back to its
  one-sample ``-log pi(a)`` estimate).

With ``ent_coef = 0`` the entropy term has zero weight, so every estimator gives the same gradients and the same
run: the grid runs a single GMM per K there (labelled ``gmm-K<k>``).

Each run records the training episode returns (learning curve) and, at the end, the mean return of deterministic
(``mode()``) and stochastic episodes; on the multimodal environments it also records how the stochastic policy
splits between the two optimal modes. Runs are written one JSON file each, so an interrupted grid resumes.

Usage::

    python benchmarks/rl_compare.py --budget quick             # smoke test, a few minutes
    nice -n 5 python benchmarks/rl_compare.py --budget full    # the grid behind docs/rl_results.md
    python benchmarks/rl_compare.py --budget full --report     # table + figures from finished runs only
"""

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# One BLAS/OpenMP thread per worker process; set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch as th  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BANDIT_ID = "sb3_gmm/TwoPeakBandit-v0"
NAVIGATION_ID = "sb3_gmm/TwoRouteNavigation-v0"
ENTROPY_TREATMENTS = ("default", "legendre", "component_average", "none")


@dataclass(frozen=True)
class EnvSetting:
    """PPO settings and budgets for one environment.

    :param short_name: used in file names and figure titles
    :param timesteps: training steps per budget name
    :param ent_coef: the positive entropy coefficient of the grid
    :param n_envs: parallel environments
    :param ppo_kwargs: PPO hyperparameters (everything but policy, env, ent_coef, seed)
    :param normalize: wrap in VecNormalize (observations and rewards, as the zoo does)
    :param eval_episodes: episodes of the final deterministic and stochastic evaluation
    """

    short_name: str
    timesteps: Dict[str, int]
    ent_coef: float
    n_envs: int
    ppo_kwargs: Dict[str, Any]
    normalize: bool = False
    eval_episodes: int = 20


ENV_SETTINGS: Dict[str, EnvSetting] = {
    BANDIT_ID: EnvSetting(
        short_name="bandit",
        timesteps={"quick": 4096, "full": 20480},
        ent_coef=0.01,
        n_envs=4,
        ppo_kwargs=dict(n_steps=128, batch_size=64, n_epochs=10, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95),
        eval_episodes=50,
    ),
    NAVIGATION_ID: EnvSetting(
        short_name="navigation",
        timesteps={"quick": 8192, "full": 40960},
        ent_coef=0.01,
        n_envs=4,
        ppo_kwargs=dict(n_steps=256, batch_size=64, n_epochs=10, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95),
        eval_episodes=50,
    ),
    # The zoo's PPO entry without gSDE (use_sde / sde_sample_freq dropped).
    "Pendulum-v1": EnvSetting(
        short_name="pendulum",
        timesteps={"quick": 4096, "full": 65536},
        ent_coef=0.01,
        n_envs=4,
        ppo_kwargs=dict(
            n_steps=1024, batch_size=64, n_epochs=10, learning_rate=1e-3, gamma=0.9, gae_lambda=0.95, clip_range=0.2
        ),
        eval_episodes=10,
    ),
    # The zoo's tuned PPO entry without gSDE; its ent_coef (0.00429) is the grid's positive coefficient and its
    # gSDE-specific log_std_init=-3.29 is dropped (both policies start from their default std).
    "MountainCarContinuous-v0": EnvSetting(
        short_name="mountaincar",
        timesteps={"quick": 2000, "full": 20000},
        ent_coef=0.00429,
        n_envs=1,
        ppo_kwargs=dict(
            n_steps=8,
            batch_size=256,
            n_epochs=10,
            learning_rate=7.77e-05,
            gamma=0.9999,
            gae_lambda=0.9,
            clip_range=0.1,
            max_grad_norm=5,
            vf_coef=0.19,
            policy_kwargs=dict(ortho_init=False),
        ),
        normalize=True,
        eval_episodes=10,
    ),
    "LunarLanderContinuous-v3": EnvSetting(
        short_name="lunarlander",
        timesteps={"quick": 16384, "full": 300000},
        ent_coef=0.01,
        n_envs=16,
        ppo_kwargs=dict(n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999, gae_lambda=0.98),
        eval_episodes=10,
    ),
}
DEFAULT_ENVS = (BANDIT_ID, NAVIGATION_ID, "Pendulum-v1", "MountainCarContinuous-v0")


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    env_id: str
    variant: str
    n_components: int  # 0 for the Gaussian baseline
    entropy: str  # one of ENTROPY_TREATMENTS, or "any" when ent_coef is 0
    ent_coef: float
    seed: int
    timesteps: int

    @property
    def key(self) -> str:
        return f"{ENV_SETTINGS[self.env_id].short_name}__{self.variant}__ent{self.ent_coef:g}__s{self.seed}"


@dataclass
class RunResult:
    """What one run measured (written as JSON)."""

    spec: Dict[str, Any]
    curve_timesteps: List[int] = field(default_factory=list)
    curve_returns: List[float] = field(default_factory=list)
    deterministic_return: float = float("nan")
    stochastic_return: float = float("nan")
    stochastic_returns: List[float] = field(default_factory=list)
    mode_fractions: Optional[Dict[str, float]] = None
    action_histogram: Optional[List[float]] = None
    wall_seconds: float = float("nan")
    entropy_method_resolved: Optional[str] = None
    entropy_kwargs_resolved: Optional[Dict[str, Any]] = None  # the estimator's options, defaults filled in
    code_commit: Optional[str] = None  # the library's commit, so a grid run over several commits says so


def build_grid(
    env_ids: Tuple[str, ...],
    budget: str,
    seeds: Tuple[int, ...],
    components: Tuple[int, ...],
    treatments: Tuple[str, ...] = ENTROPY_TREATMENTS,
) -> List[RunSpec]:
    """Every run of the grid, cheapest environments first."""
    specs = []
    for env_id in env_ids:
        setting = ENV_SETTINGS[env_id]
        steps = setting.timesteps[budget]
        for seed in seeds:
            for ent_coef in (0.0, setting.ent_coef):
                specs.append(
                    RunSpec(env_id, "gaussian", 0, "any" if ent_coef == 0 else "gaussian", ent_coef, seed, steps)
                )
                for n_components in components:
                    if ent_coef == 0.0:
                        specs.append(
                            RunSpec(env_id, f"gmm-K{n_components}", n_components, "any", ent_coef, seed, steps)
                        )
                        continue
                    for entropy in treatments:
                        variant = f"gmm-K{n_components}-{entropy}"
                        specs.append(RunSpec(env_id, variant, n_components, entropy, ent_coef, seed, steps))
    return specs


def no_entropy_policy_class():
    """A GMM policy whose distribution's ``entropy()`` returns None (SB3 then uses ``-log pi(a)`` of the batch).

    Defined lazily so this module imports before ``sb3_gmm.policies`` exists.
    """
    from sb3_gmm import GMMActorCriticPolicy, GMMDistribution

    class NoEntropyGMMDistribution(GMMDistribution):
        def entropy(self) -> None:  # type: ignore[override]
            return None

    class NoEntropyGMMActorCriticPolicy(GMMActorCriticPolicy):
        def _get_action_dist_from_latent(self, latent_pi: th.Tensor, *args: Any, **kwargs: Any):
            distribution = super()._get_action_dist_from_latent(latent_pi, *args, **kwargs)
            distribution.__class__ = NoEntropyGMMDistribution
            return distribution

    return NoEntropyGMMActorCriticPolicy


def policy_for(spec: RunSpec) -> Tuple[Any, Dict[str, Any]]:
    """Policy class (or SB3 name) and extra policy_kwargs for a run."""
    if spec.n_components == 0:
        return "MlpPolicy", {}
    from sb3_gmm import GMMActorCriticPolicy

    kwargs: Dict[str, Any] = {"n_components": spec.n_components}
    if spec.entropy == "none":
        return no_entropy_policy_class(), kwargs
    if spec.entropy not in ("default", "any"):
        kwargs["entropy_method"] = spec.entropy
    return GMMActorCriticPolicy, kwargs


def make_envs(spec: RunSpec, n_envs: int, seed: int, normalize_from=None):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import sb3_gmm.envs  # noqa: F401  (registers the built-in environments)

    vec_env = make_vec_env(spec.env_id, n_envs=n_envs, seed=seed)
    setting = ENV_SETTINGS[spec.env_id]
    if setting.normalize:
        if normalize_from is None:
            vec_env = VecNormalize(vec_env, gamma=setting.ppo_kwargs.get("gamma", 0.99))
        else:
            vec_env = VecNormalize(vec_env, training=False, norm_reward=False)
            vec_env.obs_rms = normalize_from.obs_rms
    return vec_env


def evaluate(model, spec: RunSpec, episodes: int, deterministic: bool, seed: int) -> Tuple[List[float], List[int]]:
    """Returns of ``episodes`` episodes, and on the navigation task the side (+1 above, -1 below, 0 neither)."""
    train_env = model.get_env()
    normalizer = train_env if ENV_SETTINGS[spec.env_id].normalize else None
    env = make_envs(spec, 1, seed, normalize_from=normalizer)
    returns, sides = [], []
    for _ in range(episodes):
        observation = env.reset()
        episode_return, side, done = 0.0, 0, False
        while not done:
            action, _ = model.predict(observation, deterministic=deterministic)
            observation, reward, dones, infos = env.step(action)
            done = bool(dones[0])
            episode_return += float(reward[0]) if normalizer is None else float(env.get_original_reward()[0])
            if spec.env_id == NAVIGATION_ID and side == 0:
                # the navigation observation is the position; after the last step the env has already reset
                position = infos[0]["terminal_observation"] if done else observation[0]
                if position[0] >= 0.0:
                    side = 1 if position[1] > 0 else -1
        returns.append(episode_return)
        sides.append(side)
    env.close()
    return returns, sides


def bandit_action_histogram(model, bins: int = 40, samples: int = 4000) -> Tuple[List[float], Dict[str, float]]:
    """Density histogram of the first action dimension at the first observation, and the mass near each peak."""
    observation = np.ones((samples, 1), dtype=np.float32)
    actions, _ = model.predict(observation, deterministic=False)
    first = np.clip(actions[:, 0], -1.0, 1.0)
    density, _ = np.histogram(first, bins=bins, range=(-1.0, 1.0), density=True)
    fractions = {
        "negative_peak": float(np.mean(np.abs(first + 0.6) < 0.2)),
        "positive_peak": float(np.mean(np.abs(first - 0.6) < 0.2)),
        "valley": float(np.mean(np.abs(first) < 0.3)),
    }
    return density.tolist(), fractions


def run_one(spec: RunSpec, code_commit: str) -> RunResult:
    """Train and evaluate one configuration.

    :param spec: the configuration
    :param code_commit: the commit the grid started from, recorded in the result
    """
    th.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeRecorder(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.timesteps: List[int] = []
            self.returns: List[float] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.timesteps.append(int(self.num_timesteps))
                    self.returns.append(float(info["episode"]["r"]))
            return True

    setting = ENV_SETTINGS[spec.env_id]
    start = time.perf_counter()
    env = make_envs(spec, setting.n_envs, spec.seed)
    policy, extra_policy_kwargs = policy_for(spec)
    ppo_kwargs = dict(setting.ppo_kwargs)
    policy_kwargs = {**ppo_kwargs.pop("policy_kwargs", {}), **extra_policy_kwargs}
    model = PPO(
        policy, env, ent_coef=spec.ent_coef, seed=spec.seed, policy_kwargs=policy_kwargs, verbose=0, **ppo_kwargs
    )
    recorder = EpisodeRecorder()
    model.learn(total_timesteps=spec.timesteps, callback=recorder)
    result = RunResult(spec=asdict(spec), curve_timesteps=recorder.timesteps, curve_returns=recorder.returns)
    if spec.n_components:
        from sb3_gmm.entropy import get_estimator

        entropy_method = getattr(model.policy, "entropy_method", None)
        result.entropy_method_resolved = str(entropy_method)
        if spec.entropy != "none":
            options = dict(getattr(model.policy, "entropy_kwargs", None) or {})
            result.entropy_kwargs_resolved = get_estimator(entropy_method).resolve_options(options)
    result.code_commit = code_commit
    deterministic, _ = evaluate(model, spec, setting.eval_episodes, True, seed=10_000 + spec.seed)
    stochastic, sides = evaluate(model, spec, setting.eval_episodes, False, seed=20_000 + spec.seed)
    result.deterministic_return = float(np.mean(deterministic))
    result.stochastic_return = float(np.mean(stochastic))
    result.stochastic_returns = stochastic
    if spec.env_id == NAVIGATION_ID:
        sides_array = np.array(sides)
        result.mode_fractions = {
            "above": float(np.mean(sides_array > 0)),
            "below": float(np.mean(sides_array < 0)),
            "neither": float(np.mean(sides_array == 0)),
        }
    elif spec.env_id == BANDIT_ID:
        result.action_histogram, result.mode_fractions = bandit_action_histogram(model)
    result.wall_seconds = time.perf_counter() - start
    env.close()
    return result


def _run_and_save(args: Tuple[RunSpec, str, str]) -> Tuple[str, float, Optional[str]]:
    spec, out_dir, code_commit = args
    path = Path(out_dir) / f"{spec.key}.json"
    try:
        result = run_one(spec, code_commit)
    except Exception as error:  # keep the grid going; the report lists failed runs
        path.with_suffix(".failed").write_text(f"{type(error).__name__}: {error}\n")
        return spec.key, float("nan"), f"{type(error).__name__}: {error}"
    path.write_text(json.dumps(asdict(result)))
    return spec.key, result.wall_seconds, None


def run_grid(specs: List[RunSpec], out_dir: Path, workers: int) -> None:
    import multiprocessing

    from benchmarks._report import git_commit

    # Stamped once: editing the checkout while a long grid runs must not relabel the runs still to come.
    code_commit = git_commit()
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [spec for spec in specs if not (out_dir / f"{spec.key}.json").exists()]
    print(f"{len(specs)} runs in the grid, {len(specs) - len(todo)} already done, {len(todo)} to run", flush=True)
    start = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with context.Pool(processes=workers, maxtasksperchild=1) as pool:
        for done, (key, seconds, error) in enumerate(
            pool.imap_unordered(_run_and_save, [(spec, str(out_dir), code_commit) for spec in todo]), start=1
        ):
            status = f"FAILED {error}" if error else f"{seconds:.0f}s"
            elapsed = time.perf_counter() - start
            print(f"[{done}/{len(todo)} {elapsed / 60:.1f} min] {key}: {status}", flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Report


def default_out_dir(budget: str) -> Path:
    """Full-budget runs are the evidence behind docs/rl_results.md, so they live in the repository (5-70 kB each)."""
    if budget == "full":
        return REPO_ROOT / "docs" / "data" / "rl_compare" / budget
    return REPO_ROOT / "runs" / "rl_compare" / budget


def load_results(out_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("*.json"))]


def _binned_curve(result: Dict[str, Any], grid: np.ndarray) -> np.ndarray:
    """Mean training-episode return in each bin of the timestep grid (carried forward over empty bins)."""
    timesteps = np.asarray(result["curve_timesteps"])
    returns = np.asarray(result["curve_returns"])
    values = np.full(len(grid) - 1, np.nan)
    for index in range(len(grid) - 1):
        in_bin = (timesteps > grid[index]) & (timesteps <= grid[index + 1])
        if in_bin.any():
            values[index] = returns[in_bin].mean()
        elif index > 0:
            values[index] = values[index - 1]
    return values


def _style(variant: str) -> Tuple[str, str]:
    colors = {
        "gaussian": "black",
        "default": "tab:blue",
        "legendre": "tab:green",
        "component_average": "tab:orange",
        "none": "tab:red",
    }
    if variant == "gaussian":
        return "black", "-"
    parts = variant.split("-")
    linestyle = "-" if parts[1] == "K2" else "--"
    color = colors.get(parts[2], "tab:purple") if len(parts) > 2 else ("tab:blue" if parts[1] == "K2" else "tab:cyan")
    return color, linestyle


def plot_curves(results: List[Dict[str, Any]], figures_dir: Path, budget: str) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for env_id, setting in ENV_SETTINGS.items():
        env_results = [r for r in results if r["spec"]["env_id"] == env_id]
        if not env_results:
            continue
        total = max(r["spec"]["timesteps"] for r in env_results)
        grid = np.linspace(0, total, 21)
        centres = 0.5 * (grid[1:] + grid[:-1])
        coefs = sorted({r["spec"]["ent_coef"] for r in env_results})
        figure, axes = plt.subplots(1, len(coefs), figsize=(6 * len(coefs), 4), sharey=True, squeeze=False)
        for axis, coef in zip(axes[0], coefs):
            variants = sorted({r["spec"]["variant"] for r in env_results if r["spec"]["ent_coef"] == coef})
            for variant in variants:
                runs = [r for r in env_results if r["spec"]["ent_coef"] == coef and r["spec"]["variant"] == variant]
                curves = np.array([_binned_curve(r, grid) for r in runs])
                color, linestyle = _style(variant)
                with warnings.catch_warnings():  # bins before a run's first finished episode are all-NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    median, low, high = (f(curves, axis=0) for f in (np.nanmedian, np.nanmin, np.nanmax))
                axis.plot(centres, median, color=color, linestyle=linestyle, label=f"{variant} ({len(runs)})")
                axis.fill_between(centres, low, high, color=color, alpha=0.08)
            axis.set_title(f"{env_id}, ent_coef={coef:g}")
            axis.set_xlabel("timesteps")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="lower right")
        axes[0][0].set_ylabel("training return (median over seeds, band min-max)")
        figure.tight_layout()
        path = figures_dir / f"rl_{setting.short_name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    bandit = [r for r in results if r["spec"]["env_id"] == BANDIT_ID and r.get("action_histogram")]
    if bandit:
        figure, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
        edges = np.linspace(-1, 1, len(bandit[0]["action_histogram"]) + 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        positive = max(r["spec"]["ent_coef"] for r in bandit)
        for axis, coef in zip(axes, (0.0, positive)):
            for variant in sorted({r["spec"]["variant"] for r in bandit if r["spec"]["ent_coef"] == coef}):
                runs = [r for r in bandit if r["spec"]["ent_coef"] == coef and r["spec"]["variant"] == variant]
                if "legendre" in variant or "component_average" in variant:
                    continue  # keep the panel readable: default / none / gaussian tell the story
                color, linestyle = _style(variant)
                density = np.mean([r["action_histogram"] for r in runs], axis=0)
                axis.step(centres, density, where="mid", color=color, linestyle=linestyle, label=variant)
            axis.axvspan(-0.3, 0.3, color="grey", alpha=0.15, label="valley")
            axis.set_title(f"TwoPeakBandit final action density (mean over seeds), ent_coef={coef:g}")
            axis.set_xlabel("action")
            axis.legend(fontsize=7)
        axes[0].set_ylabel("density")
        figure.tight_layout()
        path = figures_dir / "rl_bandit_actions.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def _summary(values: List[float]) -> str:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return "-"
    return f"{np.median(array):.2f} [{array.min():.2f}, {array.max():.2f}]"


def results_table(results: List[Dict[str, Any]]) -> str:
    """Markdown table: per environment, ent_coef and variant, median [min, max] over seeds."""
    lines = [
        "| env | ent_coef | policy | seeds | deterministic return | stochastic return | modes (stochastic) | min/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for env_id in ENV_SETTINGS:
        env_results = [r for r in results if r["spec"]["env_id"] == env_id]
        for coef in sorted({r["spec"]["ent_coef"] for r in env_results}):
            variants = sorted(
                {r["spec"]["variant"] for r in env_results if r["spec"]["ent_coef"] == coef},
                key=lambda v: (v != "gaussian", v),
            )
            for variant in variants:
                runs = [r for r in env_results if r["spec"]["ent_coef"] == coef and r["spec"]["variant"] == variant]
                modes = "-"
                if env_id == NAVIGATION_ID:
                    modes = "above/below " + ", ".join(
                        f"{r['mode_fractions']['above']:.2f}/{r['mode_fractions']['below']:.2f}" for r in runs
                    )
                elif env_id == BANDIT_ID:
                    modes = "-/+ peak " + ", ".join(
                        f"{r['mode_fractions']['negative_peak']:.2f}/{r['mode_fractions']['positive_peak']:.2f}"
                        for r in runs
                    )
                minutes = np.median([r["wall_seconds"] for r in runs]) / 60
                lines.append(
                    f"| {ENV_SETTINGS[env_id].short_name} | {coef:g} | {variant} | {len(runs)} "
                    f"| {_summary([r['deterministic_return'] for r in runs])} "
                    f"| {_summary([r['stochastic_return'] for r in runs])} | {modes} | {minutes:.1f} |"
                )
    return "\n".join(lines)


def bandit_regularised_optimum(alphas: Tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)) -> str:
    """Best one-Gaussian and best two-component policies for one step of TwoPeakBandit under ``E[r] + alpha H``.

    As in PPO, the reward sees the action clipped to [-1, 1] and the entropy is that of the unclipped distribution.
    The mixture is searched over symmetric equal-weight pairs ``N(+-mu, s^2)`` (the symmetric optimum); its
    entropy is integrated on a fine grid around the two components. Returns a markdown table.
    """
    from scipy.optimize import minimize

    from sb3_gmm.envs import TwoPeakBanditEnv

    env = TwoPeakBanditEnv()
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(96)
    node_weights = node_weights / node_weights.sum()

    def objective(params: np.ndarray, mixture: bool, alpha: float) -> Tuple[float, float, float]:
        mean, std = float(params[0]), float(np.exp(params[1]))
        centres = (mean, -mean) if mixture else (mean,)
        expected = float(np.mean([node_weights @ env.reward_of((c + std * nodes)[:, None]) for c in centres]))
        if mixture:
            grid = np.linspace(-abs(mean) - 10.0 * std, abs(mean) + 10.0 * std, 40001)
            density = np.mean([np.exp(-0.5 * ((grid - c) / std) ** 2) for c in centres], axis=0)
            density /= np.sqrt(2.0 * np.pi) * std
            entropy = float(-np.sum(density * np.log(np.maximum(density, 1e-300))) * (grid[1] - grid[0]))
        else:
            entropy = 0.5 * np.log(2.0 * np.pi * np.e * std**2)
        return expected + alpha * entropy, expected, entropy

    lines = [
        "| alpha | best Gaussian: mean, std, E[r], objective | best 2-mixture: means, std, E[r], objective | gain |",
        "|---|---|---|---|",
    ]
    for alpha in alphas:
        cells = []
        values = []
        for mixture in (False, True):
            best = None
            for start in ([0.6, -3.0], [0.6, -2.0], [0.3, -1.0], [0.0, -0.5]):
                found = minimize(
                    lambda p, m=mixture, a=alpha: -objective(p, m, a)[0],
                    np.array(start),
                    method="Nelder-Mead",
                    options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000},
                )
                if best is None or found.fun < best.fun:
                    best = found
            value, expected, _ = objective(best.x, mixture, alpha)
            mean = abs(best.x[0])
            where = f"+-{mean:.2f}" if mixture else f"{mean:.2f}"
            cells.append(f"{where}, {np.exp(best.x[1]):.3f}, {expected:.3f}, {value:.4f}")
            values.append(value)
        lines.append(
            f"| {alpha:g} | {cells[0]} | {cells[1]} | {values[1] - values[0]:.4f} (alpha log 2 = "
            f"{alpha * np.log(2):.4f}) |"
        )
    return "\n".join(lines)


def machine_description() -> str:
    from benchmarks.throughput import machine_description as describe

    return describe()


def figure_links(paths: List[Path], page: Path) -> str:
    links = [f"[{path.stem}]({os.path.relpath(path, page.parent)})" for path in paths]
    return "Learning curves and action densities: " + ", ".join(links) + "."


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), choices=list(ENV_SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (full), 0 (quick)")
    parser.add_argument("--components", type=int, nargs="*", default=[2, 4])
    parser.add_argument(
        "--treatments",
        nargs="+",
        default=list(ENTROPY_TREATMENTS),
        choices=list(ENTROPY_TREATMENTS),
        help="entropy treatments of the GMM runs with a positive ent_coef (a smaller grid for costly envs)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default docs/data/rl_compare/full, committed as the evidence; runs/rl_compare/quick)",
    )
    parser.add_argument("--figures", type=Path, default=REPO_ROOT / "docs" / "figures")
    parser.add_argument("--report", action="store_true", help="only build the table and figures from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument(
        "--write",
        nargs="?",
        type=Path,
        const=REPO_ROOT / "docs" / "rl_results.md",
        default=None,
        help="rewrite the generated block of this page (default docs/rl_results.md) from all finished runs",
    )
    args = parser.parse_args(argv)

    seeds = tuple(args.seeds) if args.seeds else ((0, 1, 2) if args.budget == "full" else (0,))
    out_dir = args.out or default_out_dir(args.budget)
    specs = build_grid(tuple(args.envs), args.budget, seeds, tuple(args.components), tuple(args.treatments))
    if args.dry_run:
        for spec in specs:
            print(spec.key, spec.timesteps)
        print(f"{len(specs)} runs")
        return
    if not args.report:
        run_grid(specs, out_dir, args.workers)
    results = load_results(out_dir)
    failed = sorted(path.stem for path in out_dir.glob("*.failed") if not path.with_suffix(".json").exists())
    output = [results_table(results)]
    if any(r["spec"]["env_id"] == BANDIT_ID for r in results):
        output += ["", "TwoPeakBandit, one step, entropy-regularised optimum:", "", bandit_regularised_optimum()]
    if failed:
        output += ["", "failed runs: " + ", ".join(failed)]
    print("\n".join(output))
    figures = plot_curves(results, args.figures, args.budget)
    for path in figures:
        print("wrote", path)
    print("machine:", machine_description())
    if args.write:
        from benchmarks._report import provenance, write_generated

        command = ["python", "benchmarks/rl_compare.py", *(argv if argv is not None else sys.argv[1:])]
        minutes = sum(r["wall_seconds"] for r in results) / 60
        shown_dir = out_dir.relative_to(REPO_ROOT) if out_dir.is_relative_to(REPO_ROOT) else out_dir
        steps = ", ".join(
            f"{setting.short_name} {setting.timesteps[args.budget]:,}"
            for env_id, setting in ENV_SETTINGS.items()
            if any(r["spec"]["env_id"] == env_id for r in results)
        )
        body = "\n".join(
            [
                provenance(command, machine_description(), minutes, "sum of the runs' wall times (1 thread each)"),
                f"Every finished run in `{shown_dir}` is in the table: median [min, max] over seeds of the final "
                f"evaluation return. Steps per run: {steps}.",
                "",
                *output,
                "",
                figure_links(figures, args.write),
            ]
        )
        write_generated(args.write, "benchmarks/rl_compare.py", body, "RL comparison")
        print("wrote", args.write)


if __name__ == "__main__":
    main()
