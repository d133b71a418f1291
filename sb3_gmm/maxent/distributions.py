"""Tanh-squashed diagonal Gaussian mixture: the mixture counterpart of SB3's ``SquashedDiagGaussianDistribution``.

The pre-squash action ``u`` follows a diagonal Gaussian mixture (weights ``softmax(logits)``, means ``mu_k``, stds
``s_k``) and the action is ``a = tanh(u)`` in ``(-1, 1)^D`` (SB3 rescales it to the Box). Change of variables:

    log p_a(a) = log p_u(u) - sum_d log(1 - tanh(u_d)^2),        u = atanh(a)

and, taking expectations of ``-log p_a``, the squashed entropy

    H(a) = H(u) + E_u[sum_d log(1 - tanh(u_d)^2)]
         = H(u) + sum_k w_k sum_d E_{x ~ N(mu_kd, s_kd^2)}[log(1 - tanh(x)^2)].

The second line holds because the Jacobian factorises over dimensions and every component is a product of 1-D
Gaussians. :meth:`SquashedGMMDistribution.entropy` estimates ``H(u)`` with :func:`sb3_gmm.entropy.mixture_entropy`
(the configured estimator) and computes the Jacobian term by 1-D quadrature per component and dimension
(:func:`expected_log_tanh_jacobian`, accurate to 5e-7 nats per dimension): the only approximation is the estimator's.
"""

import math
from functools import lru_cache
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution, TanhBijector
from torch import nn

from sb3_gmm.distributions import check_finite_mixture_parameters, resolve_entropy_settings
from sb3_gmm.entropy import MixtureParams, get_validate_args, mixture_entropy
from sb3_gmm.entropy.quadrature import gauss_hermite_points
from sb3_gmm.maxent.reparam import implicit_mixture_sample
from sb3_gmm.mixture import component_log_joint, mixture_log_prob, spread_component_levels

LOG_2 = math.log(2.0)
# Expected log-Jacobian: Gauss-Hermite in the standardised variable up to this std, Gauss-Legendre in x above it.
# Worst errors against fine quadrature in float64, means 0..6 and log stds -20..2 (tests/test_maxent_distribution.py
# checks 1e-6): Hermite-16 5e-7 and Legendre-16 1e-7, both at the switch; 24 nodes each would give ~1e-8 for 1.5x
# the cost of this term.
JACOBIAN_HERMITE_MAX_STD = 0.75
JACOBIAN_HERMITE_POINTS = 16
JACOBIAN_LEGENDRE_POINTS = 16
# softplus(-2 x) < 2e-9 beyond x = 10: the rest of its integral is below 1e-9.
JACOBIAN_LEGENDRE_RANGE = 10.0
# Minorize-maximize steps of mode() from every component mean (see SquashedGMMDistribution.mode).
SQUASHED_MODE_STEPS = 20


def log_tanh_jacobian(gaussian_actions: th.Tensor) -> th.Tensor:
    """``log(1 - tanh(u)^2)`` elementwise, finite and exact for every finite ``u`` (no epsilon).

    Written as ``2 (log 2 - logaddexp(u, -u))`` (that is ``-2 log cosh u``; the same as
    ``2 (log 2 - u - softplus(-2 u))``): no cancellation at large ``|u|``, where ``1 - tanh(u)^2`` rounds to 0, and
    the gradient is ``-2 tanh(u)`` everywhere.

    :param gaussian_actions: pre-squash actions ``u``
    """
    return 2.0 * (LOG_2 - th.logaddexp(gaussian_actions, -gaussian_actions))


@lru_cache(maxsize=8)
def _legendre_rule(n_points: int, upper: float) -> Tuple[th.Tensor, th.Tensor]:
    """Gauss-Legendre nodes and weights on ``[0, upper]``, float64."""
    nodes, weights = np.polynomial.legendre.leggauss(n_points)
    return th.as_tensor((nodes + 1.0) * upper / 2.0), th.as_tensor(weights * upper / 2.0)


