"""One-dimensional point rules for the qmc estimator: per-component Gauss-Hermite, uniform, Gauss-Legendre and sinh
rules, and the rule on the union of every component's nodes (qmc's 1-D default).

    OMP_NUM_THREADS=1 python -m benchmarks.rule_1d            # prints the tables (under a minute on one core)
    OMP_NUM_THREADS=1 python -m benchmarks.rule_1d --write    # and writes them into docs/qmc_design.md

In one dimension ``qmc`` integrates each component's bounded correction ``E_{N_i}[h]`` (``h`` the entropy of the
responsibilities) with a deterministic N(0, 1) rule. This script scores candidate rules end to end, through the
library's ``quadrature_entropy`` in float32 like the library computes, on the 1-D suite
(``make_suite(dims=(1,), components=(2, 4, 8, 16))``, seeds 0 to 4, every kind including ``narrow_heavy``) against
the exact 1-D truth (:func:`benchmarks.cases.quadrature_entropy_1d`, float64). Rules:

- ``gauss-hermite``: the n-node rule with its nodes of weight <= 1e-12 dropped (the library's);
- ``uniform``: evenly spaced nodes on ``[-5.5, 5.5]``, weights ``phi`` (the trapezoid rule);
- ``gauss-legendre``: composite 4-point Gauss-Legendre panels on ``[-5.5, 5.5]``, weights times ``phi``;
- ``sinh a=...``: :func:`sb3_gmm.entropy.point_sets.sinh_normal_points`, ``eps = a sinh(t)`` with ``t`` evenly spaced
  (nodes dense at the centre, spacing ``~a dt`` there), outermost node 5.5.

It then splits the ``narrow_heavy`` error by stratum (which component's points carry it), sweeps the node count a
rule needs before those cases' gradients become accurate, and scores one composite rule on the sorted union of every
component's nodes (``qmc``'s 1-D default, ``rule_1d="union"``, :func:`sb3_gmm.entropy.quadrature.union_rule_entropy`).
"""

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch as th

from benchmarks import _report
from benchmarks.cases import (
    LOG_2PI_E,
    MixtureCase,
    cosine,
    flat_gradient,
    leaf_parameters,
    log_joint_reference,
    make_suite,
    quadrature_entropy_1d,
)
from sb3_gmm.entropy._common import mixture_params
from sb3_gmm.entropy.point_sets import SINH_RULE_HALF_WIDTH, gauss_hermite_points, sinh_normal_points
from sb3_gmm.entropy.quadrature import NEGLIGIBLE_NODE_WEIGHT, quadrature_entropy, union_rule_entropy

Rule = Tuple[th.Tensor, th.Tensor]  # nodes [n, 1], weights [n], float64
SEEDS = (0, 1, 2, 3, 4)
COMPONENTS = (2, 4, 8, 16)


def gauss_hermite_kept(n_points: int) -> Rule:
    """The library's 1-D rule: ``n_points`` Gauss-Hermite nodes less those of negligible weight."""
    nodes, weights = gauss_hermite_points(n_points)
    kept = weights > NEGLIGIBLE_NODE_WEIGHT
    return nodes[kept], weights[kept] / weights[kept].sum()


def uniform_rule(n_points: int, half_width: float = SINH_RULE_HALF_WIDTH) -> Rule:
    """Evenly spaced nodes on ``[-L, L]``, weights ``phi`` (the trapezoid rule), normalised."""
    nodes = th.linspace(-half_width, half_width, n_points, dtype=th.float64)
    weights = th.exp(-0.5 * nodes.square())
    return nodes.unsqueeze(-1), weights / weights.sum()


