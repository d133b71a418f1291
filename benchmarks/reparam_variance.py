"""Gradient variance and cost of the implicit mixture reparameterization (``sb3_gmm.maxent.reparam``).

Three estimators of the gradient of ``E_pi[f]`` with respect to the mixture's logits, means and log stds:

- implicit: ``f(x)`` at one draw ``x = implicit_mixture_sample(...)`` (Graves 2016 / Figurnov et al. 2018), one
  evaluation of ``f``; what the SAC actor uses;
- marginalized (He et al. 2026): ``sum_k w_k f(mu_k + s_k eps_k)``, one draw per component, K evaluations of ``f``;
- plain: ``f(mu_k + s_k eps)`` at a drawn component k, no gradient through the draw: its logit gradient is zero
  (biased: the weights never learn from ``f``), its mean and std gradients are unbiased.

Per case and test function it measures, over ``--draws`` independent draws, each estimator's per-draw gradient
variance summed over the entries of each parameter group, and checks every estimator's mean against the exact
gradient (``f`` are chosen with closed-form Gaussian expectations, so ``E_pi[f]`` and its gradient are exact in any
dimension). "Equal evaluations" divides the implicit variance by K: the mean of K independent draws. A second table
sweeps the separation of two 1-D components, with the implicit estimator's variance computed exactly by integrating
over a dense grid (sampling cannot see the rare, huge gradients between well-separated components). A third times
one call (forward and backward) at a SAC-like batch.

Usage::

    python -m benchmarks.reparam_variance                      # print the tables (~1 min on one core)
    python -m benchmarks.reparam_variance --write docs/maxent_gradients.md
"""

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch as th  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._report import fmt, markdown_table, provenance, run_record, write_generated  # noqa: E402
from sb3_gmm.maxent.reparam import (  # noqa: E402
    implicit_mixture_sample,
    implicit_mixture_surrogate,
    marginalized_mixture_expectation,
)

SCRIPT = "benchmarks/reparam_variance.py"
PARAMETER_GROUPS = ("logits", "means", "log_stds")


@dataclass(frozen=True)
class MixtureCase:
    """A mixture ``logits [K]``, ``means [K, D]``, ``log_stds [K, D]`` (float64)."""

    name: str
    logits: th.Tensor
    means: th.Tensor
    log_stds: th.Tensor

    @property
    def n_components(self) -> int:
        return self.logits.shape[-1]


@dataclass(frozen=True)
class TestFunction:
    """``fn`` maps ``[..., D]`` to ``[...]``; ``gaussian_expectation(means, stds)`` is exactly ``E_N(mu, s^2)[fn]``."""

    name: str
    fn: Callable[[th.Tensor], th.Tensor]
    gaussian_expectation: Callable[[th.Tensor, th.Tensor], th.Tensor]


def make_cases() -> List[MixtureCase]:
    def tensor(values: Sequence) -> th.Tensor:
        return th.tensor(values, dtype=th.float64)

    generator = th.Generator().manual_seed(0)
    return [
        MixtureCase("1-D, K=3 overlapping", tensor([0.3, -0.4, 0.1]), tensor([[-0.8], [0.2], [0.9]]),
                    tensor([[-0.3], [0.2], [-0.1]])),
        MixtureCase("1-D, K=2 6 stds apart", tensor([0.2, -0.2]), tensor([[-3.0], [3.0]]), tensor([[0.0], [0.0]])),
        MixtureCase("2-D, K=3 overlapping", tensor([0.3, -0.4, 0.1]), tensor([[-0.8, 0.4], [0.2, -0.6], [0.9, 0.7]]),
                    tensor([[-0.3, 0.1], [0.2, -0.2], [-0.1, 0.3]])),
        MixtureCase("2-D, K=2 near one-hot (w=1e-4)", tensor([0.0, -9.2]), tensor([[0.0, 0.3], [1.0, -0.5]]),
                    tensor([[0.0, -0.2], [-0.3, 0.2]])),
        # An actor-like head: random means around 0, stds around 0.6 (SAC's initial log std is about -0.5).
        MixtureCase("6-D, K=4 random actor head", 0.5 * th.randn(4, generator=generator, dtype=th.float64),
                    0.7 * th.randn(4, 6, generator=generator, dtype=th.float64),
                    -0.5 + 0.3 * th.randn(4, 6, generator=generator, dtype=th.float64)),
    ]  # fmt: skip


