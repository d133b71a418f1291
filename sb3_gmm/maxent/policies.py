"""Mixture actors for stock SAC, TQC and CrossQ: ``SAC(GMMSACPolicy, env, policy_kwargs=dict(n_components=4))``.

Each policy subclasses the algorithm's own policy and overrides only ``make_actor``; each actor subclasses the
algorithm's own ``Actor`` and swaps its heads and distribution for a :class:`SquashedGMMDistribution`. The
algorithms' ``train()`` is untouched: it calls ``actor.action_log_prob(obs)`` for the actor loss, the temperature loss
and the soft target, and the sampled actions carry implicit-reparameterization gradients to logits, means and stds.
"""

from typing import Any, Dict, Optional, Tuple

import torch as th
from gymnasium import spaces
from sb3_contrib.crossq.policies import Actor as CrossQActor
from sb3_contrib.crossq.policies import CrossQPolicy
from sb3_contrib.tqc.policies import Actor as TQCActor
from sb3_contrib.tqc.policies import TQCPolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.sac.policies import Actor as SACActor

from sb3_gmm.estimator_state import EstimatorStateMixin
from sb3_gmm.maxent.distributions import SquashedGMMDistribution

LOG_PI_CHOICES = ("sample", "estimate")


def _reject_sde(use_sde: bool) -> None:
    if use_sde:
        raise ValueError(
            "use_sde=True is not supported by GMM SAC/TQC/CrossQ policies (gSDE perturbs a single Gaussian); drop "
            "use_sde, sde_sample_freq and use_sde_at_warmup from the algorithm's arguments"
        )


def _check_gmm_kwargs(action_space: spaces.Space, init_mean_spread: float, log_pi: str) -> None:
    if not isinstance(action_space, spaces.Box):
        raise ValueError(
            f"action_space must be a continuous gymnasium.spaces.Box for a GMM actor, got {type(action_space).__name__}"
        )
    if isinstance(init_mean_spread, bool) or not (
        isinstance(init_mean_spread, (int, float)) and 0 <= init_mean_spread < float("inf")
    ):
        raise ValueError(f"init_mean_spread must be a finite number >= 0, got {init_mean_spread!r}")
    if log_pi not in LOG_PI_CHOICES:
        raise ValueError(
            f"log_pi must be one of {LOG_PI_CHOICES} ('sample': log density of the drawn action, as SB3; "
            f"'estimate': minus the deterministic squashed-entropy estimate), got {log_pi!r}"
        )


