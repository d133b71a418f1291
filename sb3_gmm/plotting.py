"""Pictures of Gaussian-mixture action densities: 1-D marginals per action dimension, 2-D contours for pairs.

Built on matplotlib's object-oriented API (a :class:`~matplotlib.figure.Figure` drawn by its own Agg canvas):
importing this module never changes the user's backend, and no figure is registered with pyplot, so a figure is
freed as soon as nothing references it (pyplot would keep every one open until ``plt.close``).

Two kinds of mixture are drawn:

- a plain mixture (PPO, A2C, TRPO, RecurrentPPO): the Gaussian mixture itself, in the action space's units, with
  the action bounds as dotted lines (SB3 clips actions to them);
- a tanh-squashed mixture (SAC, TQC: the distribution has ``squashed = True``): the density of the squashed action
  inside the bounds, change-of-variables Jacobian included. The policy's actions live in ``[-1, 1]^D`` and SB3
  rescales them linearly to the action space's ``[low, high]``; the x-axis is in the action space's units (the
  density rescaled with it), so plots of both kinds read the same way.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch as th
from gymnasium import spaces
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sb3_gmm.mixture import component_log_joint

MAX_MARGINALS = 6
MAX_PAIRS = 2
GRID_POINTS = 400
PAIR_GRID_POINTS = 100
# At most this many observations are drawn by plot_policy_density (one row each).
MAX_PLOT_OBSERVATIONS = 4

Bounds = Sequence[Tuple[float, float]]


def new_figure(figsize: Tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas, outside pyplot: nothing global keeps it alive or changes the backend."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def figure_to_rgb(figure: Figure) -> np.ndarray:
    """Render a figure to an ``[H, W, 3]`` uint8 array (what TensorBoard and W&B images take).

    :param figure: a figure from this module (or any figure: an Agg canvas is attached if it has none)
    """
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def is_squashed(distribution: Any) -> bool:
    """Whether a bound distribution is a tanh-squashed mixture (SAC/TQC actors: actions in ``[-1, 1]^D``)."""
    return bool(getattr(distribution, "squashed", False))


def finite_bounds(action_space: Any) -> Optional[List[Tuple[float, float]]]:
    """Per-dimension ``(low, high)`` of a Box action space; None if any bound is infinite (nothing to draw)."""
    if not isinstance(action_space, spaces.Box):
        return None
    low, high = np.ravel(action_space.low).astype(float), np.ravel(action_space.high).astype(float)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        return None
    return list(zip(low.tolist(), high.tolist()))


def component_densities(
    points: th.Tensor,
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    dims: Sequence[int],
    squashed: bool = False,
    bounds: Optional[Bounds] = None,
) -> th.Tensor:
    """Weighted component densities ``w_k p_k`` of the marginal over ``dims`` at ``points``; their sum is the mixture.

    A diagonal mixture's marginal over some dimensions is the mixture of the components' marginals, and tanh acts
    per dimension, so the squashed marginal is the squashed mixture of the marginals: for ``u`` in ``(-1, 1)``,
    ``p(u) = sum_k w_k N(atanh u; mu_k, s_k) / prod(1 - u^2)``. With ``bounds`` the points are in the action
    space's units ``a = c + h u`` (centre ``c``, half-range ``h``) and the density is divided by ``prod h``.

    :param points: ``[G, len(dims)]`` where to evaluate (inside the bounds when squashed)
    :param logits: ``[K]`` unnormalised log weights
    :param means: ``[K, D]`` (pre-squash for a squashed mixture)
    :param stds: ``[K, D]``
    :param dims: the action dimensions of the marginal
    :param squashed: evaluate the tanh-squashed mixture
    :param bounds: ``(low, high)`` of each dimension in ``dims``; for a squashed mixture None means ``[-1, 1]``
    :return: ``[G, K]`` in float64
    """
    dims = list(dims)
    points = points.detach().double().cpu()
    log_weights = th.log_softmax(logits.detach().double().cpu(), dim=-1)
    component_means = means.detach().double().cpu()[:, dims]
    component_stds = stds.detach().double().cpu()[:, dims]
    if not squashed:
        return component_log_joint(points, log_weights, component_means, component_stds).exp()
    if bounds is None:
        centres, half_ranges = th.zeros(len(dims), dtype=th.float64), th.ones(len(dims), dtype=th.float64)
    else:
        low, high = th.tensor(bounds, dtype=th.float64).unbind(-1)
        centres, half_ranges = (high + low) / 2, (high - low) / 2
    unit_actions = (points - centres) / half_ranges
    if not bool(((unit_actions > -1) & (unit_actions < 1)).all()):
        raise ValueError("points must lie strictly inside the bounds for a squashed mixture (its density ends there)")
    pre_squash = th.atanh(unit_actions)
    # d atanh(u)/du = 1 / (1 - u^2), and du/da = 1 / h
    log_jacobian = -(th.log1p(-unit_actions.square()) + half_ranges.log()).sum(-1, keepdim=True)
    return (component_log_joint(pre_squash, log_weights, component_means, component_stds) + log_jacobian).exp()


def _grid(
    means: th.Tensor, stds: th.Tensor, bound: Optional[Tuple[float, float]], squashed: bool, n_points: int
) -> np.ndarray:
    """Where to draw one dimension: the box's interior when squashed, else +-3.5 stds around the means and the bound."""
    if squashed:
        low, high = bound if bound is not None else (-1.0, 1.0)
        return np.linspace(low, high, n_points + 2)[1:-1]
    component_means, component_stds = means.detach().double().cpu().numpy(), stds.detach().double().cpu().numpy()
    low = float(np.min(component_means - 3.5 * component_stds))
    high = float(np.max(component_means + 3.5 * component_stds))
    if bound is not None:
        low, high = min(low, bound[0] - 0.2), max(high, bound[1] + 0.2)
    return np.linspace(low, high, n_points)