def make_test_functions() -> List[TestFunction]:
    def direction(dim: int) -> th.Tensor:
        return th.linspace(1.3, 0.4, dim, dtype=th.float64)

    def sin_fn(x: th.Tensor) -> th.Tensor:
        return th.sin(x @ direction(x.shape[-1]) + 0.2)

    def sin_expectation(means: th.Tensor, stds: th.Tensor) -> th.Tensor:
        # E sin(a.x + b) = sin(a.mu + b) exp(-|a s|^2 / 2) for x ~ N(mu, diag s^2).
        a = direction(means.shape[-1])
        return th.sin(means @ a + 0.2) * th.exp(-0.5 * (a * stds).square().sum(-1))

    bump_width, bump_center = 0.7, 0.4

    def bump_fn(x: th.Tensor) -> th.Tensor:
        return th.exp(-0.5 * (x - bump_center).square().sum(-1) / bump_width**2)

    def bump_expectation(means: th.Tensor, stds: th.Tensor) -> th.Tensor:
        variances = bump_width**2 + stds.square()
        factors = bump_width / variances.sqrt() * th.exp(-0.5 * (means - bump_center).square() / variances)
        return factors.prod(-1)

    def quadratic_fn(x: th.Tensor) -> th.Tensor:  # a critic-like concave reward around 0.3
        return -(x - 0.3).square().sum(-1)

    def quadratic_expectation(means: th.Tensor, stds: th.Tensor) -> th.Tensor:
        return -((means - 0.3).square() + stds.square()).sum(-1)

    return [
        TestFunction("sin(a.x+b)", sin_fn, sin_expectation),
        TestFunction("bump", bump_fn, bump_expectation),
        TestFunction("-‖x-c‖²", quadratic_fn, quadratic_expectation),
    ]


def exact_gradients(case: MixtureCase, test_function: TestFunction) -> List[th.Tensor]:
    leaves = [p.clone().requires_grad_() for p in (case.logits, case.means, case.log_stds)]
    logits, means, log_stds = leaves
    expectation = (th.softmax(logits, -1) * test_function.gaussian_expectation(means, log_stds.exp())).sum()
    return list(th.autograd.grad(expectation, leaves))