def expected_log_tanh_jacobian(means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    """``E_{x ~ N(mu, s^2)}[log(1 - tanh(x)^2)]`` elementwise, differentiable in ``means`` and ``stds``.

    ``log(1 - tanh(x)^2)`` is analytic only in the strip ``|Im x| < pi / 2``, so Gauss-Hermite in ``z = (x - mu) / s``
    converges fast for narrow Gaussians but slowly for wide ones (32 nodes: 5e-8 at s = 1, 0.08 at s = 7.4).
    So narrow Gaussians (``s <= JACOBIAN_HERMITE_MAX_STD``) use Gauss-Hermite. Wide
    Gaussians use the split ``2 log 2 - 2 |x| - 2 softplus(-2 |x|)``: ``E|x|`` is the folded-normal mean (closed
    form) and the bump ``softplus(-2 |x|)``, smooth on ``[0, inf)`` and negligible beyond 10, is integrated against
    ``N(x) + N(-x)`` by Gauss-Legendre on ``[0, 10]`` in ``x``. Where both kinds occur, each branch sees stds clamped
    to its own range, so the branch not taken stays finite and passes no gradient.

    :param means: Gaussian means ``[...]``
    :param stds: Gaussian stds, broadcasting with ``means``
    """
    # On the CPU, when every std is on one side of the switch, only that branch is computed (exact, and the common
    # case in training); on a GPU the check would force a device sync, so both branches always run there.
    if stds.device.type == "cpu" and stds.numel() > 0:
        largest, smallest = float(stds.detach().max()), float(stds.detach().min())
        if largest <= JACOBIAN_HERMITE_MAX_STD:
            return _narrow_expected_log_jacobian(means, stds)
        if smallest > JACOBIAN_HERMITE_MAX_STD:
            return _wide_expected_log_jacobian(means, stds)
    narrow = _narrow_expected_log_jacobian(means, stds.clamp(max=JACOBIAN_HERMITE_MAX_STD))
    wide = _wide_expected_log_jacobian(means, stds.clamp(min=JACOBIAN_HERMITE_MAX_STD))
    return th.where(stds <= JACOBIAN_HERMITE_MAX_STD, narrow, wide)


def _narrow_expected_log_jacobian(means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    """Gauss-Hermite in ``z = (x - mu) / s`` (see :func:`expected_log_tanh_jacobian`)."""
    nodes, weights = gauss_hermite_points(JACOBIAN_HERMITE_POINTS)
    nodes = nodes.squeeze(-1).to(dtype=means.dtype, device=means.device)
    weights = weights.to(dtype=means.dtype, device=means.device)
    points = means.unsqueeze(-1) + stds.unsqueeze(-1) * nodes
    # The weights sum to 1: the constant 2 log 2 of log_tanh_jacobian comes out of the sum.
    return 2.0 * (LOG_2 - th.logaddexp(points, -points) @ weights)


def _wide_expected_log_jacobian(means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    """Folded-normal mean plus Gauss-Legendre in ``x`` of the bump (see :func:`expected_log_tanh_jacobian`)."""
    standardised_means = means / stds
    folded_mean = stds * math.sqrt(2.0 / math.pi) * th.exp(-0.5 * standardised_means.square()) + means * th.erf(
        standardised_means / math.sqrt(2.0)
    )
    nodes, weights = _legendre_rule(JACOBIAN_LEGENDRE_POINTS, JACOBIAN_LEGENDRE_RANGE)
    nodes = nodes.to(dtype=means.dtype, device=means.device)
    # softplus(-2 x) N(0, 1)-normalised by 1 / (s sqrt(2 pi)) later, folded into the weights once.
    bump_weights = nn.functional.softplus(-2.0 * nodes) * weights.to(dtype=means.dtype, device=means.device)
    scaled_nodes = nodes / stds.unsqueeze(-1)
    scaled_means = standardised_means.unsqueeze(-1)
    folded_density = th.exp(-0.5 * (scaled_nodes - scaled_means).square()) + th.exp(
        -0.5 * (scaled_nodes + scaled_means).square()
    )
    bump = (folded_density @ bump_weights) / (stds * math.sqrt(2.0 * math.pi))
    return 2.0 * (LOG_2 - folded_mean - bump)


class SquashedGMMDistribution(Distribution):
    """Diagonal Gaussian mixture followed by ``tanh``, with SB3's Distribution API (as SAC's actor uses it).

    The parameters come as SB3's actor produces them: ``mean_actions [B, K * D]`` (component-major, or
    ``[B, K, D]``), ``log_std`` of the same shape (already clamped by the actor) and ``logits [B, K]`` (omitted for
    ``K = 1``), so SB3's ``Actor.forward`` / ``action_log_prob`` pass them through unchanged. After
    :meth:`proba_distribution` the attributes ``logits [B, K]``, ``means [B, K, D]`` and ``stds [B, K, D]`` hold the
    pre-squash mixture; ``sample``/``mode`` give actions in ``(-1, 1)^D``, ``log_prob``/``entropy`` give ``[B]``.

    :param action_dim: dimension D of the (flattened) action
    :param n_components: number of mixture components K
    :param entropy_method: estimator of the pre-squash entropy, a name of :data:`sb3_gmm.entropy.ESTIMATORS`;
        None uses the library default
    :param entropy_kwargs: options of that estimator (e.g. ``dict(n_points=32)``), checked here
    :param validate_args: check, once per :meth:`proba_distribution`, that the network's mixture parameters are
        finite (one reduction and one device sync per batch); None follows :func:`sb3_gmm.entropy.get_validate_args`
    """

    squashed = True

    def __init__(
        self,
        action_dim: int,
        n_components: int = 4,
        entropy_method: Optional[str] = None,
        entropy_kwargs: Optional[Dict[str, Any]] = None,
        validate_args: Optional[bool] = None,
    ):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(
                f"n_components must be a positive int (1 gives SB3's squashed Gaussian), got {n_components!r}"
            )
        if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"action_dim must be a positive int, got {action_dim!r}")
        # Resolve now so a typo in the method or its options fails when the actor is built, not mid-training.
        entropy_method, self.entropy_kwargs = resolve_entropy_settings(entropy_method, entropy_kwargs)
        self.action_dim = action_dim
        self.n_components = n_components
        # The resolved name: a saved model keeps its estimator if the library default changes.
        self.entropy_method = entropy_method
        self.validate_args = validate_args
        self.logits: Optional[th.Tensor] = None
        self.means: Optional[th.Tensor] = None
        self.stds: Optional[th.Tensor] = None
        self.log_stds: Optional[th.Tensor] = None
        self.log_weights: Optional[th.Tensor] = None
        # Pre-squash value of the last sample()/mode(), as in SB3: log_prob_from_params uses it instead of atanh.
        self.gaussian_actions: Optional[th.Tensor] = None

    def proba_distribution_net(
        self, latent_dim: int, init_mean_spread: float = 0.5
    ) -> Tuple[nn.Linear, nn.Linear, Optional[nn.Linear]]:
        """Create the heads in SB3's order: means, log stds, then (only for ``K > 1``) the logits.

        With ``K = 1`` this consumes the random stream exactly as SB3's actor does (``mu`` then ``log_std``).
        For ``K > 1`` the mean head's bias starts at :func:`spread_component_levels`, so components start apart.

        :param latent_dim: size of the actor's latent
        :param init_mean_spread: half-width of the initial spread of pre-squash component means
        :return: ``mu`` (``K * D`` outputs), ``log_std`` (``K * D``) and the logits head (``K``) or None
        """
        n_outputs = self.n_components * self.action_dim
        mean_net = nn.Linear(latent_dim, n_outputs)
        log_std_net = nn.Linear(latent_dim, n_outputs)
        if self.n_components == 1:
            return mean_net, log_std_net, None
        logits_net = nn.Linear(latent_dim, self.n_components)
        with th.no_grad():
            mean_net.bias.copy_(spread_component_levels(self.n_components, self.action_dim, init_mean_spread).flatten())
        return mean_net, log_std_net, logits_net

    def proba_distribution(
        self, mean_actions: th.Tensor, log_std: th.Tensor, logits: Optional[th.Tensor] = None
    ) -> "SquashedGMMDistribution":
        """Bind this batch's mixture (rebinding attributes, never mutating them, so shallow copies stay valid).

        :param mean_actions: pre-squash component means ``[B, K * D]`` or ``[B, K, D]``
        :param log_std: their log stds, same shape
        :param logits: unnormalised log weights ``[B, K]``; may be omitted only for ``K = 1``
        """
        n_components, dim = self.n_components, self.action_dim
        # [B, K, D] needs at least three axes: with K = 1 a flat [B, D] would otherwise read as [K, D].
        if mean_actions.dim() >= 3 and mean_actions.shape[-2:] == (n_components, dim):
            batch_shape = mean_actions.shape[:-2]
        elif mean_actions.shape[-1] == n_components * dim:
            batch_shape = mean_actions.shape[:-1]
        else:
            raise ValueError(
                f"mean_actions must have shape [B, {n_components * dim}] or [B, {n_components}, {dim}] for "
                f"K={n_components}, D={dim}, got {tuple(mean_actions.shape)}"
            )
        component_shape = (*batch_shape, n_components, dim)
        means = mean_actions.reshape(component_shape)
        log_stds = log_std.reshape(component_shape)
        if logits is None:
            if n_components > 1:
                raise ValueError(f"logits [B, {n_components}] are required for n_components={n_components}")
            logits = th.zeros((*batch_shape, 1), dtype=means.dtype, device=means.device)
        elif logits.shape != (*batch_shape, n_components):
            raise ValueError(f"logits must have shape {(*batch_shape, n_components)}, got {tuple(logits.shape)}")
        # Skipped under torch.compile, as in GMMDistribution (the device sync would break the graph every step).
        validate = get_validate_args() if self.validate_args is None else self.validate_args
        if validate and not th.compiler.is_compiling():
            # At bind time, so NaN never reaches sample(), mode() and hence the environment.
            parts = {"logits": logits, "means": means, "log stds": log_stds}
            check_finite_mixture_parameters("SquashedGMMDistribution", parts, batch_dims=len(batch_shape))
        self.logits = logits
        self.means = means
        self.log_stds = log_stds
        self.stds = log_stds.exp()
        self.log_weights = th.log_softmax(logits, dim=-1)
        self.gaussian_actions = None
        return self

    def gaussian_log_prob(self, gaussian_actions: th.Tensor) -> th.Tensor:
        """Log density of pre-squash actions ``u [B, D]`` under the (unsquashed) mixture, shape ``[B]``."""
        return mixture_log_prob(gaussian_actions, self.log_weights, self.means, self.stds, log_stds=self.log_stds)

    def log_prob(self, actions: th.Tensor, gaussian_actions: Optional[th.Tensor] = None) -> th.Tensor:
        """Exact log density of squashed ``actions [B, D]`` in ``[-1, 1]^D``, tanh Jacobian included, shape ``[B]``.

        :param actions: squashed actions
        :param gaussian_actions: their pre-squash values when known (a sample's); otherwise ``atanh`` of the actions
            clamped one float epsilon inside the bounds, as SB3 does, so actions at the bounds stay finite. Unlike
            SB3 no ``1e-6`` is added inside the Jacobian's log: it is computed from ``u`` and exact
        """
        if gaussian_actions is None:
            gaussian_actions = TanhBijector.inverse(actions)
        return self.gaussian_log_prob(gaussian_actions) - log_tanh_jacobian(gaussian_actions).sum(-1)

    def gaussian_entropy(self) -> th.Tensor:
        """The configured estimate of the pre-squash mixture's entropy ``H(u)``, shape ``[B]``."""
        params = MixtureParams(self.log_weights, self.means, self.stds, self.log_stds)
        # Checked once at bind time (proba_distribution), not again here.
        return mixture_entropy(params, method=self.entropy_method, validate_args=False, **self.entropy_kwargs)

    def expected_log_jacobian(self) -> th.Tensor:
        """``E_u[sum_d log(1 - tanh(u_d)^2)] = sum_k w_k sum_d E_{N(mu_kd, s_kd^2)}[...]`` by quadrature, ``[B]``."""
        per_component = expected_log_tanh_jacobian(self.means, self.stds).sum(-1)
        return (self.log_weights.exp() * per_component).sum(-1)

    def entropy(self) -> th.Tensor:
        """Estimate of the squashed entropy ``H(a) = H(u) + E_u[sum_d log(1 - tanh(u_d)^2)]``, shape ``[B]``.

        ``H(u)`` is the configured estimator's; the Jacobian term is exact up to quadrature error (below 5e-7 per
        dimension). Both terms are deterministic and differentiable w.r.t. logits, means and stds.
        """
        return self.gaussian_entropy() + self.expected_log_jacobian()

    def sample(self) -> th.Tensor:
        """A squashed mixture sample whose gradient reaches logits, means and stds (implicit reparameterization).

        With ``K = 1`` it is SB3's ``tanh(Normal(mean, std).rsample())``, same random stream and value.
        """
        self.gaussian_actions = implicit_mixture_sample(self.log_weights, self.means, self.stds, log_stds=self.log_stds)
        return th.tanh(self.gaussian_actions)

    def squashed_log_prob_of_gaussian(self, gaussian_actions: th.Tensor) -> th.Tensor:
        """``log p_a(tanh(u))`` for pre-squash points ``u [..., D]`` (the objective mode() maximises)."""
        return self.gaussian_log_prob(gaussian_actions) - log_tanh_jacobian(gaussian_actions).sum(-1)

    def mode(self) -> th.Tensor:
        """The highest peak found of the squashed density ``p_a`` (no gradient), in ``(-1, 1)^D``.

        The Jacobian moves peaks: in ``u`` the squashed log density is ``g(u) = log p_u(u) + 2 sum_d log cosh(u_d)``,
        so a peak sits further out than its component mean (a single Gaussian's at ``u = mu + 2 s^2 tanh(u)``, which
        for ``s > 1 / sqrt(2)`` and ``mu = 0`` is no longer at 0 but near a bound). From every component mean this
        takes ``SQUASHED_MODE_STEPS`` minorize-maximize steps: Jensen's bound on ``log p_u`` (as mean-shift) plus the
        tangent line of the convex ``log cosh`` give the update
        ``u <- (sum_k r_k(u) P_k mu_k + 2 tanh(u)) / sum_k r_k(u) P_k`` (``r_k`` responsibilities, ``P_k`` precisions),
        which never lowers ``g``; a step is also kept only where it raised ``g`` (floating point). The best endpoint
        over all starts is returned, so the result is never worse than the best squashed component mean.

        It differs from SB3's deterministic action ``tanh(mean)`` even for ``K = 1`` (by ``2 s^2 tanh(u)`` in ``u``:
        negligible for a trained, narrow policy, large for a wide one).
        """
        with th.no_grad():
            log_weights, means, stds, log_stds = self.log_weights, self.means, self.stds, self.log_stds
            precisions = stds.pow(-2)
            # One start per component mean, on a leading axis: [K, *batch, D].
            points = means.movedim(-2, 0)
            values = self.squashed_log_prob_of_gaussian(points)
            for _ in range(SQUASHED_MODE_STEPS):
                responsibilities = th.softmax(
                    component_log_joint(points, log_weights, means, stds, log_stds), dim=-1
                ).unsqueeze(-1)
                weighted_precisions = (responsibilities * precisions).sum(-2)
                shifted = (
                    (responsibilities * precisions * means).sum(-2) + 2.0 * th.tanh(points)
                ) / weighted_precisions
                shifted_values = self.squashed_log_prob_of_gaussian(shifted)
                improved = shifted_values > values
                points = th.where(improved.unsqueeze(-1), shifted, points)
                values = th.where(improved, shifted_values, values)
            best = values.argmax(0)
            index = best.view(1, *best.shape, 1).expand(1, *best.shape, self.action_dim)
            self.gaussian_actions = points.gather(0, index).squeeze(0)
        return th.tanh(self.gaussian_actions)

    def actions_from_params(
        self,
        mean_actions: th.Tensor,
        log_std: th.Tensor,
        logits: Optional[th.Tensor] = None,
        deterministic: bool = False,
    ) -> th.Tensor:
        """Bind the parameters, then sample (or take the mode with ``deterministic=True``)."""
        self.proba_distribution(mean_actions, log_std, logits)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(
        self, mean_actions: th.Tensor, log_std: th.Tensor, logits: Optional[th.Tensor] = None
    ) -> Tuple[th.Tensor, th.Tensor]:
        """Sample squashed actions and return them with their exact log density (SAC's single-sample log pi)."""
        actions = self.actions_from_params(mean_actions, log_std, logits)
        return actions, self.log_prob(actions, self.gaussian_actions)
