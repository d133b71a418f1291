"""Gaussian-mixture action distribution for Stable-Baselines3, with a deterministic, differentiable entropy."""

import copy
import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch as th
from stable_baselines3.common.distributions import Distribution
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, register_kl

from sb3_gmm import compiled_head, native
from sb3_gmm.entropy import MixtureParams, get_estimator, get_validate_args, mixture_entropy
from sb3_gmm.entropy.quadrature import PointRule, kernel_preferred
from sb3_gmm.mixture import (
    LOG_2PI,
    MixtureHeadLayout,
    component_log_joint,
    diag_gaussian_kl,
    mixture_log_prob,
    spread_component_levels,
)

# Mean-shift steps taken by mode() from the best component mean towards the nearest true peak.
MODE_REFINEMENT_STEPS = 5
# Log stds are the identity this far inside their bounds and saturate smoothly over the last stretch.
LOG_STD_SOFT_MARGIN = 0.5
# What usually makes a policy head output NaN or inf, and what to do about it.
NON_FINITE_CAUSES = (
    "likely causes: NaN or inf observations (check the env and VecNormalize's statistics; wrap the env in "
    "stable_baselines3.common.vec_env.VecCheckNan to find the step), or a diverged network (lower the learning "
    "rate, clip gradients with max_grad_norm)"
)


def soft_clamp(values: th.Tensor, low: float, high: float, margin: float = LOG_STD_SOFT_MARGIN) -> th.Tensor:
    """Identity on ``[low + margin, high - margin]``, exponential saturation towards ``low`` / ``high`` beyond.

    Continuous with a continuous first derivative and never flat, so a log std pushed past a bound still gets a
    gradient back (a hard clamp would leave it stuck), while values in the interior are untouched (a single
    component then reproduces SB3's Gaussian exactly).

    :param values: raw log stds
    :param low: lower bound, approached but never reached
    :param high: upper bound, approached but never reached
    :param margin: width of each saturating stretch (clipped to half the interval)
    """
    low, high, margin = soft_clamp_bounds(low, high, margin)
    inner_low, inner_high = low + margin, high - margin
    # Fast path, exact (value and gradient): in training the log stds sit inside the bounds nearly always, and on
    # the CPU the ten recorded ops of the general case cost more than the rest of proba_distribution. (On a GPU the
    # check would force a device sync every call, so the general, asynchronous path is kept there.)
    # (aminmax has no identity, so an empty tensor takes the general path, which returns it unchanged.) Under
    # torch.compile the check would read a changing value into Python: a recompile every optimiser step.
    if values.device.type == "cpu" and values.numel() > 0 and not th.compiler.is_compiling():
        smallest, largest = values.detach().aminmax()
        if inner_low <= float(smallest) and float(largest) <= inner_high:
            return values
    # The clamps keep the unused branch of each where() finite, so its gradient is an exact zero, not NaN.
    above = high - margin * th.exp(-(values - inner_high).clamp(min=0.0) / margin)
    below = low + margin * th.exp(-(inner_low - values).clamp(min=0.0) / margin)
    return th.where(values > inner_high, above, th.where(values < inner_low, below, values))


def soft_clamp_bounds(low: float, high: float, margin: float = LOG_STD_SOFT_MARGIN) -> native.LogStdBounds:
    """:func:`soft_clamp`'s bounds with the margin clipped to half the interval (as the compiled kernels take them).

    :param low: lower bound
    :param high: upper bound
    :param margin: width of each saturating stretch before clipping
    """
    return native.LogStdBounds(float(low), float(high), min(margin, 0.5 * (high - low)))