def plot_marginal(
    ax: Axes,
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    dim: int = 0,
    bounds: Optional[Tuple[float, float]] = None,
    squashed: bool = False,
) -> None:
    """The 1-D marginal of dimension ``dim`` (itself a 1-D mixture) and its weighted components.

    :param ax: matplotlib axes to draw on
    :param logits: ``[K]`` unnormalised log weights
    :param means: ``[K, D]``
    :param stds: ``[K, D]``
    :param dim: which action dimension
    :param bounds: the action space's (low, high) in that dimension, drawn as dotted lines
    :param squashed: draw the tanh-squashed mixture inside the bounds (see :func:`component_densities`)
    """
    grid = _grid(means[:, dim], stds[:, dim], bounds, squashed, GRID_POINTS)
    dim_bounds = None if bounds is None else [bounds]
    components = component_densities(th.from_numpy(grid)[:, None], logits, means, stds, [dim], squashed, dim_bounds)
    components = components.numpy().T  # [K, G]
    weights = th.softmax(logits.detach().double(), -1).cpu().numpy()
    for weight, density in zip(weights, components):
        ax.plot(grid, density, lw=0.8, ls="--", alpha=0.8, label=f"w={weight:.2f}")
    ax.plot(grid, components.sum(0), color="black", lw=1.6, label="squashed mixture" if squashed else "mixture")
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
    bounds: Optional[Bounds] = None,
    squashed: bool = False,
) -> None:
    """Contours of the 2-D marginal over dimensions ``dims`` with the component means marked (size ~ weight).

    :param bounds: (low, high) of the two dimensions; used for a squashed mixture (its box), ignored otherwise
    :param squashed: draw the tanh-squashed mixture inside the bounds; the marks are then the squashed means
    """
    first, second = dims
    pair_bounds = list(bounds) if bounds is not None else [None, None]
    grid_x = _grid(means[:, first], stds[:, first], pair_bounds[0], squashed, PAIR_GRID_POINTS)
    grid_y = _grid(means[:, second], stds[:, second], pair_bounds[1], squashed, PAIR_GRID_POINTS)
    xx, yy = np.meshgrid(grid_x, grid_y)
    points = th.from_numpy(np.stack([xx.ravel(), yy.ravel()], -1))
    density = component_densities(points, logits, means, stds, dims, squashed, bounds).sum(-1).numpy()
    ax.contourf(xx, yy, density.reshape(xx.shape), levels=12, cmap="viridis")
    weights = th.softmax(logits.detach().double(), -1).cpu().numpy()
    marks = means.detach().double().cpu()[:, list(dims)]
    if squashed:
        # The image of the pre-squash means, in the plotted units.
        marks = th.tanh(marks)
        if bounds is not None:
            low, high = th.tensor(bounds, dtype=th.float64).unbind(-1)
            marks = (high + low) / 2 + (high - low) / 2 * marks
    ax.scatter(marks[:, 0].numpy(), marks[:, 1].numpy(), s=20 + 200 * weights, c="white", marker="x")
    ax.set_xlabel(f"action[{first}]")
    ax.set_ylabel(f"action[{second}]")


