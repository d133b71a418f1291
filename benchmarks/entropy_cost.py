"""Where the default estimator's time goes at a PPO minibatch: a fixed cost per call, and a cost per point.

The throughput targets of docs/performance.md leave the mixture path about 10% of a PPO update at K = 4. This
script splits the default estimator's forward + backward at B = 64 into

- the **fixed part**: the same call with the smallest point set (``n_points=2``), i.e. the estimator's bookkeeping
  (dispatch, the autograd Function, its backward) and the kernel's set-up per element and component pair, with
  almost no arithmetic behind them; what no choice of points can remove;
- the **per-point part**: the rest, divided by the number of points the default evaluates per component (36 nodes
  in 1-D, 64 Sobol points above), i.e. the arithmetic over the ``[B, K, K, n]`` exponents.

The default runs on the compiled kernel (``sb3_gmm.native``) where it builds; the same call on the torch path
(``native.disabled()``, what a machine without a C compiler gets) is timed beside it.

A second table times what PPO's evaluate_actions asks of the distribution (bind, ``log_prob``, ``entropy``, their
backward) two ways: the two methods separately, and ``log_prob_and_entropy`` (the compiled one-call path the GMM
policies take).

``component_average`` (a few ops, no points) and one PPO minibatch step of SB3's MlpPolicy (evaluate_actions,
backward, gradient clipping and Adam at B = 64, Pendulum-v1) give the scale. Every configuration is timed in each of
several rounds, alternating, and the median over rounds is reported (the machine is shared).

Usage::

    python -m benchmarks.entropy_cost                 # print the table
    python -m benchmarks.entropy_cost --write         # also rewrite its block in docs/performance.md
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch as th  # noqa: E402

from benchmarks import _report  # noqa: E402
from sb3_gmm import native  # noqa: E402
from sb3_gmm.distributions import GMMDistribution  # noqa: E402
from sb3_gmm.entropy import DEFAULT_METHOD  # noqa: E402
from sb3_gmm.entropy.quadrature import _qmc_rule  # noqa: E402

BATCH_SIZE = 64
CELLS: Tuple[Tuple[int, int], ...] = ((2, 1), (4, 1), (8, 1), (2, 6), (4, 6), (8, 6))
SMALLEST_POINT_SET = 2
STEP_COMPONENTS = (1, 4, 8)
# The 1-D rule timed beside the default (the union rule): the per-component rule, the default before issue 12.
OTHER_RULE_1D = "per_component"
OTHER_RULE_1D_LABEL = f"rule_1d='{OTHER_RULE_1D}'"
# The policy settings of the per-step table: the default, the cheap bound, the more accurate n_points=256, and the
# other 1-D rule.
STEP_SETTINGS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "component_average": dict(entropy_method="component_average"),
    "n_points=256": dict(entropy_kwargs=dict(n_points=256)),
    OTHER_RULE_1D_LABEL: dict(entropy_kwargs=dict(rule_1d=OTHER_RULE_1D)),
}


def evaluated_points(n_components: int, dim: int, n_points: int) -> int:
    """Points per component the default rule evaluates for ``n_points`` (the 1-D rule keeps fewer nodes)."""
    points, _, _ = _qmc_rule(n_components, dim, n_points, 0, th.float32, th.device("cpu"))
    return int(points.shape[-2])


def fixed_head(
    n_components: int, dim: int, **options: Any
) -> Tuple[GMMDistribution, th.Tensor, th.Tensor, th.Generator]:
    """A distribution with a fixed random head output ``[B, n_params]`` and ``[K, D]`` log stds (both requiring
    gradients) to bind, and the generator that drew them (for any further fixed draws).

    :param options: the distribution's keyword arguments (``entropy_method``, ``entropy_kwargs``)
    """
    generator = th.Generator().manual_seed(0)
    distribution = GMMDistribution(dim, n_components, **options)
    head_output = th.randn(BATCH_SIZE, distribution.n_params, generator=generator).requires_grad_()
    log_std = (0.3 * th.randn(n_components, dim, generator=generator)).requires_grad_()
    return distribution, head_output, log_std, generator


def entropy_call(
    n_components: int, dim: int, bind_only: bool = False, compiled: bool = True, **options: Any
) -> Callable[[], None]:
    """One forward + backward of the entropy as PPO meets it: :class:`GMMDistribution` binds a head output (log
    softmax, log-std clamp, finiteness check) and ``entropy()`` estimates it, on a fixed random batch of B = 64.

    :param bind_only: time the binding alone (its backward too), to subtract it
    :param compiled: False: the torch path (``native.disabled()``) even where the compiled kernel is available
    :param options: ``entropy_method`` and ``entropy_kwargs`` of the distribution
    """
    distribution, head_output, log_std, _ = fixed_head(n_components, dim, **options)

    def call() -> None:
        distribution.proba_distribution(head_output, log_std)
        if bind_only:
            bound = distribution._binding()  # what log_prob and entropy() derive from the head output first
            (bound.log_weights.sum() + bound.log_stds.sum()).backward()
        elif compiled:
            distribution.entropy().sum().backward()
        else:
            with native.disabled():
                distribution.entropy().sum().backward()

    return call


def evaluation_call(n_components: int, dim: int, one_call: bool, **options: Any) -> Callable[[], None]:
    """Forward + backward of what PPO's evaluate_actions asks the distribution for: bind a head output, then
    ``log_prob(actions)`` and ``entropy()`` (default estimator, B = 64).

    :param one_call: :meth:`GMMDistribution.log_prob_and_entropy` (the compiled one-call path the GMM policies use);
        False: the two methods separately (the binding's ops, the log density's and the estimate's Functions)
    :param options: ``entropy_kwargs`` of the distribution (the default estimator's options)
    """
    distribution, head_output, log_std, generator = fixed_head(n_components, dim, entropy_kwargs=options or None)
    actions = th.randn(BATCH_SIZE, dim, generator=generator)

    def call() -> None:
        distribution.proba_distribution(head_output, log_std)
        if one_call:
            log_prob, entropy = distribution.log_prob_and_entropy(actions)
        else:
            log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
        (log_prob.sum() + 0.01 * entropy.sum()).backward()

    return call


def ppo_step_call(policy: Any = "MlpPolicy", **policy_kwargs: Any) -> Callable[[], None]:
    """One PPO minibatch update on Pendulum-v1 shapes (B = 64), as ``PPO.train`` does it, with an entropy bonus of
    0.01: evaluate_actions, the clipped loss, backward, gradient clipping and the Adam step.

    :param policy: SB3's ``"MlpPolicy"`` or :class:`sb3_gmm.GMMActorCriticPolicy`
    :param policy_kwargs: the policy's keyword arguments (``n_components``, ``entropy_method``)
    """
    import gymnasium as gym
    from stable_baselines3 import PPO

    model = PPO(
        policy,
        gym.make("Pendulum-v1"),
        n_steps=BATCH_SIZE,
        batch_size=BATCH_SIZE,
        device="cpu",
        policy_kwargs=policy_kwargs or None,
    )
    policy = model.policy
    generator = th.Generator().manual_seed(0)
    observations = th.randn(BATCH_SIZE, 3, generator=generator)
    actions, advantages, returns, old_log_prob = (th.randn(BATCH_SIZE, generator=generator) for _ in range(4))
    actions = actions.unsqueeze(-1).clamp(-2.0, 2.0)

    def call() -> None:
        values, log_prob, entropy = policy.evaluate_actions(observations, actions)
        ratio = th.exp(log_prob - old_log_prob)
        policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, 0.8, 1.2)).mean()
        loss = policy_loss - 0.01 * entropy.mean() + 0.5 * (returns - values.flatten()).square().mean()
        policy.optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        policy.optimizer.step()

    return call


def time_calls(calls: Dict[str, Callable[[], None]], rounds: int, per_round: int) -> Dict[str, List[float]]:
    """Microseconds per call of each entry, one block per round, the entries alternating within every round."""
    for call in calls.values():  # warm-up: caches, the allocator, the point sets' lru_cache
        for _ in range(30):
            call()
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            samples[name].append((time.perf_counter() - start) / per_round * 1e6)
    return samples


def measure(rounds: int, per_round: int) -> Dict[str, Any]:
    calls: Dict[str, Callable[[], None]] = {"ppo_step_mlp": ppo_step_call()}
    points: Dict[str, int] = {}
    for n_components, dim in CELLS:
        cell = f"K{n_components}-D{dim}"
        calls[f"{cell}-bind"] = entropy_call(n_components, dim, bind_only=True)
        calls[f"{cell}-default"] = entropy_call(n_components, dim)
        calls[f"{cell}-fixed"] = entropy_call(
            n_components, dim, entropy_method="qmc", entropy_kwargs=dict(n_points=SMALLEST_POINT_SET)
        )
        calls[f"{cell}-torch"] = entropy_call(n_components, dim, compiled=False)
        if dim == 1:
            calls[f"{cell}-other_1d"] = entropy_call(n_components, dim, entropy_kwargs=dict(rule_1d=OTHER_RULE_1D))
        calls[f"{cell}-component_average"] = entropy_call(n_components, dim, entropy_method="component_average")
        calls[f"{cell}-separate"] = evaluation_call(n_components, dim, one_call=False)
        calls[f"{cell}-one_call"] = evaluation_call(n_components, dim, one_call=True)
        if dim == 1:
            calls[f"{cell}-one_call_other_1d"] = evaluation_call(
                n_components, dim, one_call=True, rule_1d=OTHER_RULE_1D
            )
        points[cell] = evaluated_points(n_components, dim, 64)
        points[f"{cell}-fixed"] = evaluated_points(n_components, dim, SMALLEST_POINT_SET)
    from sb3_gmm import GMMActorCriticPolicy

    for n_components in STEP_COMPONENTS:
        for setting, options in STEP_SETTINGS.items():
            calls[f"step-K{n_components}-{setting}"] = ppo_step_call(
                GMMActorCriticPolicy, n_components=n_components, **options
            )
    samples = time_calls(calls, rounds, per_round)
    compiled = native.library(th.float32) is not None
    return dict(samples=samples, points=points, rounds=rounds, per_round=per_round, compiled=compiled)


def render(payload: Dict[str, Any]) -> str:
    medians = {name: float(np.median(values)) for name, values in payload["samples"].items()}
    step = medians["ppo_step_mlp"]
    rows, evaluation_rows = [], []
    for n_components, dim in CELLS:
        cell = f"K{n_components}-D{dim}"
        bind = medians[f"{cell}-bind"]
        total, fixed = medians[f"{cell}-default"] - bind, medians[f"{cell}-fixed"] - bind
        n_points, n_fixed = payload["points"][cell], payload["points"][f"{cell}-fixed"]
        per_point = (total - fixed) / max(n_points - n_fixed, 1)
        rows.append(
            [
                n_components,
                dim,
                n_points,
                f"{total:.0f}",
                f"{fixed:.0f} ({fixed / total:.0%})",
                f"{per_point:.1f}",
                f"{medians[f'{cell}-torch'] - bind:.0f}",
                f"{medians[f'{cell}-other_1d'] - bind:.0f}" if f"{cell}-other_1d" in medians else "-",
                f"{medians[f'{cell}-component_average'] - bind:.0f}",
                f"{bind:.0f}",
                f"{total / step:.2f}",
            ]
        )
        separate, one_call = medians[f"{cell}-separate"], medians[f"{cell}-one_call"]
        other_1d = medians.get(f"{cell}-one_call_other_1d")
        evaluation_rows.append(
            [
                n_components,
                dim,
                f"{separate:.0f}",
                f"{one_call:.0f}",
                f"{one_call / separate:.2f}",
                f"{one_call / step:.2f}",
                "-" if other_1d is None else f"{other_1d:.0f}",
            ]
        )
    table = _report.markdown_table(
        [
            "K",
            "D",
            "points per component",
            f"default ({DEFAULT_METHOD}) us",
            "fixed part us (share)",
            "us per point",
            "torch path us",
            f"{OTHER_RULE_1D_LABEL} us",
            "component_average us",
            "binding us",
            "default / MlpPolicy step",
        ],
        rows,
    )
    evaluation_table = _report.markdown_table(
        [
            "K",
            "D",
            "separately us",
            "one call us",
            "one call / separately",
            "one call / MlpPolicy step",
            f"one call, {OTHER_RULE_1D_LABEL} us",
        ],
        evaluation_rows,
    )
    step_rows = []
    for setting in STEP_SETTINGS:
        cells = []
        for n_components in STEP_COMPONENTS:
            samples = payload["samples"].get(f"step-K{n_components}-{setting}")
            if samples is None:
                cells.append("-")
                continue
            # Per round, against the MlpPolicy step of the same round: the machine's speed drifts between rounds.
            ratios = [mlp / gmm for mlp, gmm in zip(payload["samples"]["ppo_step_mlp"], samples)]
            cells.append(f"{float(np.median(ratios)):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
        step_rows.append([setting, *cells])
    step_table = _report.markdown_table(["setting", *(f"K={k}" for k in STEP_COMPONENTS)], step_rows)
    return "\n".join(
        [
            _report.provenance(payload["record"], payload["minutes"]),
            "",
            f"`GMMDistribution.entropy()`, forward + backward at B = {BATCH_SIZE}, microseconds per call (median of "
            f"{payload['rounds']} alternating rounds of {payload['per_round']} calls), after the binding of the "
            "head output that PPO's evaluate_actions does anyway (timed on its own in the binding column and "
            f"subtracted). Fixed part: the same with `entropy_kwargs=dict(n_points={SMALLEST_POINT_SET})`. For "
            f"scale, one PPO minibatch step of SB3's MlpPolicy (Pendulum-v1 shapes): **{step:.0f} us**. "
            + (
                "The default ran on the compiled kernel; `torch path`: the same call without it."
                if payload.get("compiled", False)
                else "The compiled kernel could not be built on this machine: every column is the torch path."
            ),
            "",
            table,
            "",
            "What PPO's evaluate_actions asks of the distribution, forward + backward at B = "
            f"{BATCH_SIZE} (binding included, default estimator): `log_prob(actions)` and `entropy()` separately, "
            "against `log_prob_and_entropy(actions)`, the one compiled call the GMM policies use"
            + ("" if payload.get("compiled", False) else " (here without a compiler: the same two methods)")
            + ":",
            "",
            evaluation_table,
            "",
            "One whole PPO minibatch step (the same loop as the MlpPolicy step above, ent_coef 0.01) with "
            "GMMActorCriticPolicy: MlpPolicy's step time over the GMM's in the same round, median [min-max] over "
            "rounds (1 = as fast; the update phase of the throughput ratio, without the rollout and the environment):",
            "",
            step_table,
        ]
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=100, help="calls per configuration and round")
    parser.add_argument("--write", nargs="?", type=Path, const=_report.DOCS / "performance.md", default=None)
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    record = _report.run_record("benchmarks.entropy_cost", sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    payload = measure(args.rounds, args.per_round)
    payload.update(record=record, minutes=(time.perf_counter() - start) / 60)
    body = render(payload)
    print(body)
    if args.write:
        _report.write_json(_report.DOCS / "data" / "entropy_cost.json", payload)
        _report.write_generated(args.write, "benchmarks/entropy_cost.py", body, "Training throughput")
        print("wrote", args.write)


if __name__ == "__main__":
    main()
