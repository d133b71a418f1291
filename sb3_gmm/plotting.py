"""Pictures of Gaussian-mixture action densities: 1-D marginals per action dimension, 2-D contours for pairs.

Library code never calls ``plt.show``; it uses the Agg backend and returns figures (or saves them).
"""

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch as th  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

MAX_MARGINALS = 6
MAX_PAIRS = 2
GRID_POINTS = 400


def _normal_pdf(grid: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * ((grid - mean) / std) ** 2) / (np.sqrt(2.0 * np.pi) * std)


def _plot_range(means: np.ndarray, stds: np.ndarray, bounds: Optional[Sequence[float]]) -> np.ndarray:
    low = float(np.min(means - 3.5 * stds))
    high = float(np.max(means + 3.5 * stds))
    if bounds is not None:
        low, high = min(low, bounds[0] - 0.2), max(high, bounds[1] + 0.2)
    return np.linspace(low, high, GRID_POINTS)


def plot_marginal(
    ax: Axes,
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    dim: int = 0,
    bounds: Optional[Sequence[float]] = None,
) -> None:
    """The 1-D marginal of dimension ``dim`` (itself a 1-D mixture) and its weighted components.

    :param ax: matplotlib axes to draw on
    :param logits: ``[K]`` unnormalised log weights
    :param means: ``[K, D]``
    :param stds: ``[K, D]``
    :param dim: which action dimension
    :param bounds: the action space's (low, high) in that dimension, drawn as dashed lines
    """
    weights = th.softmax(logits.detach().double(), -1).cpu().numpy()
    component_means = means.detach().double().cpu().numpy()[:, dim]
    component_stds = stds.detach().double().cpu().numpy()[:, dim]
    grid = _plot_range(component_means, component_stds, bounds)
    components = weights[:, None] * _normal_pdf(grid[None, :], component_means[:, None], component_stds[:, None])
    for k, density in enumerate(components):
        ax.plot(grid, density, lw=0.8, ls="--", alpha=0.8, label=f"w={weights[k]:.2f}")
    ax.plot(grid, components.sum(0), color="black", lw=1.6, label="mixture")
    if bounds is not None:
        for edge in bounds:
            ax.axvline(edge, color="grey", lw=0.6, ls=":")
    ax.set_xlabel(f"action[{dim}]")


def plot_pair(
    ax: Axes,
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    dims: Sequence[int] = (0, 1),
) -> None:
    """Contours of the 2-D marginal over dimensions ``dims`` with the component means marked (size ~ weight)."""
    first, second = dims
    weights = th.softmax(logits.detach().double(), -1).cpu().numpy()
    component_means = means.detach().double().cpu().numpy()
    component_stds = stds.detach().double().cpu().numpy()
    grid_x = _plot_range(component_means[:, first], component_stds[:, first], None)[::4]
    grid_y = _plot_range(component_means[:, second], component_stds[:, second], None)[::4]
    xx, yy = np.meshgrid(grid_x, grid_y)
    density = np.zeros_like(xx)
    for k in range(len(weights)):
        density += (
            weights[k]
            * _normal_pdf(xx, component_means[k, first], component_stds[k, first])
            * _normal_pdf(yy, component_means[k, second], component_stds[k, second])
        )
    ax.contourf(xx, yy, density, levels=12, cmap="viridis")
    ax.scatter(component_means[:, first], component_means[:, second], s=20 + 200 * weights, c="white", marker="x")
    ax.set_xlabel(f"action[{first}]")
    ax.set_ylabel(f"action[{second}]")


def plot_mixture(
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    bounds: Optional[Sequence[Sequence[float]]] = None,
    title: Optional[str] = None,
) -> Figure:
    """One row of panels for one mixture: marginals of the first dimensions, then contours of the first pairs.

    :param logits: ``[K]``
    :param means: ``[K, D]``
    :param stds: ``[K, D]``
    :param bounds: per-dimension (low, high) of the action space
    :param title: figure title
    """
    figure = plot_mixtures(logits[None], means[None], stds[None], bounds=bounds, row_titles=None)
    if title:
        figure.suptitle(title)
    return figure


def plot_mixtures(
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    bounds: Optional[Sequence[Sequence[float]]] = None,
    row_titles: Optional[Sequence[str]] = None,
) -> Figure:
    """A grid of panels, one row per mixture of a batch (``logits [B, K]``, ``means``/``stds [B, K, D]``)."""
    n_rows, dim = means.shape[0], means.shape[-1]
    n_marginals = min(dim, MAX_MARGINALS)
    pairs = [(a, a + 1) for a in range(0, dim - 1, 2)][:MAX_PAIRS]
    n_cols = n_marginals + len(pairs)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.6 * n_rows), squeeze=False)
    for row in range(n_rows):
        for d in range(n_marginals):
            plot_marginal(axes[row, d], logits[row], means[row], stds[row], d, None if bounds is None else bounds[d])
        for column, pair in enumerate(pairs, start=n_marginals):
            plot_pair(axes[row, column], logits[row], means[row], stds[row], pair)
        if row_titles is not None:
            axes[row, 0].set_ylabel(row_titles[row])
    axes[0, 0].legend(fontsize=6, loc="upper right")
    figure.tight_layout()
    return figure


def policy_distribution(policy: Any, obs_tensor: th.Tensor) -> Any:
    """The GMM action distribution of a policy for a batch of observations (recurrent policies: fresh LSTM state).

    :raises ValueError: if the policy's distribution is not a Gaussian mixture
    """
    if hasattr(policy, "lstm_hidden_state_shape"):
        n_layers, _, hidden = policy.lstm_hidden_state_shape
        batch = obs_tensor.shape[0]
        zeros = th.zeros(n_layers, batch, hidden, device=obs_tensor.device)
        distribution, _ = policy.get_distribution(obs_tensor, (zeros, zeros), th.ones(batch, device=obs_tensor.device))
    else:
        distribution = policy.get_distribution(obs_tensor)
    if not hasattr(distribution, "means"):
        raise ValueError(f"expected a GMM policy (sb3_gmm), got a {type(distribution).__name__} distribution")
    return distribution


def plot_policy_density(
    model_or_policy: Any,
    observations: Union[np.ndarray, th.Tensor],
    path: Optional[Union[str, Path]] = None,
) -> Figure:
    """Plot the action mixture a trained GMM policy puts on each of a few observations.

    :param model_or_policy: an SB3 algorithm (``model.policy`` is used) or a GMM policy
    :param observations: a batch of observations (at most the first 4 are drawn)
    :param path: where to save a PNG (the figure is returned either way)
    """
    policy = getattr(model_or_policy, "policy", model_or_policy)
    with th.no_grad():
        obs_tensor, _ = policy.obs_to_tensor(observations[:4])
        distribution = policy_distribution(policy, obs_tensor)
    space = policy.action_space
    bounds = list(zip(np.ravel(space.low), np.ravel(space.high)))
    titles = [f"obs {i}" for i in range(distribution.means.shape[0])]
    figure = plot_mixtures(distribution.logits, distribution.means, distribution.stds, bounds=bounds, row_titles=titles)
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure
