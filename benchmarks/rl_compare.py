"""PPO with a Gaussian (SB3 MlpPolicy) vs a Gaussian-mixture policy under several entropy treatments.

Grid: for every environment, seed and entropy coefficient (0 and a positive one)

- ``gaussian``: SB3's ``MlpPolicy`` (diagonal Gaussian, no gSDE),
- ``gmm-K{2,4}-<entropy>``: :class:`sb3_gmm.GMMActorCriticPolicy` with the library default estimator, ``legendre``,
  ``component_average`` or ``none`` (the distribution's ``entropy()`` returns None, so PPO falls back to its
  one-sample ``-log pi(a)`` estimate). With ``ent_coef = 0`` every estimator gives the same run, so the grid runs a
  single GMM per K there (``gmm-K<k>``).

PPO settings come from :mod:`sb3_gmm.hyperparams` (the zoo's entries without gSDE); the grid adds its budgets, the
positive ent_coef where the tuned one is 0 and the evaluation episodes. Each run records its training curve (binned,
:data:`CURVE_BINS` bins), the mean return of deterministic (``mode()``) and stochastic episodes at the end and, on
the multimodal tasks, how the stochastic policy splits between the two optimal modes; one JSON file per run, so an
interrupted grid resumes.

Usage::

    python -m benchmarks.rl_compare --budget quick             # smoke test, a few minutes
    nice -n 5 python -m benchmarks.rl_compare --budget full    # the grid behind docs/rl_results.md
    python -m benchmarks.rl_compare --budget full --report --write   # table, figures and page from finished runs
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

from benchmarks import _report  # noqa: E402
from sb3_gmm import GMMActorCriticPolicy, GMMDistribution  # noqa: E402
from sb3_gmm.hyperparams import BANDIT_ID, NAVIGATION_ID, algorithm_kwargs, hyperparams  # noqa: E402

REPO_ROOT = _report.REPO_ROOT
ENTROPY_TREATMENTS = ("default", "legendre", "component_average", "none")
CURVE_BINS = 100  # bins of a stored training curve (the figures average 5 of them per point)
FIGURE_BINS = 20


@dataclass(frozen=True)
class EnvSetting:
    """What the grid adds to the tuned PPO entry of one environment.

    :param env_id: Gymnasium id (its PPO settings: ``sb3_gmm.hyperparams.hyperparams("ppo", env_id)``)
    :param short_name: used in file names and figure titles
    :param timesteps: training steps per budget name
    :param eval_episodes: episodes of the final deterministic and stochastic evaluation
    :param positive_ent_coef: the grid's positive entropy coefficient where the tuned one is 0
    """

    env_id: str
    short_name: str
    timesteps: Dict[str, int]
    eval_episodes: int = 10
    positive_ent_coef: Optional[float] = None

    @property
    def tuned(self) -> Dict[str, Any]:
        return hyperparams("ppo", self.env_id)

    @property
    def ent_coef(self) -> float:
        return self.positive_ent_coef or self.tuned["ent_coef"]

    def ppo_kwargs(self, n_components: int) -> Dict[str, Any]:
        """PPO keyword arguments but ``ent_coef``, with ``n_components`` in the policy kwargs (0: a Gaussian)."""
        kwargs = algorithm_kwargs("ppo", self.env_id)
        kwargs.pop("ent_coef")
        policy_kwargs = {key: value for key, value in kwargs.pop("policy_kwargs", {}).items() if key != "n_components"}
        return kwargs | {"policy_kwargs": policy_kwargs | ({"n_components": n_components} if n_components else {})}


ENV_SETTINGS: Dict[str, EnvSetting] = {
    setting.env_id: setting
    for setting in (
        EnvSetting(BANDIT_ID, "bandit", {"quick": 4096, "full": 20480}, eval_episodes=50),
        EnvSetting(NAVIGATION_ID, "navigation", {"quick": 8192, "full": 40960}, eval_episodes=50),
        EnvSetting("Pendulum-v1", "pendulum", {"quick": 4096, "full": 65536}, positive_ent_coef=0.01),
        # The zoo's gSDE-specific log_std_init=-3.29 is dropped (both policies start from their default std).
        EnvSetting("MountainCarContinuous-v0", "mountaincar", {"quick": 2000, "full": 20000}),
        EnvSetting("LunarLanderContinuous-v3", "lunarlander", {"quick": 16384, "full": 300000}),
    )
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
    # Training-episode returns per bin of the run's steps: right bin edges, mean return (None: no episode ended in
    # the bin) and episode count. Episodes ending after the step budget (the last rollout's overshoot) are left out.
    curve_timesteps: List[int] = field(default_factory=list)
    curve_returns: List[Optional[float]] = field(default_factory=list)
    curve_episodes: List[int] = field(default_factory=list)
    deterministic_return: float = float("nan")
    stochastic_return: float = float("nan")
    stochastic_returns: List[float] = field(default_factory=list)
    mode_fractions: Optional[Dict[str, float]] = None
    action_histogram: Optional[List[float]] = None
    wall_seconds: float = float("nan")
    entropy_method_resolved: Optional[str] = None
    entropy_kwargs_resolved: Optional[Dict[str, Any]] = None  # the estimator's options, defaults filled in
    code_commit: Optional[str] = None  # the library's commit, so a grid run over several commits says so


def bin_curve(timesteps: List[int], returns: List[float], total: int, bins: int = CURVE_BINS):
    """``(right edges, mean return or None, episode count)`` per bin of ``[0, total]`` steps (bin i: (e_i, e_i+1])."""
    edges = np.linspace(0, total, bins + 1)
    timesteps, returns = np.asarray(timesteps), np.asarray(returns, dtype=float)
    inside = (timesteps > 0) & (timesteps <= total)
    index = np.searchsorted(edges, timesteps[inside], side="left") - 1
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=returns[inside], minlength=bins)
    means = [float(s / c) if c else None for s, c in zip(sums, counts)]
    return [int(edge) for edge in edges[1:]], means, counts.tolist()


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
                specs.append(RunSpec(env_id, "gaussian", 0, "gaussian" if ent_coef else "any", ent_coef, seed, steps))
                for k in components:
                    if ent_coef == 0.0:
                        specs.append(RunSpec(env_id, f"gmm-K{k}", k, "any", ent_coef, seed, steps))
                    else:
                        specs += [RunSpec(env_id, f"gmm-K{k}-{e}", k, e, ent_coef, seed, steps) for e in treatments]
    return specs


class NoEntropyGMMDistribution(GMMDistribution):
    """``entropy()`` returns None: SB3 then uses ``-log pi(a)`` of the batch."""

    def entropy(self) -> None:  # type: ignore[override]
        return None


class NoEntropyGMMActorCriticPolicy(GMMActorCriticPolicy):
    distribution_class = NoEntropyGMMDistribution


def policy_for(spec: RunSpec) -> Tuple[Any, Dict[str, Any]]:
    """Policy class (or SB3 name) and the extra policy kwargs (the estimator) of a run."""
    if spec.n_components == 0:
        return "MlpPolicy", {}
    if spec.entropy == "none":
        return NoEntropyGMMActorCriticPolicy, {}
    return GMMActorCriticPolicy, {} if spec.entropy in ("default", "any") else {"entropy_method": spec.entropy}


def make_envs(spec: RunSpec, n_envs: int, seed: int, normalize_from=None):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import sb3_gmm.envs  # noqa: F401  (registers the built-in environments)

    vec_env = make_vec_env(spec.env_id, n_envs=n_envs, seed=seed)
    tuned = ENV_SETTINGS[spec.env_id].tuned
    if not tuned.get("normalize", False):
        return vec_env
    if normalize_from is None:
        return VecNormalize(vec_env, gamma=tuned.get("gamma", 0.99))
    vec_env = VecNormalize(vec_env, training=False, norm_reward=False)
    vec_env.obs_rms = normalize_from.obs_rms
    return vec_env


def evaluate(model, spec: RunSpec, episodes: int, deterministic: bool, seed: int) -> Tuple[List[float], List[int]]:
    """Returns of ``episodes`` episodes, and on the navigation task the side (+1 above, -1 below, 0 neither)."""
    train_env = model.get_env()
    normalizer = train_env if ENV_SETTINGS[spec.env_id].tuned.get("normalize", False) else None
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


class EpisodeRecorder:
    """SB3 callback (built lazily, SB3 is imported in the worker) collecting finished training episodes."""

    @staticmethod
    def make():
        from stable_baselines3.common.callbacks import BaseCallback

        class Recorder(BaseCallback):
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

        return Recorder()


def run_one(spec: RunSpec, code_commit: str) -> RunResult:
    """Train and evaluate one configuration.

    :param spec: the configuration
    :param code_commit: the commit the grid started from, recorded in the result
    """
    th.set_num_threads(1)
    from stable_baselines3 import PPO

    from sb3_gmm.entropy import get_estimator

    setting = ENV_SETTINGS[spec.env_id]
    start = time.perf_counter()
    env = make_envs(spec, setting.tuned["n_envs"], spec.seed)
    policy, estimator_kwargs = policy_for(spec)
    kwargs = setting.ppo_kwargs(spec.n_components)
    kwargs["policy_kwargs"] |= estimator_kwargs
    model = PPO(policy, env, ent_coef=spec.ent_coef, seed=spec.seed, verbose=0, **kwargs)
    recorder = EpisodeRecorder.make()
    model.learn(total_timesteps=spec.timesteps, callback=recorder)
    curve = bin_curve(recorder.timesteps, recorder.returns, spec.timesteps)
    result = RunResult(spec=asdict(spec), **dict(zip(("curve_timesteps", "curve_returns", "curve_episodes"), curve)))
    if spec.n_components:
        result.entropy_method_resolved = str(model.policy.entropy_method)
        if spec.entropy != "none":
            options = dict(getattr(model.policy, "entropy_kwargs", None) or {})
            result.entropy_kwargs_resolved = get_estimator(model.policy.entropy_method).resolve_options(options)
    result.code_commit = code_commit
    deterministic, _ = evaluate(model, spec, setting.eval_episodes, True, seed=10_000 + spec.seed)
    stochastic, sides = evaluate(model, spec, setting.eval_episodes, False, seed=20_000 + spec.seed)
    result.deterministic_return, result.stochastic_return = float(np.mean(deterministic)), float(np.mean(stochastic))
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

    # Stamped once: editing the checkout while a long grid runs must not relabel the runs still to come.
    code_commit = _report.git_commit()
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [spec for spec in specs if not (out_dir / f"{spec.key}.json").exists()]
    print(f"{len(specs)} runs in the grid, {len(specs) - len(todo)} already done, {len(todo)} to run", flush=True)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes=workers, maxtasksperchild=1) as pool:
        jobs = [(spec, str(out_dir), code_commit) for spec in todo]
        for done, (key, seconds, error) in enumerate(pool.imap_unordered(_run_and_save, jobs), start=1):
            status = f"FAILED {error}" if error else f"{seconds:.0f}s"
            print(f"[{done}/{len(todo)} {(time.perf_counter() - start) / 60:.1f} min] {key}: {status}", flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Summarise and render


def default_out_dir(budget: str) -> Path:
    """Full-budget runs are the evidence behind docs/rl_results.md, so they live in the repository (3-15 kB each)."""
    if budget == "full":
        return REPO_ROOT / "docs" / "data" / "rl_compare" / budget
    return REPO_ROOT / "runs" / "rl_compare" / budget


def load_results(out_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("*.json"))]


def figure_curve(result: Dict[str, Any], bins: int = FIGURE_BINS) -> np.ndarray:
    """The stored curve merged into ``bins`` bins (episode-weighted means), carried forward over empty bins."""
    counts = np.asarray(result["curve_episodes"], dtype=float).reshape(bins, -1)
    returns = np.nan_to_num(np.asarray(result["curve_returns"], dtype=float)).reshape(bins, -1)
    values = np.full(bins, np.nan)
    for index in range(bins):
        if counts[index].sum() > 0:
            values[index] = (counts[index] * returns[index]).sum() / counts[index].sum()
        elif index > 0:
            values[index] = values[index - 1]
    return values


def _runs_by(results: List[Dict[str, Any]], env_id: str, coef: float) -> Dict[str, List[Dict[str, Any]]]:
    """The runs of one environment and ent_coef, per variant (Gaussian first)."""
    runs = [r for r in results if r["spec"]["env_id"] == env_id and r["spec"]["ent_coef"] == coef]
    variants = sorted({r["spec"]["variant"] for r in runs}, key=lambda v: (v != "gaussian", v))
    return {variant: [r for r in runs if r["spec"]["variant"] == variant] for variant in variants}


def _plot_env(plt: Any, env_results: List[Dict[str, Any]], setting: EnvSetting, path: Path) -> None:
    grid = np.linspace(0, max(r["spec"]["timesteps"] for r in env_results), FIGURE_BINS + 1)
    centres = 0.5 * (grid[1:] + grid[:-1])
    coefs = sorted({r["spec"]["ent_coef"] for r in env_results})
    figure, axes = plt.subplots(1, len(coefs), figsize=(6 * len(coefs), 4), sharey=True, squeeze=False)
    for axis, coef in zip(axes[0], coefs):
        for variant, runs in sorted(_runs_by(env_results, setting.env_id, coef).items()):
            curves = np.array([figure_curve(r) for r in runs])
            color, linestyle = _style(variant)
            with warnings.catch_warnings():  # bins before a run's first finished episode are all-NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                median, low, high = (f(curves, axis=0) for f in (np.nanmedian, np.nanmin, np.nanmax))
            axis.plot(centres, median, color=color, linestyle=linestyle, label=f"{variant} ({len(runs)})")
            axis.fill_between(centres, low, high, color=color, alpha=0.08)
        axis.set(title=f"{setting.env_id}, ent_coef={coef:g}", xlabel="timesteps")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("training return (median over seeds, band min-max)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_bandit_actions(plt: Any, bandit: List[Dict[str, Any]], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    edges = np.linspace(-1, 1, len(bandit[0]["action_histogram"]) + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for axis, coef in zip(axes, (0.0, max(r["spec"]["ent_coef"] for r in bandit))):
        for variant, runs in sorted(_runs_by(bandit, BANDIT_ID, coef).items()):
            if "legendre" in variant or "component_average" in variant:
                continue  # keep the panel readable: default / none / gaussian tell the story
            color, linestyle = _style(variant)
            density = np.mean([r["action_histogram"] for r in runs], axis=0)
            axis.step(centres, density, where="mid", color=color, linestyle=linestyle, label=variant)
        axis.axvspan(-0.3, 0.3, color="grey", alpha=0.15, label="valley")
        axis.set(title=f"TwoPeakBandit final action density (mean over seeds), ent_coef={coef:g}", xlabel="action")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("density")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(results: List[Dict[str, Any]], figures_dir: Path) -> List[Path]:
    """One learning-curve figure per environment and the bandit's action densities."""
    plt = _report.pyplot()
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for env_id, setting in ENV_SETTINGS.items():
        env_results = [r for r in results if r["spec"]["env_id"] == env_id]
        if env_results:
            paths.append(figures_dir / f"rl_{setting.short_name}.png")
            _plot_env(plt, env_results, setting, paths[-1])
    bandit = [r for r in results if r["spec"]["env_id"] == BANDIT_ID and r.get("action_histogram")]
    if bandit:
        paths.append(figures_dir / "rl_bandit_actions.png")
        _plot_bandit_actions(plt, bandit, paths[-1])
    return paths


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


