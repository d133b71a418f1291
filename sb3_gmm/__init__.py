"""sb3_gmm: Gaussian-mixture action distributions for Stable-Baselines3 with a deterministic, differentiable entropy.

>>> from stable_baselines3 import PPO
>>> from sb3_gmm import GMMActorCriticPolicy
>>> model = PPO(GMMActorCriticPolicy, "Pendulum-v1", policy_kwargs=dict(n_components=4))  # doctest: +SKIP
"""

from sb3_gmm import envs  # noqa: F401  (registers the built-in multimodal environments)
from sb3_gmm.distributions import GMMDistribution
from sb3_gmm.maxent import (
    GMMCrossQPolicy,
    GMMSACCnnPolicy,
    GMMSACMultiInputPolicy,
    GMMSACPolicy,
    GMMTQCCnnPolicy,
    GMMTQCMultiInputPolicy,
    GMMTQCPolicy,
    SquashedGMMDistribution,
)
from sb3_gmm.policies import (
    GMMActorCriticCnnPolicy,
    GMMActorCriticPolicy,
    GMMMultiInputActorCriticPolicy,
    GMMRecurrentActorCriticPolicy,
    GMMRecurrentMultiInputActorCriticPolicy,
)

__version__ = "0.1.0"

__all__ = [
    "GMMActorCriticCnnPolicy",
    "GMMActorCriticPolicy",
    "GMMCrossQPolicy",
    "GMMDistribution",
    "GMMMultiInputActorCriticPolicy",
    "GMMRecurrentActorCriticPolicy",
    "GMMRecurrentMultiInputActorCriticPolicy",
    "GMMSACCnnPolicy",
    "GMMSACMultiInputPolicy",
    "GMMSACPolicy",
    "GMMTQCCnnPolicy",
    "GMMTQCMultiInputPolicy",
    "GMMTQCPolicy",
    "SquashedGMMDistribution",
    "__version__",
]