class GMMActorMixin(EstimatorStateMixin):
    """Turns an SB3 SAC-style ``Actor`` into a tanh-squashed Gaussian-mixture actor.

    The parent builds its latent network and its ``mu`` / ``log_std`` heads as usual. With ``K = 1`` those heads are
    kept (so the random stream, the parameters and the whole actor equal SB3's for the same seed); with ``K > 1``
    they are replaced by ``K * D``-output heads and a logits head ``mixture_logits`` is added last.

    :param n_components: number of mixture components K
    :param entropy_method: estimator of the pre-squash entropy (``sb3_gmm.entropy.ESTIMATORS``); None: default
    :param entropy_kwargs: options of that estimator
    :param init_mean_spread: half-width of the initial spread of the pre-squash component means
    :param log_pi: what :meth:`action_log_prob` returns as log pi: "sample" (exact log density of the drawn action,
        SB3's single-sample estimate) or "estimate" (minus the deterministic squashed-entropy estimate, per state).
        "estimate" is far less noisy (benchmarks/maxent_entropy_bias.py: bias <= 0.005 nats and gradient cosine
        >= 0.999 against single-sample noise of 0.025-0.4 nats and a heavy-tailed gradient per batch of 256), but
        SAC on Pendulum-v1 learned the same with both (3 seeds, 6k steps) and a train step costs 1.3x more, so the
        default stays SB3's "sample"
    :param entropy_validate_args: check mixture parameters in every entropy call; None follows the global switch
    """

    action_dist: SquashedGMMDistribution

    def __init__(
        self,
        *args: Any,
        n_components: int = 4,
        entropy_method: Optional[str] = None,
        entropy_kwargs: Optional[Dict[str, Any]] = None,
        init_mean_spread: float = 0.5,
        log_pi: str = "sample",
        entropy_validate_args: Optional[bool] = None,
        use_sde: bool = False,
        **kwargs: Any,
    ):
        _reject_sde(use_sde)
        super().__init__(*args, use_sde=False, **kwargs)
        _check_gmm_kwargs(self.action_space, init_mean_spread, log_pi)
        self.n_components = n_components
        self.init_mean_spread = float(init_mean_spread)
        self.log_pi = log_pi
        self.action_dist = SquashedGMMDistribution(
            get_action_dim(self.action_space),
            n_components=n_components,
            entropy_method=entropy_method,
            entropy_kwargs=entropy_kwargs,
            validate_args=entropy_validate_args,
        )
        self.mixture_logits: Optional[th.nn.Linear] = None
        if n_components > 1:
            last_layer_dim = self.net_arch[-1] if len(self.net_arch) > 0 else self.features_dim
            self.mu, self.log_std, self.mixture_logits = self.action_dist.proba_distribution_net(
                last_layer_dim, init_mean_spread=self.init_mean_spread
            )

    def _entropy_distribution(self) -> SquashedGMMDistribution:
        return self.action_dist

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            n_components=self.n_components,
            entropy_method=self.action_dist.entropy_method,
            entropy_kwargs=dict(self.action_dist.entropy_kwargs),
            init_mean_spread=self.init_mean_spread,
            log_pi=self.log_pi,
            entropy_validate_args=self.action_dist.validate_args,
        )
        return data

    def get_action_dist_params(self, obs: PyTorchObs) -> Tuple[th.Tensor, th.Tensor, Dict[str, th.Tensor]]:
        """Means ``[B, K * D]``, log stds ``[B, K * D]`` (clamped as SB3 does) and ``dict(logits=[B, K])`` (K > 1)."""
        features = self.extract_features(obs, self.features_extractor)
        latent_pi = self.latent_pi(features)
        mean_actions = self.mu(latent_pi)
        log_std = th.clamp(self.log_std(latent_pi), LOG_STD_MIN, LOG_STD_MAX)
        if self.mixture_logits is None:
            return mean_actions, log_std, {}
        return mean_actions, log_std, dict(logits=self.mixture_logits(latent_pi))

    def get_distribution(self, obs: PyTorchObs) -> SquashedGMMDistribution:
        """The action distribution bound to these observations (for diagnostics and plots)."""
        mean_actions, log_std, kwargs = self.get_action_dist_params(obs)
        return self.action_dist.proba_distribution(mean_actions, log_std, **kwargs)

    def action_log_prob(self, obs: PyTorchObs) -> Tuple[th.Tensor, th.Tensor]:
        """Sampled squashed actions and the log pi that SAC/TQC/CrossQ put in their three losses (see ``log_pi``)."""
        mean_actions, log_std, kwargs = self.get_action_dist_params(obs)
        if self.log_pi == "sample":
            return self.action_dist.log_prob_from_params(mean_actions, log_std, **kwargs)
        actions = self.action_dist.actions_from_params(mean_actions, log_std, **kwargs)
        return actions, -self.action_dist.entropy()

    def reset_noise(self, batch_size: int = 1) -> None:
        """No-op: gSDE is rejected at construction."""


class GMMSACActor(GMMActorMixin, SACActor):
    """SAC's actor with a tanh-squashed Gaussian-mixture distribution (see :class:`GMMActorMixin`)."""


class GMMTQCActor(GMMActorMixin, TQCActor):
    """TQC's actor with a tanh-squashed Gaussian-mixture distribution (see :class:`GMMActorMixin`)."""