def _summary(values: List[float]) -> str:
    array = np.asarray(values, dtype=float)
    return f"{np.median(array):.2f} [{array.min():.2f}, {array.max():.2f}]" if array.size else "-"


def _modes(env_id: str, runs: List[Dict[str, Any]]) -> str:
    """How the stochastic policy splits between the two optimal modes, per run."""
    if env_id == NAVIGATION_ID:
        return "above/below " + ", ".join(
            f"{r['mode_fractions']['above']:.2f}/{r['mode_fractions']['below']:.2f}" for r in runs
        )
    if env_id == BANDIT_ID:
        pairs = [(r["mode_fractions"]["negative_peak"], r["mode_fractions"]["positive_peak"]) for r in runs]
        return "-/+ peak " + ", ".join(f"{negative:.2f}/{positive:.2f}" for negative, positive in pairs)
    return "-"


def results_table(results: List[Dict[str, Any]]) -> str:
    """Markdown table: per environment, ent_coef and variant, median [min, max] over seeds."""
    rows = []
    for env_id, setting in ENV_SETTINGS.items():
        for coef in sorted({r["spec"]["ent_coef"] for r in results if r["spec"]["env_id"] == env_id}):
            for variant, runs in _runs_by(results, env_id, coef).items():
                rows.append([
                    setting.short_name, f"{coef:g}", variant, len(runs),
                    *(_summary([r[key] for r in runs]) for key in ("deterministic_return", "stochastic_return")),
                    _modes(env_id, runs), f"{np.median([r['wall_seconds'] for r in runs]) / 60:.1f}",
                ])  # fmt: skip
    header = ["env", "ent_coef", "policy", "seeds", "deterministic return", "stochastic return", "modes (stochastic)"]
    return _report.markdown_table(header + ["min/run"], rows)


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