def plain_mixture_sample(log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    """A drawn component's reparameterised sample: no gradient through the draw (the weights get none)."""
    with th.no_grad():
        components = (log_weights - th.empty_like(log_weights).exponential_().log_()).argmax(-1)
    index = components[..., None, None].expand(*components.shape, 1, means.shape[-1])
    component_means = means.gather(-2, index).squeeze(-2)
    component_stds = stds.expand_as(means).gather(-2, index).squeeze(-2)
    return component_means + component_stds * th.randn_like(component_means)


Estimator = Callable[[th.Tensor, th.Tensor, th.Tensor, Callable[[th.Tensor], th.Tensor]], th.Tensor]
ESTIMATORS: Dict[str, Tuple[Estimator, str]] = {
    # name: (per-draw estimate of E_pi[f] from logits, means, log stds; evaluations of f per draw)
    "implicit": (lambda lg, m, ls, f: f(implicit_mixture_sample(th.log_softmax(lg, -1), m, ls.exp(), ls)), "1"),
    "marginalized": (
        lambda lg, m, ls, f: marginalized_mixture_expectation(f, th.log_softmax(lg, -1), m, ls.exp()),
        "K",
    ),
    "plain": (lambda lg, m, ls, f: f(plain_mixture_sample(th.log_softmax(lg, -1), m, ls.exp())), "1"),
}


def per_draw_gradients(estimator: Estimator, case: MixtureCase, fn: Callable, n_draws: int) -> List[th.Tensor]:
    """Gradients of each draw's estimate, ``[n_draws, ...]`` per group: every draw has its own parameter copy."""
    leaves = [p.expand(n_draws, *p.shape).clone().requires_grad_() for p in (case.logits, case.means, case.log_stds)]
    estimator(*leaves, fn).sum().backward()
    # A leaf the estimate does not depend on (plain's logits) gets no gradient: it is zero.
    return [th.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]


def variance_rows(n_draws: int, seed: int) -> Tuple[List[List[str]], List[List[str]]]:
    """The variance table and the bias check (max |z| of each estimator's mean against the exact gradient)."""
    variance_table, bias_table = [], []
    for case in make_cases():
        for test_function in make_test_functions():
            exact = exact_gradients(case, test_function)
            variances: Dict[str, List[float]] = {}
            z_scores: Dict[str, List[float]] = {}
            for name, (estimator, _) in ESTIMATORS.items():
                th.manual_seed(seed)
                draws = per_draw_gradients(estimator, case, test_function.fn, n_draws)
                variances[name] = [float(g.var(0).sum()) for g in draws]
                z_scores[name] = []
                for g, expected in zip(draws, exact):
                    error = (g.mean(0) - expected).abs()
                    standard_error = g.std(0) / math.sqrt(n_draws)
                    # A zero-spread entry (plain's logits) is biased iff its mean is off at all.
                    z = th.where(standard_error > 0, error / standard_error.clamp_min(1e-300), error * math.inf)
                    z_scores[name].append(float(th.nan_to_num(z, nan=0.0, posinf=math.inf).max()))
            k = case.n_components
            for group_index, group in enumerate(PARAMETER_GROUPS):
                implicit = variances["implicit"][group_index]
                marginalized = variances["marginalized"][group_index]
                plain = "0 (biased)" if group == "logits" else fmt(variances["plain"][group_index])
                variance_table.append([
                    case.name, test_function.name, group, fmt(float(exact[group_index].square().sum())),
                    fmt(implicit), fmt(implicit / k), fmt(marginalized), fmt(implicit / k / marginalized), plain,
                ])  # fmt: skip
            bias_table.append([case.name, test_function.name] + [
                " / ".join(fmt_z(z) for z in z_scores[name]) for name in ESTIMATORS
            ])  # fmt: skip
    return variance_table, bias_table


def separation_rows(gaps: Sequence[float], n_draws: int, seed: int) -> List[List[str]]:
    """Two equal-weight unit-std components ``gap`` stds apart in 1-D, f = sin: the logit gradient's variance.

    Implicit: exact, ``Var = int p(x) g(x)^2 dx - (int p g)^2`` on a dense grid, ``g(x)`` the pathwise logit
    gradient of ``f`` at ``x`` (a deterministic function of x in 1-D). Marginalized: sampled (its gradient is
    bounded by max |f|, so sampling sees all of it).
    """
    test_function = make_test_functions()[0]
    rows = []
    for gap in gaps:
        means = th.tensor([[-gap / 2], [gap / 2]], dtype=th.float64)
        case = MixtureCase(f"gap {gap:g}", th.zeros(2, dtype=th.float64), means, th.zeros(2, 1, dtype=th.float64))
        grid = th.linspace(-gap / 2 - 12.0, gap / 2 + 12.0, 60_001, dtype=th.float64)
        spacing = float(grid[1] - grid[0])
        logits = case.logits.expand(len(grid), 2).clone().requires_grad_()
        log_weights = th.log_softmax(logits, -1)
        surrogate = implicit_mixture_surrogate(grid[:, None], log_weights, case.means, case.log_stds.exp())
        (logit_gradient,) = th.autograd.grad(test_function.fn(surrogate).sum(), [logits])
        log_density = th.logsumexp(
            log_weights.detach() - 0.5 * (grid[:, None] - case.means[:, 0]).square() - 0.5 * math.log(2 * math.pi), -1
        )
        density = log_density.exp()[:, None]
        mean = (density * logit_gradient).sum(0) * spacing
        second_moment = (density * logit_gradient.square()).sum(0) * spacing
        implicit_variance = float((second_moment - mean.square()).sum())
        exact = exact_gradients(case, test_function)[0]
        th.manual_seed(seed)
        marginalized = per_draw_gradients(ESTIMATORS["marginalized"][0], case, test_function.fn, n_draws)[0]
        rows.append([
            f"{gap:g}", fmt(float(exact.square().sum())), fmt(float((mean - exact).abs().max())),
            fmt(implicit_variance), fmt(implicit_variance / 2), fmt(float(marginalized.var(0).sum())),
            fmt(float(logit_gradient.abs().max())),
        ])  # fmt: skip
    return rows


def time_calls(functions: Dict[str, Callable[[], None]], rounds: int, calls_per_round: int) -> Dict[str, float]:
    """Median CPU seconds per call (this process, one thread), the functions alternating within each round.

    CPU time rather than wall time: the machine is shared, and time spent descheduled is not the method's cost.
    """
    for function in functions.values():
        for _ in range(10):
            function()
    samples: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.process_time()
            for _ in range(calls_per_round):
                function()
            samples[name].append((time.process_time() - start) / calls_per_round)
    return {name: statistics.median(values) for name, values in samples.items()}


def _timed_calls(logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> Dict[str, Callable[[], None]]:
    """One call of each method, forward and backward, on these parameters."""

    def gaussian() -> None:
        th.distributions.Normal(means[:, 0], log_stds[:, 0].exp()).rsample().sum().backward()

    def plain() -> None:
        plain_mixture_sample(th.log_softmax(logits, -1), means, log_stds.exp()).sum().backward()

    def implicit() -> None:
        implicit_mixture_sample(th.log_softmax(logits, -1), means, log_stds.exp(), log_stds).sum().backward()

    def implicit_no_grad() -> None:
        with th.no_grad():
            implicit_mixture_sample(th.log_softmax(logits, -1), means, log_stds.exp(), log_stds)

    def marginalized() -> None:
        fn = lambda x: x.sum(-1)  # noqa: E731  (the critic's own cost, K calls, is not included)
        marginalized_mixture_expectation(fn, th.log_softmax(logits, -1), means, log_stds.exp()).sum().backward()

    return {"gaussian": gaussian, "plain": plain, "implicit": implicit, "implicit_no_grad": implicit_no_grad,
            "marginalized": marginalized}  # fmt: skip


def timing_rows(shapes: Sequence[Tuple[int, int, int]], rounds: int) -> List[List[str]]:
    """Forward + backward of one call at batch B (float32), against a plain mixture sample and SB3's Gaussian."""
    rows = []
    for batch, k, dim in shapes:
        th.manual_seed(0)
        logits = th.randn(batch, k, requires_grad=True)
        means = th.randn(batch, k, dim, requires_grad=True)
        log_stds = (-0.5 + 0.3 * th.randn(batch, k, dim)).requires_grad_()

        functions = _timed_calls(logits, means, log_stds)
        seconds = time_calls(functions, rounds=rounds, calls_per_round=20)
        rows.append([
            f"{batch}", f"{k}", f"{dim}", *(f"{seconds[name] * 1e6:.0f}" for name in functions),
            f"{seconds['implicit'] / seconds['plain']:.1f}",
        ])  # fmt: skip
    return rows


def fmt_z(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def sac_step_milliseconds(rounds: int) -> float:
    """For scale: CPU milliseconds of one SB3 SAC gradient step (MlpPolicy, Pendulum-v1, batch 256), median."""
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=0, batch_size=256, seed=0, device="cpu")
    model.learn(300)
    milliseconds = []
    for _ in range(rounds):
        start = time.process_time()
        model.train(gradient_steps=20, batch_size=256)
        milliseconds.append((time.process_time() - start) / 20 * 1e3)
    return statistics.median(milliseconds)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=100_000, help="independent draws per estimator and case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-rounds", type=int, default=15, help="rounds of 20 calls; the median is reported")
    parser.add_argument("--sac-rounds", type=int, default=15, help="rounds timing a SAC gradient step (0: skip)")
    parser.add_argument("--write", type=Path, default=None, help="markdown page whose generated block to rewrite")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    started = time.perf_counter()
    record = run_record("benchmarks.reparam_variance", argv)

    variance_table, bias_table = variance_rows(args.draws, args.seed)
    separation_table = separation_rows([2.0, 4.0, 6.0, 8.0, 10.0], args.draws, args.seed)
    timing_table = timing_rows([(256, 4, 6), (256, 2, 1), (256, 8, 6), (256, 4, 17), (1, 4, 6)], args.timing_rounds)
    sac_scale = ""
    if args.sac_rounds > 0:
        sac_scale = (
            " For scale, one SB3 SAC gradient step (MlpPolicy, Pendulum-v1, batch 256) took "
            f"{sac_step_milliseconds(args.sac_rounds):.1f} ms of CPU on the same machine (median of "
            f"{args.sac_rounds} rounds of 20 steps)."
        )

    body = "\n\n".join([
        provenance(record, (time.perf_counter() - started) / 60)
        + f" {args.draws} draws per estimator and case, seed {args.seed}.",
        "**Gradient variance per draw**, summed over the entries of each parameter group. *implicit, K evals* is the "
        "implicit variance / K (the mean of K independent draws: as many evaluations of f as one marginalized draw). "
        "*ratio* = implicit at K evals / marginalized (below 1: implicit is better at equal cost in f).",
        markdown_table(["case", "f", "group", "exact ‖∇‖²", "implicit, 1 eval", "implicit, K evals",
                        "marginalized, K evals", "ratio", "plain, 1 eval"], variance_table),  # fmt: skip
        "**Bias check**: largest |z| over each group's entries (logits / means / log stds) of the mean of the draws "
        "against the exact gradient. Below ~4.5 is consistent with an unbiased estimator; plain's logit gradient is "
        "identically zero (inf: biased).",
        markdown_table(["case", "f", *ESTIMATORS], bias_table),
        "**Separation sweep** (1-D, two equal-weight unit-std components, f = sin(1.3 x + 0.2)): logit-gradient "
        "variance. Implicit: exact, by integrating over a 60,001-point grid (the *bias* column is its integrated mean "
        "minus the exact gradient: a check of the estimator and the grid); marginalized: sampled.",
        markdown_table(["gap (stds)", "exact ‖∇‖²", "implicit bias", "implicit Var, 1 eval", "implicit Var, 2 evals",
                        "marginalized Var, 2 evals", "implicit max abs(g)"], separation_table),  # fmt: skip
        "**Cost** of one call, forward and backward, float32, CPU microseconds of the process (median of "
        f"{args.timing_rounds} rounds of 20 calls, the methods alternating within each round). *gaussian* is "
        "`Normal(mean, std).rsample()` (SB3's SAC actor); *plain* a mixture sample without weight gradient; "
        "*implicit_no_grad* the same call under `th.no_grad()` (SAC's soft target, `predict`); *marginalized* "
        "excludes its K critic evaluations." + sac_scale,
        markdown_table(["B", "K", "D", "gaussian", "plain", "implicit", "implicit_no_grad", "marginalized",
                        "implicit / plain"], timing_table),  # fmt: skip
    ])  # fmt: skip
    print(body)
    if args.write is not None:
        write_generated(args.write, SCRIPT, body, title="Gradients through a mixture sample (SAC, TQC)")
    return body


if __name__ == "__main__":
    main()
