"""Max-entropy RL with a mixture actor: stock SAC and TQC with SB3's Gaussian vs a K = 4 Gaussian-mixture actor.

Suites (each run is one JSON file under ``--out``, so an interrupted grid resumes where it stopped):

- ``multigoal``: ``sb3_gmm/MultiGoal-v0`` (Haarnoja et al. 2017), learned temperature (``ent_coef="auto"``): SAC
  with ``MlpPolicy``, SAC with ``GMMSACPolicy`` (K = 4) and ``log_pi="sample"`` / ``"estimate"``, TQC with
  ``GMMTQCPolicy`` (K = 4) and with ``MlpPolicy``. Reports the return and the goal coverage: how many of the four
  goals ``--eval-episodes`` stochastic rollouts from the start state reach.
- ``sweep``: the same task at fixed temperatures (``ent_coef`` 0.02, 0.1, 0.5), SAC Gaussian vs SAC GMM K = 4.
- ``pendulum``: ``Pendulum-v1`` with the zoo's SAC settings (20k steps, learning rate 1e-3), Gaussian vs GMM.
- ``lunar``: ``LunarLanderContinuous-v3`` with the tuned SAC settings at 100k steps, Gaussian vs GMM.
- ``throughput``: SAC GMM K = 4 fps over SAC ``MlpPolicy`` fps on Pendulum, the two trained in alternation in one
  process; the ratio is the median over rounds.

Runs go one after the other in this process, one torch thread each. Seeds are aggregated as in rliable (Agarwal et
al. 2021): interquartile mean (IQM) with a 95% percentile-bootstrap interval over seeds (each cell is one task, so
the stratified bootstrap is a plain one).

Usage::

    python benchmarks/maxent_compare.py --suites multigoal pendulum          # the grid, into docs/data/maxent
    python benchmarks/maxent_compare.py --suites sweep throughput
    python benchmarks/maxent_compare.py --report --write                      # tables + figures -> docs page
    python benchmarks/maxent_compare.py --budget tiny --out /tmp/m --suites multigoal   # smoke test
"""

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# One BLAS/OpenMP thread; set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch as th  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MULTIGOAL_ID = "sb3_gmm/MultiGoal-v0"
PAGE = REPO_ROOT / "docs" / "maxent_results.md"
SCRIPT = "benchmarks/maxent_compare.py"
CURVE_BINS = 20
SAVED_TRAJECTORIES = 20
BOOTSTRAP_REPS = 2000


@dataclass(frozen=True)
class Config:
    """An algorithm and actor.

    :param algo: ``"sac"`` (SB3) or ``"tqc"`` (sb3-contrib)
    :param n_components: mixture components; 0 for SB3's ``MlpPolicy`` (squashed diagonal Gaussian)
    :param log_pi: the GMM policy's ``log_pi`` option; None keeps the policy's default
    """

    algo: str
    n_components: int
    log_pi: Optional[str] = None


CONFIGS: Dict[str, Config] = {
    "sac-gaussian": Config("sac", 0),
    "sac-gmm4-sample": Config("sac", 4, "sample"),
    "sac-gmm4-estimate": Config("sac", 4, "estimate"),
    "sac-gmm4": Config("sac", 4),
    "tqc-gmm4": Config("tqc", 4),
    "tqc-gaussian": Config("tqc", 0),
}


@dataclass(frozen=True)
class Task:
    """An environment with its training settings.

    :param env_id: Gymnasium id
    :param short_name: used in file names
    :param timesteps: training steps per budget
    :param algo_kwargs: SAC/TQC keyword arguments (except policy, env, seed, ent_coef)
    :param train_env_kwargs: keyword arguments of the training environment
    :param eval_episodes: stochastic (and, up to 10, deterministic) evaluation episodes per budget
    """

    env_id: str
    short_name: str
    timesteps: Dict[str, int]
    algo_kwargs: Dict[str, Any]
    train_env_kwargs: Dict[str, Any] = field(default_factory=dict)
    eval_episodes: Dict[str, int] = field(default_factory=lambda: {"tiny": 4, "full": 10})


def _tuned_sac_kwargs(env_id: str) -> Dict[str, Any]:
    """The tuned SAC keyword arguments of ``env_id`` without the choices each run makes (mixture size, temperature)."""
    from sb3_gmm.hyperparams import algorithm_kwargs

    kwargs = algorithm_kwargs("sac", env_id)
    kwargs.pop("ent_coef", None)
    kwargs["policy_kwargs"] = {k: v for k, v in kwargs["policy_kwargs"].items() if k not in ("n_components",)}
    return kwargs