def render(results: List[Dict[str, Any]], failed: List[str], figures: List[Path], out_dir: Path, args) -> str:
    """The page's generated block (and what is printed)."""
    envs = [setting for env_id, setting in ENV_SETTINGS.items() if any(r["spec"]["env_id"] == env_id for r in results)]
    steps = ", ".join(f"{setting.short_name} {setting.timesteps[args.budget]:,}" for setting in envs)
    shown_dir = out_dir.relative_to(REPO_ROOT) if out_dir.is_relative_to(REPO_ROOT) else out_dir
    minutes = sum(r["wall_seconds"] for r in results) / 60
    record = _report.run_record("benchmarks.rl_compare", args.argv)
    lines = [
        _report.provenance(record, minutes, "sum of the runs' wall times (1 thread each)"),
        f"Runs made at commit(s) {', '.join(sorted({str(r['code_commit']) for r in results}))}. Every finished run in "
        f"`{shown_dir}` is in the table: median [min, max] over seeds of the final evaluation return. Steps per run: "
        f"{steps}.",
        "",
        results_table(results),
    ]
    if any(r["spec"]["env_id"] == BANDIT_ID for r in results):
        lines += ["", "TwoPeakBandit, one step, entropy-regularised optimum:", "", bandit_regularised_optimum()]
    if failed:
        lines += ["", "failed runs: " + ", ".join(failed)]
    page_dir = (args.write or REPO_ROOT / "docs" / "rl_results.md").parent
    links = [f"[{path.stem}]({os.path.relpath(path, page_dir)})" for path in figures]
    return "\n".join(lines + ["", "Learning curves and action densities: " + ", ".join(links) + "."])


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), choices=list(ENV_SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (full), 0 (quick)")
    parser.add_argument("--components", type=int, nargs="*", default=[2, 4])
    parser.add_argument(
        "--treatments", nargs="+", default=list(ENTROPY_TREATMENTS), choices=list(ENTROPY_TREATMENTS),
        help="entropy treatments of the GMM runs with a positive ent_coef (a smaller grid for costly envs)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="run folder (default docs/data/rl_compare/full; quick: runs/)")
    parser.add_argument("--figures", type=Path, default=REPO_ROOT / "docs" / "figures")
    parser.add_argument("--report", action="store_true", help="only build the table and figures from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument(
        "--write", nargs="?", type=Path, const=REPO_ROOT / "docs" / "rl_results.md",
        help="rewrite the generated block of this page (default docs/rl_results.md) from all finished runs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    seeds = tuple(args.seeds) if args.seeds else ((0, 1, 2) if args.budget == "full" else (0,))
    out_dir = args.out or default_out_dir(args.budget)
    specs = build_grid(tuple(args.envs), args.budget, seeds, tuple(args.components), tuple(args.treatments))
    if args.dry_run:
        print("\n".join(f"{spec.key} {spec.timesteps}" for spec in specs) + f"\n{len(specs)} runs")
        return
    if not args.report:
        run_grid(specs, out_dir, args.workers)
    results = load_results(out_dir)
    failed = sorted(path.stem for path in out_dir.glob("*.failed") if not path.with_suffix(".json").exists())
    figures = plot_curves(results, args.figures)
    body = render(results, failed, figures, out_dir, args)
    print(body)
    if args.write:
        _report.write_generated(args.write, "benchmarks/rl_compare.py", body, "RL comparison")
        print("wrote", args.write)


if __name__ == "__main__":
    main()
