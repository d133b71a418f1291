"""SAC's own objective, measured exactly: how far each actor ends from the max-entropy optimal policy on a bandit.

On ``sb3_gmm/TwoPeakBandit-v0`` (1-D action, two equally good reward peaks at +-0.6 with a penalised valley between)
the next observation does not depend on the action, so the soft Q-function is ``r(a)`` plus a constant and the
policy SAC converges to at a fixed temperature ``alpha`` is known in closed form at every state:

    pi*(a) = exp(r(a) / alpha) / Z,    a in [-1, 1].

It is bimodal. SAC's actor loss is, per state, ``alpha * KL(pi || pi*)`` up to a constant, so that KL is exactly
how much of the max-entropy objective an actor leaves on the table (``alpha * KL`` per step). Here it is computed
by quadrature on a fine grid of pre-squash actions ``u`` (``a = tanh(u)``; the KL is the same in either variable),
from the actor's exact log density, for SB3's squashed Gaussian (``MlpPolicy``) and the squashed mixture
(``GMMSACPolicy``, K = 4) after training with stock SAC. Also reported: the smaller of the two peaks' probability
masses (``P(a < 0)`` and ``P(a > 0)``; pi* has 0.5) and the deterministic return (the optimum is 5.0).

A single Gaussian cannot be bimodal: at best it sits on one peak, which costs ``log 2`` = 0.69 nats of KL where the
peaks are well separated. A mixture can put a component on each peak.

Usage::

    python -m benchmarks.maxent_bandit                  # the grid (~1 min per run), JSON per run under docs/data
    python -m benchmarks.maxent_bandit --report --write # tables + figure -> docs/maxent_results.md
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch as th  # noqa: E402

from benchmarks import _report  # noqa: E402
from benchmarks.maxent_compare import CONFIGS, PAGE, iqm_cell, policy_for  # noqa: E402

ENV_ID = "sb3_gmm/TwoPeakBandit-v0"
SCRIPT = "benchmarks/maxent_bandit.py"
OUT_DIR = _report.DOCS / "data" / "maxent_bandit"
ACTORS = ("sac-gaussian", "sac-gmm4-sample", "sac-gmm4-estimate")
TEMPERATURES = ("0.05", "0.2")
SEEDS = (0, 1, 2, 3, 4)
TIMESTEPS = 5000
# Small networks and a short warm-up: the task is a 1-D function of the action.
SAC_KWARGS: Dict[str, Any] = dict(
    learning_rate=1e-3, batch_size=256, learning_starts=500, policy_kwargs=dict(net_arch=[64, 64])
)
# The quadrature grid over pre-squash actions u (a = tanh u): |u| <= 7 holds all but ~1e-12 of any policy here.
GRID_LIMIT, GRID_POINTS = 7.0, 28_001
# Observations at which the policy is compared with pi* (the fraction of the episode still to play).
EVAL_OBSERVATIONS = (1.0, 0.6, 0.2)
LOG_PI_MODES = ("sample", "estimate")
# Adam steps of the perfect-critic runs: the SAC runs' gradient steps (TIMESTEPS - learning_starts).
DIRECT_STEPS = 4500


def optimal_log_density(u: np.ndarray, reward_of, alpha: float) -> np.ndarray:
    """``log pi*(u)``: the Boltzmann policy over ``a = tanh(u)`` as a density in ``u`` (Jacobian included)."""
    actions = np.tanh(u)
    log_unnormalised = reward_of(actions[:, None]) / alpha + np.log1p(-(actions**2) + 1e-300)
    shift = log_unnormalised.max()
    log_z = shift + np.log(np.trapezoid(np.exp(log_unnormalised - shift), u))
    return log_unnormalised - log_z


def policy_log_density(model, u: np.ndarray, observation: float) -> np.ndarray:
    """The actor's exact log density of pre-squash actions ``u`` at one observation (both actors' own formulas)."""
    from stable_baselines3.common.distributions import DiagGaussianDistribution

    actor = model.actor
    observations = th.full((len(u), 1), observation, dtype=th.float32)
    gaussian_actions = th.as_tensor(u, dtype=th.float32).unsqueeze(-1)
    with th.no_grad():
        mean_actions, log_std, kwargs = actor.get_action_dist_params(observations)
        distribution = actor.action_dist.proba_distribution(mean_actions, log_std, **kwargs)
        if hasattr(distribution, "gaussian_log_prob"):  # the mixture: density before the squash
            log_density = distribution.gaussian_log_prob(gaussian_actions)
        else:  # SB3's squashed Gaussian: its parent's (unsquashed) log_prob
            log_density = DiagGaussianDistribution.log_prob(distribution, gaussian_actions)
    return log_density.double().numpy()


def kl_and_masses(log_p: np.ndarray, log_q: np.ndarray, u: np.ndarray) -> Dict[str, float]:
    p = np.exp(log_p)
    integrand = p * np.where(p > 0, log_p - log_q, 0.0)  # 0 log 0 = 0 where the policy has no mass
    return {
        "kl": float(np.trapezoid(integrand, u)),
        "mass": float(np.trapezoid(p, u)),
        "mass_negative": float(np.trapezoid(np.where(u < 0, p, 0.0), u)),
        "mass_positive": float(np.trapezoid(np.where(u > 0, p, 0.0), u)),
    }


def run_one(actor: str, temperature: str, seed: int, timesteps: int) -> Dict[str, Any]:
    from stable_baselines3 import SAC

    import sb3_gmm.envs  # noqa: F401  (registers the bandit)

    th.set_num_threads(1)
    start = time.perf_counter()
    policy, gmm_kwargs = policy_for(CONFIGS[actor])
    kwargs = {key: value for key, value in SAC_KWARGS.items() if key != "policy_kwargs"}
    policy_kwargs = {**SAC_KWARGS["policy_kwargs"], **gmm_kwargs}
    env = gym.make(ENV_ID)
    model = SAC(policy, env, ent_coef=float(temperature), seed=seed, policy_kwargs=policy_kwargs, **kwargs)
    model.learn(total_timesteps=timesteps)
    train_seconds = time.perf_counter() - start
    alpha = float(temperature)
    u = np.linspace(-GRID_LIMIT, GRID_LIMIT, GRID_POINTS)
    log_optimal = optimal_log_density(u, env.unwrapped.reward_of, alpha)
    log_densities = [policy_log_density(model, u, observation) for observation in EVAL_OBSERVATIONS]
    per_observation = [
        {"observation": observation, **kl_and_masses(log_density, log_optimal, u)}
        for observation, log_density in zip(EVAL_OBSERVATIONS, log_densities)
    ]
    first = per_observation[0]
    # The densities at the first observation, thinned for the figure.
    stride = 40
    density = np.exp(log_densities[0])[::stride]
    eval_env = gym.make(ENV_ID)
    observation, _ = eval_env.reset(seed=10_000 + seed)
    deterministic_return, done = 0.0, False
    while not done:
        action, _ = model.predict(observation, deterministic=True)
        observation, reward, terminated, truncated, _ = eval_env.step(action)
        deterministic_return += float(reward)
        done = terminated or truncated
    return {
        "actor": actor,
        "temperature": temperature,
        "seed": seed,
        "timesteps": timesteps,
        "kl": float(np.mean([row["kl"] for row in per_observation])),
        "min_peak_mass": float(np.mean([min(row["mass_negative"], row["mass_positive"]) for row in per_observation])),
        "per_observation": per_observation,
        "deterministic_return": deterministic_return,
        "first_observation_mass": first["mass"],
        "density_u": u[::stride].tolist(),
        "density": density.tolist(),
        "optimal_density": np.exp(log_optimal)[::stride].tolist(),
        "train_seconds": train_seconds,
    }


def direct_one(log_pi: str, temperature: str, seed: int, steps: int) -> Dict[str, Any]:
    """The actor alone against the known reward (a perfect critic): Adam on one state's mixture, SAC's actor loss.

    ``sample``: ``mean(alpha * log pi(a) - r(a))``; ``estimate``: ``mean(-alpha * H_est - r(a))``, both over 256
    implicitly reparameterised samples per step, as the GMM actor computes them. Isolates the actor's gradient
    estimators from critic learning. Returns the KL to pi* and the peak masses every ``steps // 10`` steps.
    """
    import sb3_gmm.envs  # noqa: F401
    from sb3_gmm.maxent.distributions import SquashedGMMDistribution

    th.set_num_threads(1)
    th.manual_seed(seed)
    env = gym.make(ENV_ID).unwrapped
    alpha, n_components, batch = float(temperature), 4, 256
    distribution = SquashedGMMDistribution(1, n_components=n_components)
    # The actor's initial head: equal weights, means spread over [-0.5, 0.5] in a random order, log std 0.
    means = th.nn.Parameter(0.5 * th.linspace(-1.0, 1.0, n_components)[th.randperm(n_components)].reshape(1, -1))
    log_stds = th.nn.Parameter(th.zeros(1, n_components))
    logits = th.nn.Parameter(th.zeros(1, n_components))
    optimizer = th.optim.Adam([means, log_stds, logits], lr=SAC_KWARGS["learning_rate"])
    u = np.linspace(-GRID_LIMIT, GRID_LIMIT, GRID_POINTS)
    log_optimal = optimal_log_density(u, env.reward_of, alpha)
    grid = th.as_tensor(u, dtype=th.float32).unsqueeze(-1)
    trace = []
    for step in range(steps + 1):
        if step % max(steps // 10, 1) == 0:
            with th.no_grad():
                bound = distribution.proba_distribution(means, log_stds, logits)
                log_density = bound.gaussian_log_prob(grid).double().numpy()
            measured = kl_and_masses(log_density, log_optimal, u)
            trace.append(dict(step=step, kl=measured["kl"], min_peak_mass=min(
                measured["mass_negative"], measured["mass_positive"])))  # fmt: skip
        if step == steps:
            break
        bound = distribution.proba_distribution(
            means.expand(batch, -1), log_stds.expand(batch, -1), logits.expand(batch, -1)
        )
        actions = bound.sample()
        rewards = env.reward_of_tensor(actions)  # actions [batch, 1]
        if log_pi == "sample":
            loss = (alpha * bound.log_prob(actions, bound.gaussian_actions) - rewards).mean()
        else:
            loss = (-alpha * bound.entropy() - rewards).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return dict(log_pi=log_pi, temperature=temperature, seed=seed, steps=steps, trace=trace)


def run_path(out_dir: Path, actor: str, temperature: str, seed: int) -> Path:
    return out_dir / f"{actor}__alpha{temperature}__s{seed}.json"


def run_grid(out_dir: Path, actors: Sequence[str], temperatures: Sequence[str], seeds: Sequence[int], steps: int):
    """Every run without a JSON yet, seed-major; a claim file lets one process per core share the grid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _report.run_record("benchmarks.maxent_bandit", sys.argv[1:])
    for seed in seeds:
        for temperature in temperatures:
            for actor in actors:
                path = run_path(out_dir, actor, temperature, seed)
                if path.exists():
                    continue
                with _report.claimed(path) as mine:
                    if not mine:
                        continue
                    result = run_one(actor, temperature, seed, steps)
                    result["record"] = record
                    _report.write_json(path, result)
                    print(
                        f"{path.name}: KL {result['kl']:.3f}, min peak mass {result['min_peak_mass']:.2f}, "
                        f"{result['train_seconds']:.0f} s",
                        flush=True,
                    )


def run_direct_grid(out_dir: Path, temperatures: Sequence[str], seeds: Sequence[int], steps: int) -> None:
    """:func:`direct_one` for both log_pi modes; one JSON per run under ``out_dir / "direct"``."""
    directory = out_dir / "direct"
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for temperature in temperatures:
            for log_pi in LOG_PI_MODES:
                path = directory / f"{log_pi}__alpha{temperature}__s{seed}.json"
                if not path.exists():
                    _report.write_json(path, direct_one(log_pi, temperature, seed, steps))


def direct_table(out_dir: Path) -> str:
    runs = [json.loads(path.read_text()) for path in sorted((out_dir / "direct").glob("*.json"))]
    if not runs:
        return ""
    lines = [
        "| alpha | log_pi | seeds | steps | KL(pi \\|\\| pi*) nats | smaller peak's mass |",
        "|---|---|---|---|---|---|",
    ]
    for temperature in TEMPERATURES:
        for log_pi in LOG_PI_MODES:
            cell = [r for r in runs if r["temperature"] == temperature and r["log_pi"] == log_pi]
            if cell:
                lines.append(
                    f"| {temperature} | {log_pi} | {len(cell)} | {cell[0]['steps']:,} "
                    f"| {iqm_cell([r['trace'][-1]['kl'] for r in cell], 3)} "
                    f"| {iqm_cell([r['trace'][-1]['min_peak_mass'] for r in cell], 2)} |"
                )
    return "\n".join(lines)


