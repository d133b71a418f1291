"""Actor-critic policies whose action distribution is a Gaussian mixture (:class:`GMMDistribution`).

``PPO(GMMActorCriticPolicy, env, policy_kwargs=dict(n_components=4))`` works with stock PPO, A2C and TRPO;
:class:`GMMRecurrentActorCriticPolicy` with sb3-contrib's RecurrentPPO.
"""

from functools import partial
from typing import Any, Dict, Optional, Type

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
from sb3_gmm.estimator_state import EstimatorStateMixin


class GMMPolicyMixin(EstimatorStateMixin):
    """Replaces SB3's action distribution with a :class:`GMMDistribution`; shared by every GMM policy.

    Only ``Box`` action spaces are supported (any shape: the mixture lives on the flattened action, and SB3 reshapes
    actions back). gSDE (``use_sde=True``) is rejected. ``Dict`` observation spaces get SB3's ``CombinedExtractor``
    unless ``features_extractor_class`` is given, as SB3's MultiInput policies do.

    Subclasses change the distribution by setting the class attribute ``distribution_class`` (as SB3's policies
    choose theirs): a :class:`GMMDistribution` subclass, built once with GMMDistribution's constructor arguments
    and rebound to every batch by ``proba_distribution``.

    :param n_components: number of mixture components K (default 4; 1 reproduces SB3's Gaussian MlpPolicy)
    :param entropy_method: entropy estimator, a name of ``sb3_gmm.entropy.ESTIMATORS``; None (default) is the
        library default (``sb3_gmm.entropy.DEFAULT_METHOD``), resolved at construction: the policy saves the name
    :param entropy_kwargs: options of that estimator, e.g. ``dict(n_points=32)``; checked at construction
    :param state_dependent_std: False (default): the log stds are one learned ``[K, D]`` parameter named
        ``log_std``, like SB3's MlpPolicy (PPO/A2C/TRPO log ``train/std`` from it); True: the action head outputs
        per-state log stds
    :param log_std_init: initial log std of every component (default 0, as in SB3)
    :param log_std_min: log stds saturate smoothly above this bound (default -5, std 0.0067; see
        :class:`GMMDistribution` for why mixtures need one)
    :param log_std_max: log stds saturate smoothly below this bound (default 2, std 7.4)
    :param init_mean_spread: the K initial component means are spread evenly over ``[-spread, spread]`` in every
        action dimension, in a random order per dimension, through the head's bias (default 0.5, a quarter of
        the usual [-1, 1] / [-2, 2] action range: components start distinct but inside it). 0 starts them together,
        and then they stay identical
    :param entropy_validate_args: check that the mixture parameters from the network are finite on every forward
        pass (rollout and training), so NaN raises a ValueError instead of reaching the env; None (default) follows
        ``sb3_gmm.entropy.get_validate_args`` (a ``sb3_gmm.entropy.validation(False)`` block, or set_validate_args)
    :param entropy_in_loss: True (default): ``evaluate_actions`` returns the entropy estimate. False: it returns
        None, as SB3 does for distributions without an entropy, so PPO and A2C skip the estimator (they put
        ``-log_prob`` of the batch's actions in its place). Set it False with ``ent_coef=0`` (PPO's default), where
        the estimate only feeds the logged ``train/entropy_loss``: training is then bit for bit the same, and faster
        (docs/performance.md). The gmm/entropy diagnostic still reports the estimate
    """

    # The action distribution built in __init__; a subclass may set a GMMDistribution subclass here.
    distribution_class: Type[GMMDistribution] = GMMDistribution

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
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        init_mean_spread: float = 0.5,
        entropy_validate_args: Optional[bool] = None,
        entropy_in_loss: bool = True,
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
                f"action_space must be a continuous gymnasium.spaces.Box for a GMM policy, got "
                f"{type(action_space).__name__}; use SB3's MlpPolicy for discrete actions"
            )
        if not (isinstance(init_mean_spread, (int, float)) and 0 <= init_mean_spread < float("inf")):
            raise ValueError(f"init_mean_spread must be a finite number >= 0, got {init_mean_spread!r}")
        if isinstance(observation_space, spaces.Dict):
            # The default FlattenExtractor cannot take a dict of tensors.
            kwargs.setdefault("features_extractor_class", CombinedExtractor)
        # ActorCriticPolicy builds the networks inside its constructor: everything _build needs is set first.
        self.gmm_distribution = self.distribution_class(
            get_action_dim(action_space),
            n_components=n_components,
            entropy_method=entropy_method,
            entropy_kwargs=entropy_kwargs,
            state_dependent_std=state_dependent_std,
            log_std_min=log_std_min,
            log_std_max=log_std_max,
            validate_args=entropy_validate_args,
            entropy_in_loss=entropy_in_loss,
        )
        self.init_mean_spread = float(init_mean_spread)
        super().__init__(observation_space, action_space, lr_schedule, *args, log_std_init=log_std_init, **kwargs)

    @property
    def n_components(self) -> int:
        """Number of mixture components K."""
        return self.gmm_distribution.n_components

    @property
    def entropy_method(self) -> str:
        """The entropy estimator's name (the library default already resolved)."""
        return self.gmm_distribution.entropy_method

    @property
    def entropy_kwargs(self) -> Dict[str, Any]:
        """Options passed to the entropy estimator."""
        return self.gmm_distribution.entropy_kwargs

    def _build(self, lr_schedule: Schedule) -> None:
        self._build_mlp_extractor()
        self.action_dist = self.gmm_distribution
        self.action_net, log_std = self.action_dist.proba_distribution_net(
            latent_dim=self.mlp_extractor.latent_dim_pi,
            log_std_init=self.log_std_init,
            init_mean_spread=self.init_mean_spread,
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

    def evaluate_actions(self, *args: Any, **kwargs: Any) -> Any:
        """SB3's (or sb3-contrib's) ``evaluate_actions``, whose ``log_prob(actions)`` also computes the entropy it asks
        for next, in one compiled call where :meth:`GMMDistribution.log_prob_and_entropy` can (docs/performance.md)."""
        distribution = self.gmm_distribution
        distribution.pair_entropy_with_log_prob = True
        try:
            return super().evaluate_actions(*args, **kwargs)  # type: ignore[misc]
        finally:
            distribution.pair_entropy_with_log_prob = False

    def _entropy_distribution(self) -> GMMDistribution:
        return self.gmm_distribution

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("use_sde", "full_std", "use_expln"):
            data.pop(key, None)
        data.update(
            n_components=self.gmm_distribution.n_components,
            # The resolved name, never None: a saved model keeps its estimator if the library default changes.
            entropy_method=self.gmm_distribution.entropy_method,
            entropy_kwargs=dict(self.gmm_distribution.entropy_kwargs),
            state_dependent_std=self.gmm_distribution.state_dependent_std,
            log_std_min=self.gmm_distribution.log_std_min,
            log_std_max=self.gmm_distribution.log_std_max,
            init_mean_spread=self.init_mean_spread,
            entropy_validate_args=self.gmm_distribution.validate_args,
            entropy_in_loss=self.gmm_distribution.entropy_in_loss,
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
    """Dict-observation actor-critic with a Gaussian-mixture head (the GMM ``MultiInputPolicy``).

    The same as :class:`GMMActorCriticPolicy`, which already picks ``CombinedExtractor`` for ``Dict`` observations;
    kept so that SB3's policy names have a GMM counterpart.
    """


class GMMRecurrentActorCriticPolicy(GMMPolicyMixin, RecurrentActorCriticPolicy):
    """LSTM actor-critic with a Gaussian-mixture head, for sb3-contrib's ``RecurrentPPO``.

    RecurrentActorCriticPolicy routes every action path through ``_get_action_dist_from_latent`` and inherits
    ``_build``, so the mixin's two overrides are all it needs. Takes RecurrentActorCriticPolicy's LSTM keywords
    (lstm_hidden_size, n_lstm_layers, shared_lstm, enable_critic_lstm, lstm_kwargs) too.
    """

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        # RecurrentActorCriticPolicy does not save its LSTM settings; policy.save() / load() need them.
        data.update(
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.lstm_hidden_state_shape[0],
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            lstm_kwargs=dict(self.lstm_kwargs),
        )
        return data


class GMMRecurrentMultiInputActorCriticPolicy(GMMRecurrentActorCriticPolicy):
    """Dict-observation LSTM actor-critic with a Gaussian-mixture head (the GMM ``MultiInputLstmPolicy``).

    The same as :class:`GMMRecurrentActorCriticPolicy`, which already picks ``CombinedExtractor`` for ``Dict``
    observations; kept so that sb3-contrib's policy names have a GMM counterpart.
    """