def composite_gauss_legendre(n_panels: int, order: int = 4, half_width: float = SINH_RULE_HALF_WIDTH) -> Rule:
    """``order``-point Gauss-Legendre panels tiling ``[-L, L]``, weights times ``phi``, normalised."""
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(-half_width, half_width, n_panels + 1)
    half, middle = 0.5 * np.diff(edges), 0.5 * (edges[1:] + edges[:-1])
    nodes = (middle[:, None] + half[:, None] * unit_nodes).reshape(-1)
    weights = (half[:, None] * unit_weights).reshape(-1) * np.exp(-0.5 * nodes**2)
    return th.tensor(nodes).unsqueeze(-1), th.tensor(weights / weights.sum())


RULES: Dict[str, Callable[[int], Rule]] = {
    "gauss-hermite": gauss_hermite_kept,
    "uniform": uniform_rule,
    "gauss-legendre": composite_gauss_legendre,
    "sinh a=1": sinh_normal_points,
    "sinh a=0.5": lambda n_points: sinh_normal_points(n_points, 0.5),
}
# (rule, size argument): Gauss-Hermite by its rule size (the library's n_points), the others by node count (for
# Gauss-Legendre: panels of 4 nodes). Sizes bracket the default's 36 evaluated nodes.
GRID: Tuple[Tuple[str, int], ...] = (
    *(("gauss-hermite", n) for n in (6, 8, 12, 16, 32, 64, 96, 128, 256)),
    *(("uniform", n) for n in (24, 36, 37, 41, 45, 49)),
    *(("gauss-legendre", n) for n in (9, 10, 11, 12)),
    *(("sinh a=1", n) for n in (16, 24, 36, 37, 41, 45, 49)),
    *(("sinh a=0.5", n) for n in (6, 8, 12, 16, 24, 36, 37, 41, 45, 49)),
)
# Node counts of the sweep on narrow_heavy: how fine a fixed rule must be there.
SWEEP: Tuple[Tuple[str, int], ...] = (
    *(("uniform", n) for n in (64, 128, 256, 384, 512, 768)),
    *(("sinh a=1", n) for n in (64, 128, 256)),
    *(("gauss-hermite", n) for n in (512, 1024, 2048)),
)


def suite(seeds: Sequence[int] = SEEDS) -> List[MixtureCase]:
    return [case for seed in seeds for case in make_suite(dims=(1,), components=COMPONENTS, seed=seed)]


def exact(case: MixtureCase) -> Tuple[float, th.Tensor]:
    """Value and flattened gradient of the deterministic 1-D truth, float64."""
    logits, means, log_stds = leaf_parameters(case)
    value = quadrature_entropy_1d(logits, means, log_stds.exp())
    value.backward()
    return float(value.detach()), flat_gradient(logits, means, log_stds)


def library_estimate(case: MixtureCase, rule: Rule, dtype: th.dtype = th.float32) -> Tuple[float, th.Tensor]:
    """The library's quadrature core (fused, responsibility-entropy integrand) with ``rule``'s points."""
    logits, means, log_stds = leaf_parameters(case, dtype)
    nodes, weights = rule
    value = quadrature_entropy(mixture_params(logits, means, log_stds.exp()), nodes.to(dtype), weights.to(dtype))
    value.sum().backward()
    return float(value.detach()), flat_gradient(logits, means, log_stds)


def score(cases: Sequence[MixtureCase], truths: Sequence[Tuple[float, th.Tensor]], rule: Rule) -> List[Tuple]:
    """(case, abs value error, gradient cosine) per case."""
    rows = []
    for case, (true_value, true_gradient) in zip(cases, truths):
        value, gradient = library_estimate(case, rule)
        rows.append((case, abs(value - true_value), cosine(gradient, true_gradient)))
    return rows


def _stats(rows: Sequence[Tuple]) -> str:
    errors, cosines = [row[1] for row in rows], [row[2] for row in rows]
    return f"{max(errors):.4f} | {statistics.fmean(errors):.5f} | {min(cosines):.4f}"