def check_finite_mixture_parameters(owner: str, parts: Dict[str, th.Tensor], batch_dims: int) -> None:
    """Raise a ValueError naming the first batch index whose mixture parameters contain NaN or inf.

    One reduction and one device sync on the happy path (any NaN or inf makes the sum non-finite); the element-wise
    search runs only to name the culprit, and passes if the sum merely overflowed.

    :param owner: the distribution's name, for the message
    :param parts: per-state parameters by name (e.g. logits, means, log stds), each with ``batch_dims`` leading
        batch axes
    :param batch_dims: number of leading batch axes shared by every part
    """
    total = sum(part.detach().sum() for part in parts.values())
    if math.isfinite(float(total)):
        return
    with th.no_grad():
        finite_parts = {
            name: th.isfinite(part).reshape(*part.shape[:batch_dims], -1).all(-1) for name, part in parts.items()
        }
        bad_states = ~th.stack(list(finite_parts.values())).all(0)
        if not bool(bad_states.any()):
            return
        first_bad = tuple(bad_states.nonzero()[0].tolist())
        bad_parts = [name for name, finite in finite_parts.items() if not bool(finite[first_bad])]
        index = first_bad[0] if len(first_bad) == 1 else first_bad
        raise ValueError(
            f"{owner}: the mixture parameters from the policy network are non-finite (NaN or inf) at "
            f"batch index {index} ({', '.join(bad_parts)}; {int(bad_states.sum())} of {bad_states.numel()} "
            f"states affected); {NON_FINITE_CAUSES}. (This check follows validate_args / the policy's "
            "entropy_validate_args, or sb3_gmm.entropy.validation / set_validate_args when those are None.)"
        )


def resolve_entropy_settings(
    entropy_method: Optional[str], entropy_kwargs: Optional[Dict[str, Any]]
) -> Tuple[str, Dict[str, Any]]:
    """Check an estimator choice and its options; return the resolved name (None: the library default) and a copy.

    :param entropy_method: a method of :data:`sb3_gmm.entropy.ESTIMATORS` or None
    :param entropy_kwargs: its options, or None
    """
    if entropy_kwargs is not None and not isinstance(entropy_kwargs, dict):
        raise ValueError(f"entropy_kwargs must be a dict of estimator options, got {type(entropy_kwargs).__name__}")
    entropy_kwargs = dict(entropy_kwargs or {})
    try:
        estimator = get_estimator(entropy_method)
    except ValueError as error:
        raise ValueError(f"entropy_method: {error}") from None
    try:
        estimator.resolve_options(entropy_kwargs)
    except ValueError as error:
        raise ValueError(f"entropy_kwargs: {error}") from None
    return estimator.name, entropy_kwargs


class _Binding(NamedTuple):
    """A bound batch's mixture parameters as :class:`GMMDistribution`'s torch paths use them.

    :param logits: ``[..., K]``
    :param means: ``[..., K, D]``
    :param stds: ``[..., K, D]`` (an expanded view of ``compact_stds`` when the stds are state independent)
    :param log_weights: normalised log weights ``[..., K]``
    :param log_stds: the bounded log stds, ``[..., K, D]``, or ``[K, D]`` when state independent
    :param compact_stds: their exponentials at the same shape
    :param records_graph: whether autograd was recording when they were derived
    """

    logits: th.Tensor
    means: th.Tensor
    stds: th.Tensor
    log_weights: th.Tensor
    log_stds: th.Tensor
    compact_stds: th.Tensor
    records_graph: bool


class GMMTorchDistribution(MixtureSameFamily):
    """The torch mixture behind :class:`GMMDistribution`, with our own class so a KL can be registered for it alone."""


@register_kl(GMMTorchDistribution, GMMTorchDistribution)
def _kl_gmm_gmm(p: GMMTorchDistribution, q: GMMTorchDistribution) -> th.Tensor:
    """Chain-rule upper bound ``KL(w_p || w_q) + sum_i w_p,i KL(N_p,i || N_q,i)`` for aligned components.

    Component ``i`` of ``p`` and ``q`` come from the same output of the same policy head, so the bound is tight when
    the components stay apart; it is smooth (twice differentiable), as TRPO's Hessian-vector products need.
    The result is one KL per sample, summed over action dimensions, whereas TRPO's DiagGaussian KL is averaged
    over action dimensions too: with ``D > 1`` the same ``target_kl`` is a tighter trust region here.
    """
    log_weights_p = p.mixture_distribution.logits
    log_weights_q = q.mixture_distribution.logits
    weights_p = log_weights_p.exp()
    weight_kl = (weights_p * (log_weights_p - log_weights_q)).sum(-1)
    normal_p, normal_q = p.component_distribution.base_dist, q.component_distribution.base_dist
    component_kl = diag_gaussian_kl(normal_p.loc, normal_p.scale.log(), normal_q.loc, normal_q.scale.log()).sum(-1)
    return weight_kl + (weights_p * component_kl).sum(-1)