def plot_mixture(
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    bounds: Optional[Bounds] = None,
    title: Optional[str] = None,
    squashed: bool = False,
) -> Figure:
    """One row of panels for one mixture: marginals of the first dimensions, then contours of the first pairs.

    :param logits: ``[K]``
    :param means: ``[K, D]``
    :param stds: ``[K, D]``
    :param bounds: per-dimension (low, high) of the action space
    :param title: figure title
    :param squashed: draw the tanh-squashed mixture inside the bounds
    """
    figure = plot_mixtures(logits[None], means[None], stds[None], bounds=bounds, row_titles=None, squashed=squashed)
    if title:
        figure.suptitle(title)
    return figure


def plot_mixtures(
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    bounds: Optional[Bounds] = None,
    row_titles: Optional[Sequence[str]] = None,
    squashed: bool = False,
) -> Figure:
    """A grid of panels, one row per mixture of a batch (``logits [B, K]``, ``means``/``stds [B, K, D]``).

    :param bounds: per-dimension (low, high) of the action space
    :param row_titles: a label per row
    :param squashed: draw the tanh-squashed mixtures inside the bounds (``[-1, 1]`` per dimension without bounds)
    """
    n_rows, dim = means.shape[0], means.shape[-1]
    n_marginals = min(dim, MAX_MARGINALS)
    pairs = [(a, a + 1) for a in range(0, dim - 1, 2)][:MAX_PAIRS]
    n_cols = n_marginals + len(pairs)
    figure = new_figure((3.2 * n_cols, 2.6 * n_rows))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for row in range(n_rows):
        for d in range(n_marginals):
            dim_bounds = None if bounds is None else bounds[d]
            plot_marginal(axes[row, d], logits[row], means[row], stds[row], d, dim_bounds, squashed)
        for column, pair in enumerate(pairs, start=n_marginals):
            pair_bounds = None if bounds is None else [bounds[pair[0]], bounds[pair[1]]]
            plot_pair(axes[row, column], logits[row], means[row], stds[row], pair, pair_bounds, squashed)
        if row_titles is not None:
            axes[row, 0].set_ylabel(row_titles[row])
    axes[0, 0].legend(fontsize=6, loc="upper right")
    figure.tight_layout()
    return figure


def observation_batch_size(obs_tensor: Union[th.Tensor, Dict[str, th.Tensor]]) -> int:
    """Rows in a batch of (possibly Dict) observations."""
    if isinstance(obs_tensor, dict):
        return next(iter(obs_tensor.values())).shape[0]
    return obs_tensor.shape[0]