def rule_table(cases: Sequence[MixtureCase], truths: Sequence) -> str:
    lines = [
        "| rule | size | nodes evaluated | max err | mean err | min cos | without narrow_heavy: max err | mean err | "
        "min cos | narrow_heavy: max err | mean err | min cos | median cos | worst case |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size in GRID:
        rule = RULES[name](size)
        rows = score(cases, truths, rule)
        narrow = [row for row in rows if row[0].kind == "narrow_heavy"]
        others = [row for row in rows if row[0].kind != "narrow_heavy"]
        worst = min(rows, key=lambda row: row[2])[0]
        lines.append(
            f"| {name} | {size} | {rule[1].numel()} | {_stats(rows)} | {_stats(others)} | {_stats(narrow)} | "
            f"{statistics.median(row[2] for row in narrow):.4f} | {worst.name} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def _stratified_reference(case: MixtureCase, rules: Sequence[Tuple[th.Tensor, th.Tensor]]) -> Tuple[float, th.Tensor]:
    """The control-variate estimate with its own rule per component (stratum), float64, written apart from the
    library: ``sum_i w_i (H_i - log w_i) - sum_i w_i sum_n W_in h(mu_i + s_i eps_in)``."""
    logits, means, log_stds = leaf_parameters(case)
    log_weights = th.log_softmax(logits, -1)
    estimate = (log_weights.exp() * (0.5 * LOG_2PI_E + log_stds[:, 0] - log_weights)).sum()
    for component, (nodes, weights) in enumerate(rules):
        x = means[component] + log_stds[component].exp() * nodes  # [n, 1]
        log_responsibilities = th.log_softmax(log_joint_reference(x, logits, means, log_stds.exp()), -1)
        entropy = -(log_responsibilities.exp() * log_responsibilities).sum(-1)
        estimate = estimate - log_weights[component].exp() * (weights * entropy).sum()
    estimate.backward()
    return float(estimate.detach()), flat_gradient(logits, means, log_stds)


def stratum_table(cases: Sequence[MixtureCase], truths: Sequence, n_points: int = 64) -> str:
    """Relative gradient error of the default rule with it in only the narrow stratum, or only the wide ones (a
    20001-node trapezoid rule on [-10, 10] elsewhere, exact to float64 here)."""
    fine = uniform_rule(20001, 10.0)
    default = gauss_hermite_kept(n_points)
    lines = [
        f"| case | std ratio (widest light / narrow) | gauss-hermite {n_points} everywhere: cos / rel. grad error | "
        "only in the narrow stratum | only in the light strata |",
        "|---|---|---|---|---|",
    ]
    for case, (_, true_gradient) in zip(cases, truths):
        if case.kind != "narrow_heavy":
            continue
        n_components = case.n_components
        cells = []
        for rules in (
            [default] * n_components,
            [default] + [fine] * (n_components - 1),
            [fine] + [default] * (n_components - 1),
        ):
            _, gradient = _stratified_reference(case, rules)
            relative = float((gradient - true_gradient).norm() / true_gradient.norm())
            cells.append(f"{cosine(gradient, true_gradient):.4f} / {relative:.3f}")
        ratio = float(case.stds[1:, 0].max() / case.stds[0, 0])
        lines.append(f"| {case.name} | {ratio:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(cases: Sequence[MixtureCase], truths: Sequence) -> str:
    narrow = [(case, truth) for case, truth in zip(cases, truths) if case.kind == "narrow_heavy"]
    lines = [
        "| rule | size | nodes evaluated | central spacing | max err | min cos | 2nd smallest cos | median cos |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, size in SWEEP:
        rule = RULES[name](size)
        rows = score([case for case, _ in narrow], [truth for _, truth in narrow], rule)
        cosines = sorted(row[2] for row in rows)
        centre = rule[0][:, 0].abs().argsort()[:2]
        spacing = float((rule[0][centre[0], 0] - rule[0][centre[1], 0]).abs())
        lines.append(
            f"| {name} | {size} | {rule[1].numel()} | {spacing:.3f} | {max(row[1] for row in rows):.4f} | "
            f"{cosines[0]:.4f} | {cosines[1]:.4f} | {statistics.median(cosines):.4f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def union_table(cases: Sequence[MixtureCase], truths: Sequence) -> str:
    lines = [
        "| rule | nodes per component | nodes | dtype | max err | mean err | min cos | narrow_heavy: max err | "
        "mean err | min cos | others: max err | mean err | min cos |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    variants = [(n, True, th.float64) for n in (24, 36)] + [(36, True, th.float32)]
    variants += [(n, False, th.float64) for n in (24, 36)] + [(36, False, th.float32)]
    for n_nodes, fixed, dtype in variants:
        unit_nodes = sinh_normal_points(n_nodes, 0.5)[0].reshape(-1)
        rows = []
        for case, (true_value, true_gradient) in zip(cases, truths):
            logits, means, log_stds = leaf_parameters(case, dtype)
            params = mixture_params(logits, means, log_stds.exp())
            value = union_rule_entropy(params, unit_nodes.to(dtype), follow_nodes=not fixed)
            value.backward()
            gradient = flat_gradient(logits, means, log_stds)
            rows.append((case, abs(float(value.detach()) - true_value), cosine(gradient, true_gradient)))
        narrow = [row for row in rows if row[0].kind == "narrow_heavy"]
        others = [row for row in rows if row[0].kind != "narrow_heavy"]
        name = "union, nodes fixed" if fixed else "union, nodes followed"
        lines.append(
            f"| {name} | {n_nodes} | K x {n_nodes} + 2K | {str(dtype).replace('torch.', '')} | {_stats(rows)} | "
            f"{_stats(narrow)} | {_stats(others)} |"
        )
    return "\n".join(lines)


def run(quick: bool) -> str:
    cases = suite(SEEDS[:1] if quick else SEEDS)
    truths = [exact(case) for case in cases]
    n_narrow = sum(case.kind == "narrow_heavy" for case in cases)
    sections = [
        "## One-dimensional rules",
        f"The 1-D suite: `make_suite(dims=(1,), components={COMPONENTS})`, seeds {SEEDS[:1] if quick else SEEDS}: "
        f"{len(cases)} mixtures, {n_narrow} of them `narrow_heavy`. Truth: deterministic quadrature "
        "(`quadrature_entropy_1d`, float64). Every rule goes through the library's `quadrature_entropy` in float32. "
        "Errors are absolute, in nats; cosines are between gradients w.r.t. (logits, means, log stds). `size`: the "
        "Gauss-Hermite rule's n (the library's `n_points`), the uniform and sinh rules' node count, the number of "
        "4-node Gauss-Legendre panels; `nodes evaluated` is the cost. The first three error columns are the whole "
        "suite's.",
        rule_table(cases, truths),
        "Where the `narrow_heavy` gradient error comes from: the default rule in one set of strata at a time, the "
        "other strata integrated to float64 accuracy (float64 reference written apart from the library).",
        stratum_table(cases, truths),
        "How fine a fixed rule must be on `narrow_heavy` alone:",
        sweep_table(cases, truths),
        "One trapezoid rule on the sorted union of every component's sinh nodes, each component's integral divided "
        "by the rule's integral of that component (`qmc`'s 1-D default, `rule_1d=\"union\"`: "
        "`quadrature.union_rule_entropy`, same control variate, torch path). `nodes followed` is the rule as "
        "shipped (the exact derivative of the returned value); `nodes fixed` holds the nodes constant in the "
        "gradient, like the truth's (then not the derivative of the returned value; for comparison only).",
        union_table(cases, truths),
    ]
    return "\n\n".join(sections)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only; prints, never writes")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/qmc_design.md")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    record, start = _report.run_record("benchmarks.rule_1d", argv or []), time.perf_counter()
    body = run(args.quick)
    body = _report.provenance(record, (time.perf_counter() - start) / 60.0) + "\n\n" + body
    print(body)
    if args.write and not args.quick:
        _report.write_generated(_report.DOCS / "qmc_design.md", "benchmarks/rule_1d.py", body, "qmc design ablation")


if __name__ == "__main__":
    main()