def load(out_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("*__s*.json"))]


def table(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| alpha | actor | seeds | KL(pi \\|\\| pi*) nats | per-seed KL | smaller peak's mass (pi*: 0.5) "
        "| deterministic return (max 5) |",
        "|---|---|---|---|---|---|---|",
    ]
    for temperature in TEMPERATURES:
        for actor in ACTORS:
            runs = sorted(
                (r for r in results if r["actor"] == actor and r["temperature"] == temperature),
                key=lambda r: r["seed"],
            )
            if not runs:
                continue
            per_seed = " ".join(f"{r['kl']:.2f}" for r in runs)
            lines.append(
                f"| {temperature} | {actor} | {len(runs)} | {iqm_cell([r['kl'] for r in runs], 3)} | {per_seed} "
                f"| {iqm_cell([r['min_peak_mass'] for r in runs], 2)} "
                f"| {iqm_cell([r['deterministic_return'] for r in runs], 2)} |"
            )
    return "\n".join(lines)


def plot_densities(results: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Per temperature and actor: every seed's density at the first observation over pi*, in the action a."""
    plt = _report.pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    temperatures = [t for t in TEMPERATURES if any(r["temperature"] == t for r in results)]
    if not temperatures:
        return None
    figure, axes = plt.subplots(
        len(temperatures), len(ACTORS), figsize=(4 * len(ACTORS), 3 * len(temperatures)), squeeze=False
    )
    for row, temperature in enumerate(temperatures):
        for column, actor in enumerate(ACTORS):
            axis = axes[row][column]
            runs = sorted(
                (r for r in results if r["actor"] == actor and r["temperature"] == temperature),
                key=lambda r: r["seed"],
            )
            for run in runs:
                u = np.asarray(run["density_u"])
                jacobian = 1.0 - np.tanh(u) ** 2  # density in a = density in u / (1 - a^2)
                inside = jacobian > 1e-6
                axis.plot(np.tanh(u)[inside], (np.asarray(run["density"]) / jacobian)[inside], alpha=0.7, lw=1)
            if runs:
                u = np.asarray(runs[0]["density_u"])
                jacobian = 1.0 - np.tanh(u) ** 2
                inside = jacobian > 1e-6
                optimal = np.asarray(runs[0]["optimal_density"]) / jacobian
                axis.plot(np.tanh(u)[inside], optimal[inside], "k--", lw=1.5, label="pi* (closed form)")
                axis.legend(fontsize=7)
            axis.set_title(f"{actor}, alpha {temperature}", fontsize=9)
            axis.set_xlim(-1, 1)
            axis.set_xlabel("action a")
    figure.suptitle("TwoPeakBandit, SAC at a fixed temperature: policy density at the first step (one line per seed)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render(results: List[Dict[str, Any]], figure: Optional[Path], page: Path, out_dir: Path) -> str:
    records = {json.dumps(r["record"], sort_keys=True): r["record"] for r in results}
    record = next(iter(records.values()))
    minutes = sum(r["train_seconds"] for r in results) / 60
    steps = ", ".join(f"{s:,}" for s in sorted({r["timesteps"] for r in results}))
    lines = [
        _report.provenance(record, minutes, "sum of the runs' training times"),
        "",
        f"#### TwoPeakBandit-v0, fixed temperatures ({steps} steps per run)",
        "",
        "KL and peak masses: mean over the observations "
        f"{', '.join(str(o) for o in EVAL_OBSERVATIONS)} (the fraction of the episode still to play); cells: IQM "
        "over seeds with a 95% bootstrap interval.",
        "",
        table(results),
    ]
    direct = direct_table(out_dir)
    if direct:
        lines += [
            "",
            "#### The same mixture actor against the known reward (a perfect critic), no RL",
            "",
            "Adam on one state's mixture with SAC's actor loss, 256 implicitly reparameterised samples per step, "
            "learning rate as above (`python -m benchmarks.maxent_bandit --direct --temperatures 0.05`):",
            "",
            direct,
        ]
    if figure is not None:
        lines += ["", f"Figure: [{figure.stem}]({os.path.relpath(figure, page.parent)})."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", nargs="+", default=list(ACTORS), choices=list(ACTORS))
    parser.add_argument("--temperatures", nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--timesteps", type=int, default=TIMESTEPS)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--direct", action="store_true", help="run the perfect-critic runs instead of SAC")
    parser.add_argument("--direct-steps", type=int, default=DIRECT_STEPS)
    parser.add_argument("--report", action="store_true", help="print the table of the finished runs")
    parser.add_argument("--write", nargs="?", type=Path, const=PAGE, default=None, help="regenerate this page's block")
    args = parser.parse_args(argv)
    if args.direct:
        run_direct_grid(args.out, args.temperatures, args.seeds, args.direct_steps)
        return
    if not (args.report or args.write):
        run_grid(args.out, args.actors, args.temperatures, args.seeds, args.timesteps)
        return
    results = load(args.out)
    page = args.write or PAGE
    # The figure sits in the page's figures folder (docs/figures for the docs page).
    figure = plot_densities(results, page.parent / "figures" / "maxent_bandit_densities.png") if args.write else None
    body = render(results, figure, page, args.out)
    print(body)
    if args.write:
        _report.write_generated(args.write, SCRIPT, body, "Max-entropy RL with a mixture actor")
        print("wrote", args.write)


if __name__ == "__main__":
    main()
