"""Which log pi should SAC see with a squashed mixture actor: the single sample or the deterministic estimate?

For a set of tanh-squashed Gaussian mixtures (one state each) this measures, against a Monte Carlo ground truth of
the squashed entropy ``H(a) = E[-log p_a(a)]`` (exact log densities, ``--samples`` draws):

- ``log_pi="estimate"``: the bias of :meth:`SquashedGMMDistribution.entropy` (the pre-squash estimator plus the
  quadrature Jacobian term) and of its gradient w.r.t. (logits, means, log stds): relative error and cosine against
  the true gradient;
- ``log_pi="sample"``: SB3's single-sample ``-log p_a(a)`` is unbiased; its per-state standard deviation, and the
  per-state variance of its pathwise gradient (implicit reparameterization, the gradient SAC's actor loss takes).

SAC averages over a batch of B states (256 by default), so the sample's noise shrinks like 1 / sqrt(B) while the
estimate's bias does not average out: the columns ``value rmse@B`` and ``grad rel rmse@B`` put both on one scale
(root mean square error of one batch-averaged term, if all B states had this mixture).

Usage::

    python benchmarks/maxent_entropy_bias.py                  # ~1 min on one core
    python benchmarks/maxent_entropy_bias.py --samples 200000 --methods qmc huber_upper --json out.json
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch as th  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sb3_gmm.maxent.distributions import SquashedGMMDistribution, log_tanh_jacobian  # noqa: E402
from sb3_gmm.mixture import mixture_log_prob  # noqa: E402

Case = Tuple[List[float], List[List[float]], List[List[float]]]  # logits [K], means [K, D], stds [K, D]

HAND_CASES: Dict[str, Case] = {
    "1d_apart": ([0.0, 0.5, -0.5, 0.0], [[-1.5], [-0.4], [0.6], [1.8]], [[0.2], [0.3], [0.25], [0.4]]),
    "1d_overlapping": ([0.0, 0.3, 0.1, -0.2], [[-0.2], [0.0], [0.2], [0.4]], [[0.5], [0.4], [0.6], [0.5]]),
    "1d_wide_near_bound": ([0.0, 1.0, 0.0, -1.0], [[2.5], [-0.5], [0.0], [-3.0]], [[1.5], [0.8], [2.5], [0.5]]),
    "2d_near_one_hot": (
        [6.0, -6.0, 0.0, -3.0],
        [[0.5, -0.5], [-1.0, 1.0], [0.0, 0.0], [1.0, 1.0]],
        [[0.2, 0.3], [0.1, 0.1], [0.5, 0.5], [0.3, 0.3]],
    ),
    "2d_sac_narrow_at_bounds": (
        [0.0, 0.2, -0.2, 0.0],
        [[2.0, -2.5], [-2.2, 1.8], [0.1, 2.6], [-2.4, -2.1]],
        [[0.1, 0.15], [0.12, 0.08], [0.2, 0.1], [0.1, 0.2]],
    ),
}


def random_cases(dims: Sequence[int], n_components: int, seed: int) -> Dict[str, Case]:
    """Seeded random mixtures: logits N(0, 1), means N(0, 1.5^2), log stds U(-2.5, 0.5)."""
    generator = th.Generator().manual_seed(seed)
    cases = {}
    for dim in dims:
        logits = th.randn(n_components, generator=generator)
        means = 1.5 * th.randn(n_components, dim, generator=generator)
        stds = th.exp(-2.5 + 3.0 * th.rand(n_components, dim, generator=generator))
        cases[f"{dim}d_random"] = (logits.tolist(), means.tolist(), stds.tolist())
    return cases


def marginalized_truth(
    logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor, n_samples: int, n_chunks: int = 10
) -> Tuple[float, float, th.Tensor, float]:
    """``H(a)`` and its gradient by the per-component (marginalized) Monte Carlo estimator, with standard errors.

    ``H(a) = -sum_k w_k E_{eps}[log p_a(tanh(mu_k + s_k eps))]``: every component is sampled (``n_samples`` each)
    and its weight enters explicitly, so the gradient needs no path through the component draw. Unbiased for value
    and gradient, and free of the ``1 / p(x)`` factors that make the single-sample implicit gradient heavy-tailed.

    :return: value, its standard error, gradient (flattened logits, means, log stds), its relative standard error
    """
    values, gradients = [], []
    for _ in range(n_chunks):
        params = tuple(tensor.clone().requires_grad_(True) for tensor in (logits, means, log_stds))
        chunk_logits, chunk_means, chunk_log_stds = params
        stds = chunk_log_stds.exp()
        gaussian_actions = chunk_means + stds * th.randn(n_samples // n_chunks, *means.shape, dtype=means.dtype)
        log_weights = th.log_softmax(chunk_logits, dim=-1)
        log_probs = mixture_log_prob(gaussian_actions, log_weights, chunk_means, stds, chunk_log_stds)
        log_probs = log_probs - log_tanh_jacobian(gaussian_actions).sum(-1)  # [n, K]
        value = -(log_weights.exp() * log_probs.mean(0)).sum()
        values.append(float(value.detach()))
        gradients.append(th.cat([gradient.flatten() for gradient in th.autograd.grad(value, params)]))
    chunk_values, chunk_gradients = th.tensor(values), th.stack(gradients)
    gradient = chunk_gradients.mean(0)
    gradient_se = float((chunk_gradients.var(0).sum() / n_chunks).sqrt()) / float(gradient.norm())
    return float(chunk_values.mean()), float(chunk_values.std()) / math.sqrt(n_chunks), gradient, gradient_se


def measure(case: Case, methods: Sequence[str], n_samples: int, batch: int) -> Dict[str, Any]:
    """Ground truth, estimate biases and single-sample noise for one mixture (float64)."""
    logits, means, stds = (th.tensor(value, dtype=th.float64) for value in case)
    n_components, dim = means.shape
    truth, truth_se, true_gradient, truth_grad_rel_se = marginalized_truth(logits, means, stds.log(), n_samples)
    true_norm = float(true_gradient.norm())
    # SB3's single sample per state, with the implicit-reparameterization path. One parameter copy per sample: a
    # single backward pass then yields every per-sample gradient.
    leaf_logits = logits.expand(n_samples, n_components).clone().requires_grad_(True)
    leaf_means = means.expand(n_samples, n_components, dim).clone().requires_grad_(True)
    leaf_log_stds = stds.log().expand(n_samples, n_components, dim).clone().requires_grad_(True)
    dist = SquashedGMMDistribution(dim, n_components=n_components)
    dist.proba_distribution(leaf_means, leaf_log_stds, leaf_logits)
    actions = dist.sample()
    negative_log_probs = -dist.log_prob(actions, dist.gaussian_actions)
    per_sample = th.autograd.grad(negative_log_probs.sum(), (leaf_logits, leaf_means, leaf_log_stds))
    per_sample = th.cat([gradient.reshape(n_samples, -1) for gradient in per_sample], dim=-1)
    negative_log_probs = negative_log_probs.detach()
    per_sample_norms = (per_sample - true_gradient).norm(dim=-1) / true_norm
    gradient_variance = float(per_sample.var(0).sum())  # trace of the per-sample covariance
    row: Dict[str, Any] = dict(
        K=n_components,
        D=dim,
        truth=truth,
        truth_se=truth_se,
        truth_grad_rel_se=truth_grad_rel_se,
        sample_mean_minus_truth=float(negative_log_probs.mean()) - truth,
        sample_std=float(negative_log_probs.std()),
        sample_value_rmse=float(negative_log_probs.std()) / math.sqrt(batch),
        sample_grad_rel_std=math.sqrt(gradient_variance) / true_norm,
        sample_grad_rel_rmse=math.sqrt(gradient_variance / batch) / true_norm,
        # The implicit gradient is heavy-tailed for separated components (1 / p(x) in the gaps between them): the
        # median per-sample error shows the typical draw, the std above is dominated by rare ones.
        sample_grad_rel_error_median=float(per_sample_norms.median()),
        methods={},
    )
    for method in methods:
        params = tuple(tensor.clone().requires_grad_(True) for tensor in (logits, means, stds.log()))
        estimator = SquashedGMMDistribution(dim, n_components=n_components, entropy_method=method)
        estimator.proba_distribution(params[1].unsqueeze(0), params[2].unsqueeze(0), params[0].unsqueeze(0))
        estimate = estimator.entropy().squeeze(0)
        gradient = th.cat([g.flatten() for g in th.autograd.grad(estimate, params)])
        row["methods"][method] = dict(
            estimate=float(estimate.detach()),
            bias=float(estimate.detach()) - truth,
            grad_rel_error=float((gradient - true_gradient).norm()) / true_norm,
            grad_cosine=float(th.nn.functional.cosine_similarity(gradient, true_gradient, dim=0)),
        )
    return row


def render(rows: Dict[str, Dict[str, Any]], methods: Sequence[str], n_samples: int, batch: int) -> str:
    lines = [
        f"Ground truth: per-component (marginalized) Monte Carlo, {n_samples} draws per component (float64); "
        f"'sample' columns from {n_samples} single draws with the implicit gradient. rmse@B: one batch of B = {batch}.",
        "",
        "| mixture | K | D | H(a) truth (SE) | grad truth rel SE | sample: std of -log pi | sample: value rmse@B | "
        "sample: grad rel std | sample: grad rel rmse@B | sample: median grad rel err | "
        + " | ".join(f"{m}: bias | {m}: grad rel err (cos)" for m in methods)
        + " |",
        "|" + "---|" * (10 + 2 * len(methods)),
    ]
    for name, row in rows.items():
        cells = [
            name,
            str(row["K"]),
            str(row["D"]),
            f"{row['truth']:.4f} ({row['truth_se']:.4f})",
            f"{row['truth_grad_rel_se']:.4f}",
            f"{row['sample_std']:.3f}",
            f"{row['sample_value_rmse']:.4f}",
            f"{row['sample_grad_rel_std']:.2f}",
            f"{row['sample_grad_rel_rmse']:.3f}",
            f"{row['sample_grad_rel_error_median']:.2f}",
        ]
        for method in methods:
            result = row["methods"][method]
            cells.append(f"{result['bias']:+.4f}")
            cells.append(f"{result['grad_rel_error']:.3f} ({result['grad_cosine']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="Monte Carlo draws per mixture")
    parser.add_argument("--batch", type=int, default=256, help="SAC batch size for the rmse columns")
    parser.add_argument("--methods", nargs="+", default=["qmc"], help="pre-squash entropy estimators")
    parser.add_argument("--random-dims", nargs="*", type=int, default=[1, 3, 6], help="dims of random mixtures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args(argv)
    th.manual_seed(args.seed)
    cases = {**HAND_CASES, **random_cases(args.random_dims, 4, args.seed)}
    rows = {name: measure(case, args.methods, args.samples, args.batch) for name, case in cases.items()}
    print(render(rows, args.methods, args.samples, args.batch))
    if args.json is not None:
        args.json.write_text(json.dumps(dict(args=vars(args) | dict(json=str(args.json)), rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
