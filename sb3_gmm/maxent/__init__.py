"""Maximum-entropy RL (SAC, TQC, CrossQ) with a tanh-squashed Gaussian-mixture actor.

>>> from stable_baselines3 import SAC
>>> from sb3_gmm import GMMSACPolicy
>>> model = SAC(GMMSACPolicy, "Pendulum-v1", policy_kwargs=dict(n_components=4))  # doctest: +SKIP
"""

from sb3_gmm.maxent.distributions import SquashedGMMDistribution
from sb3_gmm.maxent.policies import (
    GMMCrossQPolicy,
    GMMSACCnnPolicy,
    GMMSACMultiInputPolicy,
    GMMSACPolicy,
    GMMTQCCnnPolicy,
    GMMTQCMultiInputPolicy,
    GMMTQCPolicy,
)

__all__ = [
    "GMMCrossQPolicy",
    "GMMSACCnnPolicy",
    "GMMSACMultiInputPolicy",
    "GMMSACPolicy",
    "GMMTQCCnnPolicy",
    "GMMTQCMultiInputPolicy",
    "GMMTQCPolicy",
    "SquashedGMMDistribution",
]
