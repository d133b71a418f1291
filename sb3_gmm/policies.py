"""Actor-critic policies whose action distribution is a Gaussian mixture (:class:`GMMDistribution`).

``PPO(GMMActorCriticPolicy, env, policy_kwargs=dict(n_components=4))`` works with stock PPO, A2C and TRPO;
:class:`GMMRecurrentActorCriticPolicy` with sb3-contrib's RecurrentPPO.
"""

from functools import partial
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_gmm.distributions import GMMDistribution


class GMMPolicyMixin:
    """Replaces SB3's action distribution with a :class:`GMMDistribution`; shared by every GMM policy.

    :param n_components: number of mixture components K
    :param entropy_method: entropy estimator (a name of ``sb3_gmm.entropy.ESTIMATORS``); None is the library default
    :param entropy_kwargs: options of that estimator, e.g. ``dict(n_points=32)``
    :param state_dependent_std: the head outputs per-state log stds (True) or they are one learned ``[K, D]``
        parameter named ``log_std`` (False, like SB3's MlpPolicy, and logged as ``train/std``)
    :param log_std_init: initial log std of every component
    :param log_std_bounds: log stds are clamped into ``(low, high)``
    :param init_mean_spread: initial component means are spread evenly over ``[-spread, spread]`` per action dim
    :param entropy_validate_args: check the mixture parameters in every entropy call
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        n_components: int = 4,
        entropy_method: Optional[str] = None,
        entropy_kwargs: Optional[Dict[str, Any]] = None,
        state_dependent_std: bool = False,
        log_std_init: float = 0.0,
        log_std_bounds: Tuple[float, float] = (-7.0, 2.0),
        init_mean_spread: float = 0.5,
        entropy_validate_args: bool = True,
        use_sde: bool = False,
        **kwargs: Any,
    ):
        if use_sde:
            raise ValueError(
                "use_sde=True is not supported by GMM policies (gSDE perturbs a single Gaussian); drop use_sde and "
                "sde_sample_freq from the algorithm's arguments"
            )
        if not isinstance(action_space, spaces.Box):
            raise ValueError(
                f"GMM policies need a continuous (Box) action space, got {type(action_space).__name__}; use SB3's "
                "MlpPolicy for discrete actions"
            )
        if init_mean_spread < 0:
            raise ValueError(f"init_mean_spread must be >= 0, got {init_mean_spread}")
        # ActorCriticPolicy builds the networks inside its constructor: everything _build needs is set first.
        self.gmm_distribution = GMMDistribution(
            get_action_dim(action_space),
            n_components=n_components,
            entropy_method=entropy_method,
            entropy_kwargs=entropy_kwargs,
            state_dependent_std=state_dependent_std,
            log_std_bounds=log_std_bounds,
            validate_args=entropy_validate_args,
        )
        self.init_mean_spread = init_mean_spread
        super().__init__(observation_space, action_space, lr_schedule, *args, log_std_init=log_std_init, **kwargs)

    @property
    def n_components(self) -> int:
        return self.gmm_distribution.n_components

    @property
    def entropy_method(self) -> Optional[str]:
        return self.gmm_distribution.entropy_method

    @property
    def entropy_kwargs(self) -> Dict[str, Any]:
        return self.gmm_distribution.entropy_kwargs

    def _build(self, lr_schedule: Schedule) -> None:
        self._build_mlp_extractor()
        self.action_dist = self.gmm_distribution
        self.action_net, log_std = self.action_dist.proba_distribution_net(
            latent_dim=self.mlp_extractor.latent_dim_pi, log_std_init=self.log_std_init
        )
        if log_std is not None:
            self.log_std = log_std
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            # SB3's gains: feature extractor and MLP sqrt(2), action head 0.01, value head 1.
            module_gains = {
                self.features_extractor: np.sqrt(2),
                self.mlp_extractor: np.sqrt(2),
                self.action_net: 0.01,
                self.value_net: 1,
            }
            if not self.share_features_extractor:
                del module_gains[self.features_extractor]
                module_gains[self.pi_features_extractor] = np.sqrt(2)
                module_gains[self.vf_features_extractor] = np.sqrt(2)
            for module, gain in module_gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        # Orthogonal init zeroes biases: spread the component means again so components start apart.
        self.action_dist.init_head_bias(self.action_net, self.log_std_init, self.init_mean_spread)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        action_params = self.action_net(latent_pi)
        return self.action_dist.proba_distribution(action_params, getattr(self, "log_std", None))

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("use_sde", "full_std", "use_expln", "sde_net_arch"):
            data.pop(key, None)
        data.update(
            n_components=self.gmm_distribution.n_components,
            entropy_method=self.gmm_distribution.entropy_method,
            entropy_kwargs=dict(self.gmm_distribution.entropy_kwargs),
            state_dependent_std=self.gmm_distribution.state_dependent_std,
            log_std_bounds=self.gmm_distribution.log_std_bounds,
            init_mean_spread=self.init_mean_spread,
            entropy_validate_args=self.gmm_distribution.validate_args,
        )
        return data

    def reset_noise(self, n_envs: int = 1) -> None:
        """No-op: gSDE is not supported, and SB3 only calls this when use_sde is set."""


class GMMActorCriticPolicy(GMMPolicyMixin, ActorCriticPolicy):
    """MLP actor-critic with a Gaussian-mixture action head (the GMM counterpart of SB3's ``MlpPolicy``).

    Takes every keyword of SB3's ``ActorCriticPolicy`` (net_arch, activation_fn, ortho_init, ...) plus those of
    :class:`GMMPolicyMixin`.
    """


class GMMActorCriticCnnPolicy(GMMPolicyMixin, ActorCriticPolicy):
    """CNN actor-critic with a Gaussian-mixture action head (the GMM counterpart of SB3's ``CnnPolicy``)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs):
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class GMMMultiInputActorCriticPolicy(GMMPolicyMixin, ActorCriticPolicy):
    """Dict-observation actor-critic with a Gaussian-mixture head (the GMM ``MultiInputPolicy``)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs):
        kwargs.setdefault("features_extractor_class", CombinedExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class GMMRecurrentActorCriticPolicy(GMMPolicyMixin, RecurrentActorCriticPolicy):
    """LSTM actor-critic with a Gaussian-mixture head, for sb3-contrib's ``RecurrentPPO``.

    RecurrentActorCriticPolicy routes every action path through ``_get_action_dist_from_latent`` and inherits
    ``_build``, so the mixin's two overrides are all it needs.
    """