class GMMCrossQActor(GMMActorMixin, CrossQActor):
    """CrossQ's actor (BatchRenorm latent) with a tanh-squashed Gaussian-mixture distribution."""


class GMMMaxEntPolicyMixin:
    """Builds a GMM actor in ``make_actor``; everything else (critics, optimizers, train()) is the algorithm's.

    Takes every keyword of the algorithm's policy plus ``n_components`` (default 4), ``entropy_method``,
    ``entropy_kwargs``, ``init_mean_spread`` (default 0.5), ``log_pi`` ("sample", the default, or "estimate") and
    ``entropy_validate_args``; see :class:`GMMActorMixin`. ``use_sde=True`` raises a ValueError.
    """

    actor_class: type

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        n_components: int = 4,
        entropy_method: Optional[str] = None,
        entropy_kwargs: Optional[Dict[str, Any]] = None,
        init_mean_spread: float = 0.5,
        log_pi: str = "sample",
        entropy_validate_args: Optional[bool] = None,
        use_sde: bool = False,
        **kwargs: Any,
    ):
        _reject_sde(use_sde)
        _check_gmm_kwargs(action_space, init_mean_spread, log_pi)
        # The parent builds the actor inside its constructor: make_actor's inputs are set first.
        self.gmm_actor_kwargs = dict(
            n_components=n_components,
            entropy_method=entropy_method,
            entropy_kwargs=entropy_kwargs,
            init_mean_spread=init_mean_spread,
            log_pi=log_pi,
            entropy_validate_args=entropy_validate_args,
        )
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    @property
    def n_components(self) -> int:
        """Number of mixture components K."""
        return self.gmm_actor_kwargs["n_components"]

    @property
    def log_pi(self) -> str:
        """What the actor returns as log pi: "sample" or "estimate"."""
        return self.gmm_actor_kwargs["log_pi"]

    def make_actor(self, features_extractor: Optional[BaseFeaturesExtractor] = None) -> GMMActorMixin:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return self.actor_class(**actor_kwargs, **self.gmm_actor_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.pop("use_sde", None)
        # The actor holds the resolved values (the estimator's name rather than None).
        actor_data = self.actor._get_constructor_parameters()
        data.update({key: actor_data[key] for key in self.gmm_actor_kwargs})
        return data


class GMMSACPolicy(GMMMaxEntPolicyMixin, SACPolicy):
    """SAC policy with a tanh-squashed Gaussian-mixture actor (the GMM counterpart of SAC's ``MlpPolicy``)."""

    actor_class = GMMSACActor


class GMMSACCnnPolicy(GMMSACPolicy):
    """SAC policy with a mixture actor and SB3's NatureCNN features (the GMM ``CnnPolicy``)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs):
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class GMMSACMultiInputPolicy(GMMSACPolicy):
    """SAC policy with a mixture actor for dict observations (the GMM ``MultiInputPolicy``)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs):
        kwargs.setdefault("features_extractor_class", CombinedExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class GMMTQCPolicy(GMMMaxEntPolicyMixin, TQCPolicy):
    """TQC policy (sb3-contrib) with a tanh-squashed Gaussian-mixture actor."""

    actor_class = GMMTQCActor


class GMMTQCCnnPolicy(GMMTQCPolicy):
    """TQC policy with a mixture actor and SB3's NatureCNN features."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs):
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class GMMTQCMultiInputPolicy(GMMTQCPolicy):
    """TQC policy with a mixture actor for dict observations."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs):
        kwargs.setdefault("features_extractor_class", CombinedExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class GMMCrossQPolicy(GMMMaxEntPolicyMixin, CrossQPolicy):
    """CrossQ policy (sb3-contrib) with a tanh-squashed Gaussian-mixture actor; the BatchRenorm latent is CrossQ's."""

    actor_class = GMMCrossQActor