TASKS: Dict[str, Task] = {
    # softlearning's multigoal example: 128x128 networks, learning rate 3e-4, batch 64, rewards scaled by 0.1 in
    # training (returns are reported unscaled); SB3's soft target updates instead of its hard ones every 1000 steps.
    "multigoal": Task(
        MULTIGOAL_ID,
        "multigoal",
        timesteps={"tiny": 300, "full": 5_000},
        algo_kwargs=dict(
            learning_rate=3e-4, batch_size=64, learning_starts=500, policy_kwargs=dict(net_arch=[128, 128])
        ),
        train_env_kwargs=dict(reward_scale=0.1),
        eval_episodes={"tiny": 8, "full": 100},
    ),
    # rl-zoo3's sac.yml / tqc.yml entry for Pendulum-v1: 20k steps, learning rate 1e-3, everything else default.
    "pendulum": Task(
        "Pendulum-v1", "pendulum", timesteps={"tiny": 300, "full": 20_000}, algo_kwargs=dict(learning_rate=1e-3)
    ),
    # The project's tuned SAC entry (sb3_gmm.hyperparams, rl-zoo3's settings: 400x300 networks, batch 256, 10k warm-up
    # steps, learning rate lin_7.3e-4) at 100k steps instead of the zoo's 500k, which 2 CPU cores cannot afford for
    # 10 runs. The linear schedule decays over the 100k steps, for both actors alike.
    "lunar": Task(
        "LunarLanderContinuous-v3",
        "lunar",
        timesteps={"tiny": 300, "full": 100_000},
        algo_kwargs=_tuned_sac_kwargs("LunarLanderContinuous-v3"),
    ),
}


@dataclass(frozen=True)
class Suite:
    """Which configurations run on which task at which temperatures."""

    task: str
    configs: Tuple[str, ...]
    ent_coefs: Tuple[str, ...]


