"""GMMDiagnosticsCallback records its keys through SB3's logger, with values that make sense."""

import math

import pytest
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Figure

from sb3_gmm import GMMActorCriticPolicy, GMMRecurrentActorCriticPolicy
from sb3_gmm.callbacks import GMMDiagnosticsCallback

KEYS = (
    "gmm/entropy", "gmm/entropy_lower", "gmm/entropy_upper", "gmm/weight_entropy", "gmm/effective_components",
    "gmm/std_min", "gmm/std_mean", "gmm/std_max", "gmm/mean_separation",
)  # fmt: skip


class RecordingCallback(GMMDiagnosticsCallback):
    """Keeps what the parent recorded at each rollout end (the logger's buffer is flushed by training)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.snapshots = []

    def _on_rollout_end(self) -> None:
        super()._on_rollout_end()
        self.snapshots.append(dict(self.logger.name_to_value))
        self.snapshots[-1]["figure"] = self.logger.name_to_value.get("gmm/action_density")


@pytest.mark.parametrize("algo, policy", [(PPO, GMMActorCriticPolicy), (RecurrentPPO, GMMRecurrentActorCriticPolicy)])
def test_keys_are_recorded_with_sensible_values(algo, policy):
    kwargs = dict(lstm_hidden_size=16) if policy is GMMRecurrentActorCriticPolicy else {}
    model = algo(policy, "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, seed=0,
                 policy_kwargs=dict(n_components=3, net_arch=dict(pi=[16], vf=[16]), **kwargs))  # fmt: skip
    callback = RecordingCallback(n_observations=64, plot_freq=2)
    model.learn(384, callback=callback)
    assert len(callback.snapshots) == 3
    for snapshot in callback.snapshots:
        for key in KEYS:
            assert math.isfinite(snapshot[key]), key
        assert snapshot["gmm/entropy_lower"] <= snapshot["gmm/entropy_upper"] + 1e-6
        assert snapshot["gmm/entropy_lower"] - 0.1 <= snapshot["gmm/entropy"] <= snapshot["gmm/entropy_upper"] + 0.1
        assert 1.0 <= snapshot["gmm/effective_components"] <= 3.0 + 1e-6
        assert 0.0 <= snapshot["gmm/weight_entropy"] <= math.log(3) + 1e-6
        assert 0 < snapshot["gmm/std_min"] <= snapshot["gmm/std_mean"] <= snapshot["gmm/std_max"]
    # Figures at rollouts 1 and 3 (plot_freq=2), none at rollout 2.
    assert isinstance(callback.snapshots[0]["figure"], Figure)
    assert isinstance(callback.snapshots[2]["figure"], Figure)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_observations"):
        GMMDiagnosticsCallback(n_observations=0)
    with pytest.raises(ValueError, match="plot_freq"):
        GMMDiagnosticsCallback(plot_freq=-1)