def policy_distribution(policy: Any, obs_tensor: Union[th.Tensor, Dict[str, th.Tensor]]) -> Any:
    """The GMM action distribution a policy binds for a batch of observations (array or Dict).

    - off-policy actors (SAC, TQC: the policy has an ``actor``): ``policy.actor.get_distribution(obs)``, a
      tanh-squashed mixture (``squashed = True``);
    - recurrent policies: ``policy.get_distribution`` from a fresh LSTM state;
    - PPO, A2C, TRPO: ``policy.get_distribution(obs)``.

    Each gives ``logits [B, K]``, ``means [B, K, D]``, ``stds [B, K, D]`` (pre-squash for a squashed mixture) and
    ``log_prob(actions [B, D]) -> [B]``.

    :param policy: an SB3 policy (not the algorithm)
    :param obs_tensor: observations already on the policy's device, as ``policy.obs_to_tensor`` gives them
    :raises ValueError: if the policy's distribution is not a Gaussian mixture
    """
    actor = getattr(policy, "actor", None)
    if actor is not None and hasattr(actor, "get_distribution"):
        distribution = actor.get_distribution(obs_tensor)
    elif hasattr(policy, "lstm_hidden_state_shape"):
        n_layers, _, hidden = policy.lstm_hidden_state_shape
        batch = observation_batch_size(obs_tensor)
        zeros = th.zeros(n_layers, batch, hidden, device=policy.device)
        distribution, _ = policy.get_distribution(obs_tensor, (zeros, zeros), th.ones(batch, device=policy.device))
    elif hasattr(policy, "get_distribution"):
        distribution = policy.get_distribution(obs_tensor)
    else:
        raise ValueError(
            f"{type(policy).__name__} has neither get_distribution nor an actor with one; use a GMM policy from sb3_gmm"
        )
    if not all(hasattr(distribution, name) for name in ("logits", "means", "stds")):
        raise ValueError(f"expected a GMM policy (sb3_gmm), got a {type(distribution).__name__} distribution")
    return distribution


def plot_distribution(distribution: Any, action_space: Any, row_titles: Optional[Sequence[str]] = None) -> Figure:
    """Draw a bound GMM distribution (one row per batch element), squashed inside the bounds if it is squashed.

    :param distribution: from :func:`policy_distribution`
    :param action_space: the policy's action space (its bounds are drawn, and scale a squashed mixture's x-axis)
    :param row_titles: a label per row
    """
    return plot_mixtures(
        distribution.logits,
        distribution.means,
        distribution.stds,
        bounds=finite_bounds(action_space),
        row_titles=row_titles,
        squashed=is_squashed(distribution),
    )


def _first_rows(obs_tensor: Union[th.Tensor, Dict[str, th.Tensor]], n_rows: int) -> Any:
    if isinstance(obs_tensor, dict):
        return {key: value[:n_rows] for key, value in obs_tensor.items()}
    return obs_tensor[:n_rows]


def plot_policy_density(
    model_or_policy: Any,
    observations: Union[np.ndarray, Dict[str, np.ndarray]],
    path: Optional[Union[str, Path]] = None,
) -> Figure:
    """Plot the action mixture a trained GMM policy puts on each of a few observations.

    :param model_or_policy: an SB3 algorithm (``model.policy`` is used) or a GMM policy, on- or off-policy
    :param observations: one observation or a batch (a dict of arrays for Dict observation spaces), as an env gives
        them; at most the first 4 are drawn
    :param path: where to save a PNG (the figure is returned either way)
    """
    policy = getattr(model_or_policy, "policy", model_or_policy)
    with th.no_grad():
        obs_tensor, _ = policy.obs_to_tensor(observations)
        obs_tensor = _first_rows(obs_tensor, MAX_PLOT_OBSERVATIONS)
        distribution = policy_distribution(policy, obs_tensor)
    titles = [f"obs {i}" for i in range(distribution.means.shape[0])]
    figure = plot_distribution(distribution, policy.action_space, row_titles=titles)
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure


__all__ = [
    "component_densities",
    "figure_to_rgb",
    "finite_bounds",
    "is_squashed",
    "new_figure",
    "observation_batch_size",
    "plot_distribution",
    "plot_marginal",
    "plot_mixture",
    "plot_mixtures",
    "plot_pair",
    "plot_policy_density",
    "policy_distribution",
]