SUITES: Dict[str, Suite] = {
    "multigoal": Suite(
        "multigoal", ("sac-gaussian", "sac-gmm4-sample", "sac-gmm4-estimate", "tqc-gmm4", "tqc-gaussian"), ("auto",)
    ),
    "sweep": Suite("multigoal", ("sac-gaussian", "sac-gmm4"), ("0.02", "0.1", "0.5")),
    "pendulum": Suite("pendulum", ("sac-gaussian", "sac-gmm4"), ("auto",)),
    "lunar": Suite("lunar", ("sac-gaussian", "sac-gmm4"), ("auto",)),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run."""

    suite: str
    config: str
    ent_coef: str  # "auto" or a number, as SB3 takes it
    seed: int
    timesteps: int

    @property
    def key(self) -> str:
        return f"{self.suite}__{self.config}__ent{self.ent_coef}__s{self.seed}"

    @property
    def task(self) -> Task:
        return TASKS[SUITES[self.suite].task]


def build_grid(
    suites: Sequence[str], budget: str, seeds: Sequence[int], configs: Optional[Sequence[str]]
) -> List[RunSpec]:
    """Every run, seed-major inside a suite so that a grid cut short has all configurations for its first seeds."""
    specs = []
    for suite_name in suites:
        suite = SUITES[suite_name]
        steps = TASKS[suite.task].timesteps[budget]
        for seed in seeds:
            for ent_coef in suite.ent_coefs:
                for config in suite.configs:
                    if configs is None or config in configs:
                        specs.append(RunSpec(suite_name, config, ent_coef, seed, steps))
    return specs


# ----------------------------------------------------------------------------------------------------------------------
# Training and evaluation


def policy_for(config: Config) -> Tuple[Any, Dict[str, Any]]:
    """Policy class (or SB3 name) and the GMM's policy kwargs."""
    if config.n_components == 0:
        return "MlpPolicy", {}
    import sb3_gmm

    policy = sb3_gmm.GMMSACPolicy if config.algo == "sac" else sb3_gmm.GMMTQCPolicy
    kwargs: Dict[str, Any] = {"n_components": config.n_components}
    if config.log_pi is not None:
        kwargs["log_pi"] = config.log_pi
    return policy, kwargs


def parse_ent_coef(ent_coef: str) -> Any:
    return ent_coef if ent_coef.startswith("auto") else float(ent_coef)


def build_model(spec: RunSpec, budget: str):
    """A SAC or TQC model for the run, on a training environment seeded with the run's seed."""
    from sb3_contrib import TQC
    from stable_baselines3 import SAC

    import sb3_gmm.envs  # noqa: F401  (registers MultiGoal-v0)

    config, task = CONFIGS[spec.config], spec.task
    policy, gmm_kwargs = policy_for(config)
    kwargs = {key: value for key, value in task.algo_kwargs.items() if key != "policy_kwargs"}
    if budget == "tiny":
        kwargs["learning_starts"] = min(kwargs.get("learning_starts", 100), 100)
    policy_kwargs = {**task.algo_kwargs.get("policy_kwargs", {}), **gmm_kwargs}
    env = gym.make(task.env_id, **task.train_env_kwargs)
    algo = SAC if config.algo == "sac" else TQC
    return algo(
        policy, env, ent_coef=parse_ent_coef(spec.ent_coef), seed=spec.seed, policy_kwargs=policy_kwargs, **kwargs
    )


def episode_recorder():
    """A callback that records each finished training episode: timestep, return, goal reached."""
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeRecorder(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rows: List[Tuple[int, float, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    success = float(info.get("is_success", np.nan))
                    self.rows.append((int(self.num_timesteps), float(info["episode"]["r"]), success))
            return True

    return EpisodeRecorder()


def binned_curve(rows: List[Tuple[int, float, float]], total: int, reward_scale: float) -> Dict[str, List[float]]:
    """Mean training return (unscaled) and success rate in ``CURVE_BINS`` equal timestep bins (None if empty)."""
    edges = np.linspace(0, total, CURVE_BINS + 1)
    data = np.array(rows, dtype=float).reshape(-1, 3)
    returns, successes = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = data[(data[:, 0] > low) & (data[:, 0] <= high)]
        returns.append(float(in_bin[:, 1].mean() / reward_scale) if len(in_bin) else None)
        successes.append(float(in_bin[:, 2].mean()) if len(in_bin) and not np.isnan(in_bin[:, 2]).all() else None)
    return {"timesteps": edges[1:].tolist(), "return": returns, "success": successes}


def rollouts(model, env_id: str, episodes: int, deterministic: bool, seed: int) -> Dict[str, Any]:
    """``episodes`` evaluation episodes on unscaled environments, stepped together so the policy sees one batch.

    Returns the per-episode returns, the goal reached (-1 for none; always -1 off MultiGoal) and the positions
    visited by the first ``SAVED_TRAJECTORIES`` episodes (MultiGoal only; the observation is the position).
    """
    envs = [gym.make(env_id) for _ in range(episodes)]
    observations = np.stack([env.reset(seed=seed + index)[0] for index, env in enumerate(envs)])
    alive = np.ones(episodes, dtype=bool)
    returns, goals = np.zeros(episodes), np.full(episodes, -1)
    paths = [[observation.tolist()] for observation in observations[:SAVED_TRAJECTORIES]]
    while alive.any():
        actions, _ = model.predict(observations, deterministic=deterministic)
        for index in np.flatnonzero(alive):
            observation, reward, terminated, truncated, info = envs[index].step(actions[index])
            observations[index] = observation
            returns[index] += reward
            if index < SAVED_TRAJECTORIES:
                paths[index].append(observation.tolist())
            if terminated or truncated:
                alive[index] = False
                goals[index] = info.get("goal_index", -1)
    keep_paths = env_id == MULTIGOAL_ID
    return {"returns": returns.tolist(), "goals": goals.tolist(), "paths": _rounded(paths) if keep_paths else []}


def effective_goals(reached: List[int]) -> float:
    """``exp`` of the entropy of the reached goals' frequencies: 1 for a single goal, 4 for an even split, 0 if none."""
    if not reached:
        return 0.0
    frequencies = np.bincount(reached) / len(reached)
    frequencies = frequencies[frequencies > 0]
    return float(np.exp(-np.sum(frequencies * np.log(frequencies))))


def _rounded(paths: List[List[List[float]]]) -> List[List[List[float]]]:
    return [[[round(value, 2) for value in point] for point in path] for path in paths]


def resolved_options(model) -> Dict[str, Any]:
    """The final temperature and the GMM actor's options (defaults filled in), for the record."""
    if model.log_ent_coef is not None:
        options: Dict[str, Any] = {"ent_coef_final": float(th.exp(model.log_ent_coef.detach()).item())}
    else:
        options = {"ent_coef_final": float(model.ent_coef_tensor.item())}
    for name in ("n_components", "log_pi"):
        value = getattr(model.actor, name, None)
        if value is not None:
            options[name] = value
    return options


def run_one(spec: RunSpec, budget: str, code_commit: str) -> Dict[str, Any]:
    """Train one configuration and evaluate it; returns the run's JSON record."""
    th.set_num_threads(1)
    task = spec.task
    start = time.perf_counter()
    model = build_model(spec, budget)
    recorder = episode_recorder()
    model.learn(total_timesteps=spec.timesteps, callback=recorder)
    train_seconds = time.perf_counter() - start
    reward_scale = task.train_env_kwargs.get("reward_scale", 1.0)
    episodes = task.eval_episodes[budget]
    stochastic = rollouts(model, task.env_id, episodes, deterministic=False, seed=20_000 + 1000 * spec.seed)
    deterministic = rollouts(model, task.env_id, min(episodes, 10), deterministic=True, seed=10_000 + 1000 * spec.seed)
    reached = [goal for goal in stochastic["goals"] if goal >= 0]
    return {
        "spec": asdict(spec),
        "budget": budget,
        "code_commit": code_commit,
        "options": resolved_options(model),
        "curve": binned_curve(recorder.rows, spec.timesteps, reward_scale),
        "stochastic_return": float(np.mean(stochastic["returns"])),
        "deterministic_return": float(np.mean(deterministic["returns"])),
        "eval_episodes": episodes,
        "goal_counts": np.bincount(reached, minlength=4).tolist() if task.env_id == MULTIGOAL_ID else None,
        "coverage": len(set(reached)) if task.env_id == MULTIGOAL_ID else None,
        "effective_goals": effective_goals(reached) if task.env_id == MULTIGOAL_ID else None,
        "success_rate": len(reached) / episodes if task.env_id == MULTIGOAL_ID else None,
        "stochastic_paths": stochastic["paths"],
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
    }


def run_grid(specs: List[RunSpec], budget: str, out_dir: Path) -> None:
    """Run every spec without a JSON in ``out_dir`` yet, one at a time, writing each JSON when it finishes."""
    from benchmarks._report import claimed, git_commit

    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [spec for spec in specs if not (out_dir / f"{spec.key}.json").exists()]
    code_commit = git_commit()
    print(f"{len(specs) - len(todo)} runs already done, {len(todo)} to go (commit {code_commit})", flush=True)
    start = time.perf_counter()
    for done, spec in enumerate(todo, start=1):
        path = out_dir / f"{spec.key}.json"
        with claimed(path) as mine:
            if not mine:
                continue
            try:
                result = run_one(spec, budget, code_commit)
            except Exception as error:  # keep the grid going; the report lists failed runs
                path.with_suffix(".failed").write_text(f"{type(error).__name__}: {error}\n")
                print(f"[{done}/{len(todo)}] {spec.key}: FAILED {type(error).__name__}: {error}", flush=True)
                continue
            path.write_text(json.dumps(result))
        elapsed = (time.perf_counter() - start) / 60
        print(f"[{done}/{len(todo)} {elapsed:.1f} min] {spec.key}: {result['wall_seconds']:.0f}s", flush=True)


def measure_throughput(budget: str, rounds: int, steps: int) -> Dict[str, Any]:
    """SAC GMM K = 4 and SAC MlpPolicy on Pendulum, trained in alternating ``steps``-step rounds after a warm-up."""
    th.set_num_threads(1)
    names = ("sac-gaussian", "sac-gmm4")
    models = {name: build_model(RunSpec("pendulum", name, "auto", 0, steps), budget) for name in names}
    for model in models.values():
        model.learn(total_timesteps=model.learning_starts + steps)  # fills the buffer past learning_starts
    fps: Dict[str, List[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:  # alternate who goes first
            start = time.perf_counter()
            models[name].learn(total_timesteps=steps, reset_num_timesteps=False)
            fps[name].append(steps / (time.perf_counter() - start))
    ratios = [gmm / gaussian for gmm, gaussian in zip(fps["sac-gmm4"], fps["sac-gaussian"])]
    return {
        "rounds": rounds,
        "steps_per_round": steps,
        "fps": fps,
        "ratios": ratios,
        "ratio_median": float(np.median(ratios)),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Statistics (rliable's definitions, in numpy)


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's ``trim_mean(values, 0.25)``, as rliable computes it)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=float), 0.25))


def bootstrap_interval(
    values: Sequence[float], statistic: Callable[[np.ndarray], float], seed: int = 0
) -> Tuple[float, float]:
    """95% percentile-bootstrap interval of ``statistic`` over runs (resampled with replacement)."""
    array = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    samples = [statistic(array[rng.integers(0, len(array), len(array))]) for _ in range(BOOTSTRAP_REPS)]
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def iqm_cell(values: Sequence[float], digits: int = 1) -> str:
    """``IQM [low, high]`` of the values, or ``-`` without any."""
    if len(values) == 0:
        return "-"
    low, high = bootstrap_interval(values, iqm)
    return f"{iqm(np.asarray(values)):.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# ----------------------------------------------------------------------------------------------------------------------
# Report


def load_results(out_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("*__s*.json"))]


def select(
    results: List[Dict[str, Any]], suite: str, config: str, ent_coef: Optional[str] = None
) -> List[Dict[str, Any]]:
    return [
        r
        for r in results
        if r["spec"]["suite"] == suite and r["spec"]["config"] == config and ent_coef in (None, r["spec"]["ent_coef"])
    ]


def present_configs(results: List[Dict[str, Any]], suite: str) -> List[str]:
    return [config for config in SUITES[suite].configs if select(results, suite, config)]


def log_pi_label(runs: List[Dict[str, Any]]) -> str:
    values = sorted({str(r["options"].get("log_pi", "-")) for r in runs})
    return "/".join(values)


def multigoal_table(results: List[Dict[str, Any]], suite: str) -> str:
    lines = [
        "| policy | ent_coef | log_pi | seeds | goals covered (of 4) | per-seed coverage | effective goals "
        "| stochastic return "
        "| deterministic return | success rate | final ent_coef | min/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ent_coef in SUITES[suite].ent_coefs:
        for config in present_configs(results, suite):
            runs = sorted(select(results, suite, config, ent_coef), key=lambda r: r["spec"]["seed"])
            if not runs:
                continue
            lines.append(
                f"| {config} | {ent_coef} | {log_pi_label(runs)} | {len(runs)} "
                f"| {iqm_cell([r['coverage'] for r in runs], 2)} | {' '.join(str(r['coverage']) for r in runs)} "
                f"| {iqm_cell([r['effective_goals'] for r in runs], 2)} "
                f"| {iqm_cell([r['stochastic_return'] for r in runs])} "
                f"| {iqm_cell([r['deterministic_return'] for r in runs])} "
                f"| {iqm_cell([r['success_rate'] for r in runs], 2)} "
                f"| {np.median([r['options']['ent_coef_final'] for r in runs]):.3g} "
                f"| {np.median([r['wall_seconds'] for r in runs]) / 60:.1f} |"
            )
    return "\n".join(lines)


def control_table(results: List[Dict[str, Any]], suite: str) -> str:
    """Returns of a control task (Pendulum, LunarLander): IQM cells plus every seed's deterministic return, so a
    failed seed shows as itself rather than only as a wider interval."""
    lines = [
        "| policy | log_pi | seeds | deterministic return | per-seed deterministic | stochastic return "
        "| final ent_coef | min/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config in present_configs(results, suite):
        runs = sorted(select(results, suite, config), key=lambda r: r["spec"]["seed"])
        per_seed = " ".join(f"{r['deterministic_return']:.0f}" for r in runs)
        lines.append(
            f"| {config} | {log_pi_label(runs)} | {len(runs)} | {iqm_cell([r['deterministic_return'] for r in runs])} "
            f"| {per_seed} "
            f"| {iqm_cell([r['stochastic_return'] for r in runs])} "
            f"| {np.median([r['options']['ent_coef_final'] for r in runs]):.3g} "
            f"| {np.median([r['wall_seconds'] for r in runs]) / 60:.1f} |"
        )
    return "\n".join(lines)


def throughput_text(throughput: Dict[str, Any]) -> str:
    fps = {name: float(np.median(values)) for name, values in throughput["fps"].items()}
    ratios = throughput["ratios"]
    return (
        f"SAC on Pendulum-v1 (zoo settings), {throughput['rounds']} alternating rounds of "
        f"{throughput['steps_per_round']} steps after a warm-up: MlpPolicy {fps['sac-gaussian']:.0f} fps, "
        f"GMM K = 4 {fps['sac-gmm4']:.0f} fps (medians); **ratio {throughput['ratio_median']:.2f}** "
        f"(median of per-round ratios, range {min(ratios):.2f}-{max(ratios):.2f}; target >= 0.8)."
    )


def _plot_band(axis, runs: List[Dict[str, Any]], key: str, label: str) -> None:
    curves = np.array([r["curve"][key] for r in runs], dtype=float)
    steps = np.asarray(runs[0]["curve"]["timesteps"])
    with warnings.catch_warnings():  # bins before a run's first finished episode are all-NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        median, low, high = (f(curves, axis=0) for f in (np.nanmedian, np.nanmin, np.nanmax))
    (line,) = axis.plot(steps, median, label=f"{label} ({len(runs)})")
    axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.1)


def plot_curves(results: List[Dict[str, Any]], suite: str, keys: Sequence[str], path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    configs = present_configs(results, suite)
    if not configs:
        return None
    figure, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for config in configs:
            _plot_band(axis, select(results, suite, config, SUITES[suite].ent_coefs[0]), key, config)
        axis.set_xlabel("timesteps")
        axis.set_ylabel(f"training episode {key}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(
        f"{TASKS[SUITES[suite].task].env_id}, ent_coef {SUITES[suite].ent_coefs[0]}: median over seeds, band min-max",
        fontsize=12 if len(keys) > 1 else 9,  # one panel is too narrow for the title at the default size
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_rollouts(results: List[Dict[str, Any]], suite: str, path: Path) -> Optional[Path]:
    """Stochastic rollouts from the start state of every seed, one panel per (configuration, ent_coef)."""
    import matplotlib.pyplot as plt

    from sb3_gmm.envs.multigoal import GOAL_POSITIONS, GOAL_RADIUS

    cells = [
        (c, e) for e in SUITES[suite].ent_coefs for c in present_configs(results, suite) if select(results, suite, c, e)
    ]
    if not cells:
        return None
    columns = len(present_configs(results, suite))
    rows = int(np.ceil(len(cells) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, (config, ent_coef) in zip(axes.ravel(), cells):
        axis.set_axis_on()
        for seed_index, run in enumerate(
            sorted(select(results, suite, config, ent_coef), key=lambda r: r["spec"]["seed"])
        ):
            for path_points in run["stochastic_paths"]:
                points = np.asarray(path_points)
                axis.plot(points[:, 0], points[:, 1], color=f"C{seed_index}", alpha=0.5, linewidth=0.8)
        for goal in GOAL_POSITIONS:
            axis.add_patch(plt.Circle(goal, GOAL_RADIUS, color="tab:green", alpha=0.3))
        axis.set(xlim=(-7, 7), ylim=(-7, 7), aspect="equal", xticks=[], yticks=[])
        axis.set_title(f"{config}, ent_coef {ent_coef}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_sweep(results: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    configs = present_configs(results, "sweep")
    if not configs:
        return None
    keys = ("coverage", "effective_goals", "stochastic_return")
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8))
    for axis, key in zip(axes, keys):
        for offset, config in enumerate(configs):
            coefs = [e for e in SUITES["sweep"].ent_coefs if select(results, "sweep", config, e)]
            values = [[r[key] for r in select(results, "sweep", config, e)] for e in coefs]
            x = np.array([float(e) for e in coefs]) * (1.0 + 0.06 * (offset - 0.5))  # side by side on the log axis
            centres = [iqm(np.asarray(v)) for v in values]
            intervals = np.array([bootstrap_interval(v, iqm) for v in values]).T
            yerr = np.abs(intervals - np.array(centres))
            axis.errorbar(x, centres, yerr=yerr, marker="o", capsize=3, label=config)
        axis.set_xscale("log")
        axis.set_xticks([float(e) for e in SUITES["sweep"].ent_coefs], SUITES["sweep"].ent_coefs)
        axis.minorticks_off()
        axis.set_xlabel("fixed ent_coef (training rewards scaled by 0.1)")
        axis.set_ylabel(f"{key.replace('_', ' ')} (IQM, 95% CI)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def make_figures(results: List[Dict[str, Any]], figures_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")  # file-only backend, chosen before the plot functions import pyplot
    figures_dir.mkdir(parents=True, exist_ok=True)
    made = [
        plot_curves(results, "multigoal", ("return", "success"), figures_dir / "maxent_multigoal_curves.png"),
        plot_rollouts(results, "multigoal", figures_dir / "maxent_multigoal_rollouts.png"),
        plot_sweep(results, figures_dir / "maxent_sweep.png"),
        plot_rollouts(results, "sweep", figures_dir / "maxent_sweep_rollouts.png"),
        plot_curves(results, "pendulum", ("return",), figures_dir / "maxent_pendulum_curves.png"),
        plot_curves(results, "lunar", ("return",), figures_dir / "maxent_lunar_curves.png"),
    ]
    return [path for path in made if path is not None]


def report(results: List[Dict[str, Any]], throughput: Optional[Dict[str, Any]], failed: List[str]) -> str:
    """The markdown tables of every suite that has finished runs."""
    sections = []
    titles = {
        "multigoal": "MultiGoal-v0, learned temperature",
        "sweep": "MultiGoal-v0, fixed temperatures",
        "pendulum": "Pendulum-v1, learned temperature",
        "lunar": "LunarLanderContinuous-v3, learned temperature",
    }
    for suite, title in titles.items():
        runs = [r for r in results if r["spec"]["suite"] == suite]
        if runs:
            steps = ", ".join(f"{s:,}" for s in sorted({r["spec"]["timesteps"] for r in runs}))
            table = control_table(results, suite) if suite in ("pendulum", "lunar") else multigoal_table(results, suite)
            sections += [f"#### {title} ({steps} steps per run)", "", table, ""]
    if throughput is not None:
        sections += ["#### Throughput", "", throughput_text(throughput), ""]
    if failed:
        sections += ["failed runs: " + ", ".join(failed), ""]
    return "\n".join(sections)


def write_page(page: Path, argv: Sequence[str], body: str, results: List[Dict[str, Any]], figures: List[Path]) -> None:
    from benchmarks._report import provenance, run_record, write_generated

    minutes = sum(r["wall_seconds"] for r in results) / 60
    commits = sorted({r["code_commit"] for r in results})
    links = ", ".join(f"[{path.stem}]({os.path.relpath(path, page.parent)})" for path in figures)
    text = "\n".join(
        [
            provenance(run_record("benchmarks.maxent_compare", argv), minutes, "sum of the runs' wall times"),
            f"Runs made at commit(s) {', '.join(f'`{c}`' for c in commits)}, each with one torch thread "
            "(one run at a time, except LunarLander: two side by side, one per core). "
            "Cells: IQM over seeds with a 95% bootstrap interval; returns are unscaled environment returns.",
            "",
            body,
            f"Figures: {links}." if links else "",
        ]
    )
    write_generated(page, SCRIPT, text, "Max-entropy RL with a mixture actor")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="*", default=[], choices=[*SUITES, "throughput"], help="what to run")
    parser.add_argument("--budget", choices=("tiny", "full"), default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS), help="only these policies")
    parser.add_argument("--throughput-rounds", type=int, default=7)
    parser.add_argument("--throughput-steps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "data" / "maxent")
    parser.add_argument("--figures", type=Path, default=REPO_ROOT / "docs" / "figures")
    parser.add_argument("--report", action="store_true", help="print the tables of the finished runs")
    parser.add_argument("--write", nargs="?", type=Path, const=PAGE, default=None, help="regenerate this page")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    args = parser.parse_args(argv)

    specs = build_grid([s for s in args.suites if s in SUITES], args.budget, args.seeds, args.configs)
    if args.dry_run:
        print("\n".join(f"{spec.key} {spec.timesteps}" for spec in specs) + f"\n{len(specs)} runs")
        return
    run_grid(specs, args.budget, args.out)
    throughput_path = args.out / "throughput.json"
    if "throughput" in args.suites:
        throughput_path.parent.mkdir(parents=True, exist_ok=True)
        result = measure_throughput(args.budget, args.throughput_rounds, args.throughput_steps)
        throughput_path.write_text(json.dumps(result))
    if not (args.report or args.write):
        return
    results = load_results(args.out)
    throughput = json.loads(throughput_path.read_text()) if throughput_path.exists() else None
    failed = sorted(p.stem for p in args.out.glob("*.failed") if not p.with_suffix(".json").exists())
    body = report(results, throughput, failed)
    print(body)
    figures = make_figures(results, args.figures)
    if args.write:
        write_page(args.write, argv if argv is not None else sys.argv[1:], body, results, figures)
        print("wrote", args.write)


if __name__ == "__main__":
    main()