class GMMDistribution(Distribution):
    """Diagonal Gaussian mixture over a continuous action of ``action_dim`` dimensions.

    The network head outputs, per state, ``K`` logits, ``K * D`` means and (with ``state_dependent_std``) ``K * D``
    log stds; otherwise the log stds are one learned ``[K, D]`` parameter like SB3's ``log_std``. After
    :meth:`proba_distribution` the batch's parameters are ``logits [B, K]``, ``means [B, K, D]`` and
    ``stds [B, K, D]``; ``sample``/``mode`` give ``[B, D]``, ``log_prob``/``entropy`` give ``[B]`` (like SB3's
    DiagGaussianDistribution, summed over action dimensions).

    :param action_dim: dimension D of the (flattened) action
    :param n_components: number of mixture components K
    :param entropy_method: a method of :data:`sb3_gmm.entropy.ESTIMATORS`; None uses the library default, resolved
        here (``entropy_method`` then holds its name, so a saved policy keeps its estimator if the default changes)
    :param entropy_kwargs: options of that method (e.g. ``dict(n_points=32)``), checked here so a typo fails early
    :param state_dependent_std: the head outputs the log stds (True) or they are a free parameter (False)
    :param log_std_min: lower bound of every component's log std. The default -5 (std 0.0067, well below any
        useful exploration noise) stops the Gaussian-mixture singularity: without it a component can shrink onto
        one rewarded action and its log density grows without limit (A2C's unclipped objective rewards exactly that)
    :param log_std_max: upper bound of every log std. The default 2 (std 7.4, SAC's bound too) is already far wider
        than a typical action range; wider stds only produce clipped actions
    :param validate_args: check, once per :meth:`proba_distribution`, that the network's mixture parameters are
        finite, so NaN from the network raises instead of reaching actions, log_prob or entropy (one fused
        reduction and one device sync per batch); None follows :func:`sb3_gmm.entropy.get_validate_args` (this
        thread's :func:`sb3_gmm.entropy.validation` block, else :func:`sb3_gmm.entropy.set_validate_args`; on unless
        switched off)
    :param entropy_in_loss: False makes :meth:`entropy` return None, SB3's convention for a distribution without an
        entropy (SAC's squashed Gaussian): PPO and A2C then skip the estimator and put ``-log_prob`` of the batch's
        actions in its place. Meant for ``ent_coef=0``, where the estimate would only feed the logged
        ``train/entropy_loss`` yet costs most of the mixture's overhead (docs/performance.md).
        :meth:`entropy_estimate` computes the estimate either way
    """

    def __init__(
        self,
        action_dim: int,
        n_components: int = 4,
        entropy_method: Optional[str] = None,
        entropy_kwargs: Optional[Dict[str, Any]] = None,
        state_dependent_std: bool = False,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        validate_args: Optional[bool] = None,
        entropy_in_loss: bool = True,
    ):
        super().__init__()
        if not isinstance(entropy_in_loss, bool):
            raise ValueError(f"entropy_in_loss must be True or False, got {entropy_in_loss!r}")
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive int (1 gives a plain Gaussian), got {n_components!r}")
        if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"action_dim must be a positive int, got {action_dim!r}")
        if not (math.isfinite(log_std_min) and math.isfinite(log_std_max) and log_std_min < log_std_max):
            raise ValueError(
                f"log_std_min must be below log_std_max (both finite), got log_std_min={log_std_min!r}, "
                f"log_std_max={log_std_max!r}"
            )
        # Resolve now so a typo in the method or its options fails when the policy is built, not mid-training.
        entropy_method, self.entropy_kwargs = resolve_entropy_settings(entropy_method, entropy_kwargs)
        self.action_dim = action_dim
        self.n_components = n_components
        self.entropy_method = entropy_method
        self.state_dependent_std = state_dependent_std
        # Where logits, means and log stds sit in the action head's output.
        self.layout = MixtureHeadLayout(n_components, action_dim, state_dependent_std)
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.validate_args = validate_args
        self.entropy_in_loss = entropy_in_loss
        # The head's raw outputs of the bound batch. The compiled one-call paths (sb3_gmm.compiled_head) read only
        # these; the parameters in the forms the other methods use (_Binding) are derived on first use.
        self._action_params: Optional[th.Tensor] = None
        self._log_std_param: Optional[th.Tensor] = None
        self._binding_cache: Optional[_Binding] = None
        self.log_std_bounds = soft_clamp_bounds(self.log_std_min, self.log_std_max)
        # Set by the policy around SB3's evaluate_actions, which asks for log_prob(actions) and then entropy() of the
        # same batch: log_prob then computes both in one compiled call and keeps the entropy for entropy().
        self.pair_entropy_with_log_prob = False
        self._paired_entropy: Optional[th.Tensor] = None
        # The last compiled draw and its log density: the rollout asks log_prob of exactly that tensor next.
        self._sampled: Optional[Tuple[th.Tensor, th.Tensor]] = None
        self._point_rules: Dict[Tuple[th.dtype, th.device], Optional[PointRule]] = {}

    @property
    def n_params(self) -> int:
        """Outputs of the action head per state."""
        return self.layout.n_params

    def proba_distribution_net(
        self, latent_dim: int, log_std_init: float = 0.0, init_mean_spread: float = 0.5
    ) -> Tuple[nn.Module, Optional[nn.Parameter]]:
        """Create the action head and, for state-independent stds, the ``[K, D]`` log-std parameter.

        :param latent_dim: size of the policy latent
        :param log_std_init: initial log std
        :param init_mean_spread: half-width of the initial spread of component means (see :meth:`init_head_bias`)
        """
        action_net = nn.Linear(latent_dim, self.n_params)
        self.init_head_bias(action_net, log_std_init, init_mean_spread)
        if self.state_dependent_std:
            return action_net, None
        log_std = nn.Parameter(th.full((self.n_components, self.action_dim), float(log_std_init)), requires_grad=True)
        return action_net, log_std

    def init_head_bias(self, action_net: nn.Linear, log_std_init: float, init_mean_spread: float) -> None:
        """Write equal weights, spread means and (state-dependent stds) ``log_std_init`` into the head's bias.

        With SB3's head init (gain 0.01, zero bias) every component would start at the same mean, get the same
        gradient and stay identical. So per action dimension the K component means start at K evenly spaced levels
        of ``[-init_mean_spread, init_mean_spread]``, in an independent random order per dimension (components then
        differ in every dimension without lining up on the diagonal). Logits start at 0 (equal weights).

        :param action_net: the head created by :meth:`proba_distribution_net`
        :param log_std_init: initial log std (used here only with state-dependent stds)
        :param init_mean_spread: half-width of the spread; 0 starts all means at 0
        """
        n_components, dim, layout = self.n_components, self.action_dim, self.layout
        with th.no_grad():
            action_net.bias.zero_()
            if n_components > 1:
                action_net.bias[layout.means_slice] = spread_component_levels(
                    n_components, dim, init_mean_spread
                ).reshape(-1)
            if self.state_dependent_std:
                action_net.bias[layout.log_stds_slice] = float(log_std_init)

    def proba_distribution(self, action_params: th.Tensor, log_std: Optional[th.Tensor] = None) -> "GMMDistribution":
        """Bind this batch's mixture parameters (rebinding attributes, never mutating, so shallow copies stay valid).

        :param action_params: head output ``[B, n_params]``
        :param log_std: the ``[K, D]`` log-std parameter when stds are state independent
        """
        n_components, dim = self.n_components, self.action_dim
        if not isinstance(action_params, th.Tensor) or action_params.dim() < 1:
            raise ValueError(
                f"action_params must be the action head's output, a tensor [..., {self.n_params}], got "
                f"{action_params.shape if isinstance(action_params, th.Tensor) else type(action_params).__name__}"
            )
        self.layout.check(action_params)
        if self.state_dependent_std:
            if log_std is not None:
                raise ValueError(
                    "log_std must be None with state_dependent_std=True: the action head outputs the log stds"
                )
        elif log_std is None:
            raise ValueError(
                "log_std is required when state_dependent_std=False: pass the [K, D] parameter created by "
                "proba_distribution_net()"
            )
        elif log_std.shape != (n_components, dim):
            raise ValueError(
                f"log_std must have shape (K, D) = {(n_components, dim)}, the parameter created by "
                f"proba_distribution_net(), got {tuple(log_std.shape)}"
            )
        # Under torch.compile the check's device sync would break the graph (and guard on a value that changes every
        # step); a compiled policy is checked only where it runs eagerly (the rollout, unless compiled too).
        if self._validation_enabled() and not th.compiler.is_compiling():
            self._check_finite(action_params, log_std)
        self._action_params = action_params
        self._log_std_param = log_std
        self._binding_cache = None
        self._paired_entropy = None
        self._sampled = None
        return self

    def _binding(self) -> "_Binding":
        """The bound batch's parameters as the torch paths use them, derived from the head's outputs once.

        Derived on first use, not in :meth:`proba_distribution`: PPO's update and rollout take the compiled one-call
        paths, which read the raw outputs, and would pay these ~8 recorded ops for nothing. Derived again when first
        read without autograd (e.g. in :meth:`mode`) and then needed with it.
        """
        cached = self._binding_cache
        if cached is not None and (cached.records_graph or not th.is_grad_enabled()):
            return cached
        n_components, dim = self.n_components, self.action_dim
        action_params, log_std = self._action_params, self._log_std_param
        logits, means, raw_log_std = self.layout.split(action_params)
        # The [K, D] parameter is bounded and exponentiated once; log_prob broadcasts it, stds is an expanded view.
        log_stds = soft_clamp(log_std if raw_log_std is None else raw_log_std, self.log_std_min, self.log_std_max)
        compact_stds = log_stds.exp()
        self._binding_cache = _Binding(
            logits=logits,
            means=means,
            stds=compact_stds.expand(*action_params.shape[:-1], n_components, dim),
            # One component: log_softmax of a single logit is exactly 0 with a zero gradient; skip the recorded op.
            log_weights=th.log_softmax(logits, dim=-1) if n_components > 1 else th.zeros_like(logits),
            log_stds=log_stds,
            compact_stds=compact_stds,
            records_graph=th.is_grad_enabled(),
        )
        return self._binding_cache

    @property
    def logits(self) -> Optional[th.Tensor]:
        """Component logits ``[B, K]`` of the bound batch (None before :meth:`proba_distribution`)."""
        return None if self._action_params is None else self._binding().logits

    @property
    def means(self) -> Optional[th.Tensor]:
        """Component means ``[B, K, D]`` of the bound batch (None before :meth:`proba_distribution`)."""
        return None if self._action_params is None else self._binding().means

    @property
    def stds(self) -> Optional[th.Tensor]:
        """Component stds ``[B, K, D]`` of the bound batch, after the log-std bounds (None before binding)."""
        return None if self._action_params is None else self._binding().stds

    def _validation_enabled(self) -> bool:
        """Whether :meth:`proba_distribution` checks its parameters (``validate_args``, or the entropy switch)."""
        return get_validate_args() if self.validate_args is None else bool(self.validate_args)

    def _check_finite(self, action_params: th.Tensor, log_std: Optional[th.Tensor]) -> None:
        """Raise a ValueError naming the first batch index whose mixture parameters are NaN or inf.

        :param action_params: head output ``[..., n_params]``
        :param log_std: the ``[K, D]`` log-std parameter when stds are state independent, else None
        """
        # The happy path is this one reduction and one sync, the shared log stds included.
        total = action_params.detach().sum()
        if log_std is not None:
            total = total + log_std.detach().sum()
        if math.isfinite(float(total)):
            return
        with th.no_grad():
            if log_std is not None and not bool(th.isfinite(log_std).all()):
                raise ValueError(
                    "GMMDistribution: the log_std parameter (the [K, D] log stds shared by every state) is non-finite "
                    f"(NaN or inf), so the mixture parameters of every state are; {NON_FINITE_CAUSES}"
                )
        layout = self.layout
        parts = {"logits": action_params[..., : self.n_components], "means": action_params[..., layout.means_slice]}
        if self.state_dependent_std:
            parts["log stds"] = action_params[..., layout.log_stds_slice]
        check_finite_mixture_parameters("GMMDistribution", parts, batch_dims=action_params.dim() - 1)

    def _require_bound(self, method: str) -> None:
        """Raise a clear error when ``method`` is called before any parameters were bound."""
        if self._action_params is None:
            raise RuntimeError(
                f"GMMDistribution.{method}() needs the mixture parameters of a batch: call "
                "proba_distribution(action_params, log_std) first (a policy's get_distribution(obs) does)"
            )

    @property
    def distribution(self) -> GMMTorchDistribution:  # type: ignore[override]
        """A torch ``MixtureSameFamily`` of the current parameters (SB3's ``kl_divergence`` reads it).

        Built on access from ``logits``, ``means`` and ``stds``, so it always matches them (also in shallow copies)
        and costs nothing on the rollout path, which never reads it.
        """
        self._require_bound("distribution")
        return GMMTorchDistribution(
            Categorical(logits=self.logits, validate_args=False),
            Independent(Normal(self.means, self.stds, validate_args=False), 1, validate_args=False),
            validate_args=False,
        )

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        """Exact log density of ``actions [B, D]`` under the mixture (logsumexp over components), shape ``[B]``."""
        self._require_bound("log_prob")
        sampled = self._sampled
        if sampled is not None and actions is sampled[0] and not th.is_grad_enabled():
            return sampled[1]  # the rollout: the compiled draw computed it with the sample
        if self.pair_entropy_with_log_prob:
            evaluated = self._compiled_evaluation(actions)
            if evaluated is not None:
                log_prob, self._paired_entropy = evaluated
                return log_prob
        bound = self._binding()
        if self.n_components == 1:
            # The Gaussian's density without the mixture's component axis and logsumexp: fewer recorded ops on the
            # path every PPO minibatch takes (per-op overhead, not arithmetic, is the cost at these sizes).
            scaled = (actions - bound.means[..., 0, :]) / bound.compact_stds[..., 0, :]
            log_normaliser = bound.log_stds[..., 0, :].sum(-1) + 0.5 * self.action_dim * LOG_2PI
            return -0.5 * scaled.square().sum(-1) - log_normaliser
        return mixture_log_prob(actions, bound.log_weights, bound.means, bound.compact_stds, log_stds=bound.log_stds)

    def entropy(self) -> Optional[th.Tensor]:
        """Entropy estimate ``[B]`` (:meth:`entropy_estimate`), or None with ``entropy_in_loss=False``."""
        self._require_bound("entropy")
        if not self.entropy_in_loss:
            return None
        if self._paired_entropy is not None:
            entropy, self._paired_entropy = self._paired_entropy, None
            return entropy
        return self.entropy_estimate()

    def log_prob_and_entropy(self, actions: th.Tensor) -> Tuple[th.Tensor, Optional[th.Tensor]]:
        """:meth:`log_prob` of ``actions`` and :meth:`entropy` of the bound batch together.

        On the CPU with the compiled kernels (:mod:`sb3_gmm.native`), both come from one call from the
        head's raw outputs and make one autograd node, where separately they are the binding's recorded ops and two
        kernel calls (docs/performance.md). Elsewhere (another device, no compiler, an estimator that is no fixed
        point rule, actions that require a gradient) it is the two methods. Values equal theirs up to rounding.

        :param actions: ``[B, D]``
        """
        self._require_bound("log_prob_and_entropy")
        evaluated = self._compiled_evaluation(actions)
        if evaluated is not None:
            return evaluated
        return self.log_prob(actions), self.entropy()

    def _compiled_evaluation(self, actions: th.Tensor) -> Optional[Tuple[th.Tensor, Optional[th.Tensor]]]:
        """Log density and entropy (None with ``entropy_in_loss=False``) in one compiled call, or None where it
        does not apply."""
        action_params, log_std = self._action_params, self._log_std_param
        dtype = action_params.dtype
        if (
            actions.dtype != dtype
            or actions.requires_grad
            or actions.shape != (*action_params.shape[:-1], self.action_dim)
        ):
            return None
        rule = None
        if self.entropy_in_loss:
            rule = self._point_rule(dtype, action_params.device)
            n_elements = actions.numel() // self.action_dim
            n_points = None if rule is None else rule.point_weights.shape[0]
            if rule is None or not kernel_preferred(n_elements, self.n_components, n_points, actions.element_size()):
                return None
        kernels = self._head_kernels()
        if kernels is None:
            return None
        return compiled_head.evaluate(
            kernels, action_params, log_std, actions, self.log_std_bounds, rule, self._torch_evaluation
        )

    def _head_kernels(self) -> Optional[native.Kernels]:
        """The compiled kernels where the one-call paths can take the bound head: CPU tensors of one dtype, outside
        torch.compile (which traces the separate methods instead)."""
        action_params, log_std = self._action_params, self._log_std_param
        if not action_params.is_cpu or th.compiler.is_compiling():
            return None
        if log_std is not None and log_std.dtype != action_params.dtype:
            return None
        return native.library(action_params.dtype)

    def _point_rule(self, dtype: th.dtype, device: th.device) -> Optional[PointRule]:
        """The entropy estimator's point rule for this distribution (None: it is no fixed rule), cached."""
        key = (dtype, device)
        if key not in self._point_rules:
            estimator = get_estimator(self.entropy_method)
            rule = None
            if self.n_components == 1 and estimator.exact_for_single_gaussian:
                # The closed form: with no points the kernel's correction term is exactly zero.
                empty = th.empty(0, dtype=dtype, device=device)
                rule = PointRule(empty.view(0, self.action_dim), empty, True)
            elif estimator.point_rule is not None:
                options = estimator.resolve_options(self.entropy_kwargs)
                rule = estimator.point_rule(self.n_components, self.action_dim, dtype, device, **options)
            self._point_rules[key] = rule
        return self._point_rules[key]

    def _torch_evaluation(
        self, action_params: th.Tensor, log_std: Optional[th.Tensor], actions: th.Tensor
    ) -> Tuple[th.Tensor, ...]:
        """:meth:`_compiled_evaluation`'s values through torch ops (its reference for second derivatives)."""
        # proba_distribution rebinds attributes and never mutates them, so a shallow copy leaves this one untouched.
        twin = copy.copy(self)
        twin.pair_entropy_with_log_prob = False
        with native.disabled():
            twin.proba_distribution(action_params, log_std)
            log_prob = twin.log_prob(actions)
            return (log_prob, twin.entropy_estimate()) if self.entropy_in_loss else (log_prob,)

    def entropy_estimate(self) -> th.Tensor:
        """Entropy estimate ``[B]`` from :func:`sb3_gmm.entropy.gmm_entropy` with the configured method."""
        self._require_bound("entropy_estimate")
        bound = self._binding()
        if self.n_components == 1 and get_estimator(self.entropy_method).exact_for_single_gaussian:
            # The estimator returns the Gaussian closed form for one component anyway; skip its dispatch.
            batch_shape = bound.logits.shape[:-1]
            gaussian_entropy = bound.log_stds[..., 0, :].sum(-1) + 0.5 * self.action_dim * (1.0 + LOG_2PI)
            return gaussian_entropy.expand(batch_shape)
        params = MixtureParams(bound.log_weights, bound.means, bound.stds, bound.log_stds.expand_as(bound.means))
        # proba_distribution has already checked these parameters (when validation is on) and built them with the
        # right shapes: checking again here would cost a second device sync per batch.
        return mixture_entropy(params, method=self.entropy_method, validate_args=False, **self.entropy_kwargs)

    def sample(self) -> th.Tensor:
        """Draw a component per state from the weights, then a reparameterised Gaussian sample from it.

        No gradient flows through the component index; PPO, A2C and TRPO only need ``log_prob`` of the samples.
        With one component no index is drawn, so the random stream (and the sample) is the plain Gaussian's.
        """
        self._require_bound("sample")
        action_params, log_std = self._action_params, self._log_std_param
        batch_shape = action_params.shape[:-1]
        # The rollout (no gradient recorded) draws through the compiled kernel, with the same noise in the same order.
        kernels = None if native.records_graph(self._head_inputs()) else self._head_kernels()
        component_noise = None
        if self.n_components > 1:
            # Gumbel-max: argmax(logits + Gumbel noise) is an exact draw from softmax(logits), in four cheap ops (a
            # Categorical or multinomial costs several times more at rollout batch sizes).
            component_noise = action_params.new_empty(*batch_shape, self.n_components).exponential_().log_()  # -Gumbel
        if kernels is not None:
            # One call draws and computes the log density; log_prob of the returned tensor reads it. With one
            # component there is no noise to draw (the kernel's choice is then trivially that component).
            if component_noise is None:
                component_noise = action_params.new_zeros(*batch_shape, 1)
            normal = action_params.new_empty(*batch_shape, self.action_dim).normal_()
            self._sampled = compiled_head.sample(
                kernels, action_params, log_std, self.log_std_bounds, component_noise, normal
            )
            return self._sampled[0]
        bound = self._binding()
        if component_noise is None:
            means, stds = bound.means.squeeze(-2), bound.stds.squeeze(-2)
            return means + stds * th.randn_like(means)
        components = (bound.logits.detach() - component_noise).argmax(-1)
        index = components.view(*batch_shape, 1, 1).expand(*batch_shape, 1, self.action_dim)
        means = bound.means.gather(-2, index).squeeze(-2)
        stds = bound.stds.gather(-2, index).squeeze(-2)
        return means + stds * th.randn_like(means)

    def _head_inputs(self) -> Tuple[th.Tensor, ...]:
        """The bound head's outputs and, when state independent, the log-std parameter (what gradients reach)."""
        log_std = self._log_std_param
        return (self._action_params,) if log_std is None else (self._action_params, log_std)

    def mode(self) -> th.Tensor:
        """The most probable action found from the component means (no gradient).

        Starts from the component mean with the highest density under the whole mixture (not merely the heaviest
        component's mean: a light but sharp component can be the higher peak) and takes
        ``MODE_REFINEMENT_STEPS`` mean-shift steps, the fixed-point iteration
        ``x <- sum_k r_k(x) P_k mu_k / sum_k r_k(x) P_k`` (``r_k`` responsibilities, ``P_k`` precisions) whose fixed
        points are the stationary points of the density. Overlapping components have their peak between their
        means; a step is kept only where it raised the density, so the result is never worse than the best mean.
        With one component it is exactly the mean.
        """
        self._require_bound("mode")
        with th.no_grad():
            bound = self._binding()
            log_weights, means, stds = bound.log_weights, bound.means, bound.stds
            # Score every component mean under the whole mixture: candidates on a leading axis, [K, *batch, D].
            candidates = means.movedim(-2, 0)
            candidate_log_probs = mixture_log_prob(candidates, log_weights, means, stds).movedim(0, -1)
            best = candidate_log_probs.argmax(-1)
            index = best.view(*best.shape, 1, 1).expand(*best.shape, 1, self.action_dim)
            mode = means.gather(-2, index).squeeze(-2)
            if self.n_components == 1:
                return mode
            mode_log_prob = mixture_log_prob(mode, log_weights, means, stds)
            precisions = stds.pow(-2)
            for _ in range(MODE_REFINEMENT_STEPS):
                log_joint = component_log_joint(mode, log_weights, means, stds)
                weights = th.softmax(log_joint, dim=-1).unsqueeze(-1) * precisions
                shifted = (weights * means).sum(-2) / weights.sum(-2)
                shifted_log_prob = mixture_log_prob(shifted, log_weights, means, stds)
                improved = shifted_log_prob > mode_log_prob
                mode = th.where(improved.unsqueeze(-1), shifted, mode)
                mode_log_prob = th.where(improved, shifted_log_prob, mode_log_prob)
        return mode

    def actions_from_params(
        self, action_params: th.Tensor, log_std: Optional[th.Tensor] = None, deterministic: bool = False
    ) -> th.Tensor:
        """Bind the parameters, then sample (or take the mode with ``deterministic=True``).

        :param action_params: head output ``[B, n_params]``
        :param log_std: the ``[K, D]`` log-std parameter when stds are state independent
        :param deterministic: return the mode instead of a sample
        """
        self.proba_distribution(action_params, log_std)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(
        self, action_params: th.Tensor, log_std: Optional[th.Tensor] = None
    ) -> Tuple[th.Tensor, th.Tensor]:
        """Sample actions from the given parameters and return them with their log densities.

        :param action_params: head output ``[B, n_params]``
        :param log_std: the ``[K, D]`` log-std parameter when stds are state independent
        """
        actions = self.actions_from_params(action_params, log_std)
        return actions, self.log_prob(actions)
