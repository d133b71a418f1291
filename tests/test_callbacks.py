"""GMMDiagnosticsCallback records its keys through SB3's logger, with values that make sense, for on- and off-policy
models and Dict observations, without keeping figures alive."""

import gc
import math
import warnings

import matplotlib.figure
import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Image
from test_plotting import DictPointEnv, SquashedMixture

from sb3_gmm import GMMActorCriticPolicy, GMMMultiInputActorCriticPolicy, GMMRecurrentActorCriticPolicy
from sb3_gmm.callbacks import GMMDiagnosticsCallback
from sb3_gmm.entropy import gmm_entropy

SHAPE_KEYS = ("weight_entropy", "effective_components")
MIXTURE_KEYS = ("entropy", "entropy_lower", "entropy_upper", "std_min", "std_mean", "std_max", "mean_separation")
KEYS = tuple(f"gmm/{key}" for key in MIXTURE_KEYS + SHAPE_KEYS)
SQUASHED_KEYS = ("gmm/entropy",) + tuple(f"gmm/pre_squash_{key}" for key in MIXTURE_KEYS) + KEYS[-2:]


class RecordingCallback(GMMDiagnosticsCallback):
    """Keeps what the parent recorded at each record (the logger's buffer is flushed by training)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.snapshots = []

    def _on_rollout_end(self) -> None:
        n_records = self.n_records
        super()._on_rollout_end()
        if self.n_records > n_records:
            self.snapshots.append(dict(self.logger.name_to_value))
            self.snapshots[-1]["figure"] = self.logger.name_to_value.pop("gmm/action_density", None)


def check_sensible(snapshot, n_components, prefix="gmm/"):
    for key in MIXTURE_KEYS:
        assert math.isfinite(snapshot[prefix + key]), key
    assert snapshot[f"{prefix}entropy_lower"] <= snapshot[f"{prefix}entropy_upper"] + 1e-6
    assert snapshot[f"{prefix}entropy_lower"] - 0.1 <= snapshot[f"{prefix}entropy"]
    assert snapshot[f"{prefix}entropy"] <= snapshot[f"{prefix}entropy_upper"] + 0.1
    assert 1.0 <= snapshot["gmm/effective_components"] <= n_components + 1e-6
    assert 0.0 <= snapshot["gmm/weight_entropy"] <= math.log(n_components) + 1e-6
    assert 0 < snapshot[f"{prefix}std_min"] <= snapshot[f"{prefix}std_mean"] <= snapshot[f"{prefix}std_max"]


def check_image(image, n_rows, n_columns):
    """An SB3 Image of the rendered figure: one 260-pixel row per state, 320 pixels per panel."""
    assert isinstance(image, Image) and image.dataformats == "HWC"
    assert image.image.dtype == np.uint8 and image.image.shape == (260 * n_rows, 320 * n_columns, 3)
    assert image.image.std() > 0  # something was drawn


@pytest.mark.parametrize("algo, policy", [(PPO, GMMActorCriticPolicy), (RecurrentPPO, GMMRecurrentActorCriticPolicy)])
def test_keys_are_recorded_with_sensible_values(algo, policy):
    kwargs = dict(lstm_hidden_size=16) if policy is GMMRecurrentActorCriticPolicy else {}
    model = algo(policy, "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, seed=0,
                 policy_kwargs=dict(n_components=3, net_arch=dict(pi=[16], vf=[16]), **kwargs))  # fmt: skip
    callback = RecordingCallback(n_observations=64, plot_freq=2)
    model.learn(384, callback=callback)
    assert len(callback.snapshots) == 3 and callback.n_rollouts == 3
    for snapshot in callback.snapshots:
        check_sensible(snapshot, n_components=3)
    # Images at rollouts 1 and 3 (plot_freq=2), none at rollout 2; three states, one action dim.
    check_image(callback.snapshots[0]["figure"], n_rows=3, n_columns=1)
    assert callback.snapshots[1]["figure"] is None
    check_image(callback.snapshots[2]["figure"], n_rows=3, n_columns=1)


def count_live(cls: type) -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module attributes warns of deprecations
        warnings.simplefilter("ignore")
        return sum(isinstance(obj, cls) for obj in gc.get_objects())


def test_no_figure_outlives_its_record():
    """A2C dumps its logger every 100 rollouts, and a record's figure used to stay open (pyplot held it) until
    TensorBoard wrote it, if ever: 990 figures and 3.1 GB after 5k steps. Over 8 plotting rollouts without a dump,
    no figure may stay alive, and the logger holds only the last record's pixels."""
    model = A2C(GMMActorCriticPolicy, "Pendulum-v1", n_steps=4, seed=0, policy_kwargs=dict(n_components=2))
    callback = GMMDiagnosticsCallback(n_observations=4, plot_freq=1, n_plot_observations=1)
    figures_before = count_live(matplotlib.figure.Figure)
    model.learn(8 * 4, callback=callback)
    assert callback.n_records == 8
    # <=: under pytest-xdist a figure left by an earlier test in the same worker may be freed during learn()
    assert count_live(matplotlib.figure.Figure) <= figures_before
    check_image(model.logger.name_to_value["gmm/action_density"], n_rows=1, n_columns=1)
    assert count_live(Image) == 1


def test_images_reach_tensorboard(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    model = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0,
                tensorboard_log=str(tmp_path), policy_kwargs=dict(n_components=2))  # fmt: skip
    model.learn(64, callback=GMMDiagnosticsCallback(n_observations=16, plot_freq=1), tb_log_name="run")
    (run_dir,) = tmp_path.iterdir()
    events = event_accumulator.EventAccumulator(str(run_dir))
    events.Reload()
    assert "gmm/action_density" in events.Tags()["images"]
    assert {"gmm/entropy", "gmm/mean_separation"} <= set(events.Tags()["scalars"])
    assert len(events.Images("gmm/action_density")) == 2


def test_dict_observations():
    """Dict observations (a Box and a Discrete part) are sampled from the rollout buffer as dicts; with every stored
    state sampled, gmm/entropy is the mean entropy that training itself computes on the rollout."""
    env = make_vec_env(DictPointEnv, n_envs=2, seed=0)
    model = PPO(GMMMultiInputActorCriticPolicy, env, n_steps=16, batch_size=32, n_epochs=1, seed=0,
                policy_kwargs=dict(n_components=3, net_arch=dict(pi=[16], vf=[16])))  # fmt: skip

    class TrainingEntropy(RecordingCallback):
        def _on_rollout_end(self) -> None:
            super()._on_rollout_end()
            buffer = self.model.rollout_buffer
            observations = {key: th.as_tensor(value.reshape(-1, *value.shape[2:])) for key, value in
                            buffer.observations.items()}  # fmt: skip
            actions = th.as_tensor(buffer.actions.reshape(-1, buffer.actions.shape[-1]))
            with th.no_grad():
                _, _, entropy = self.model.policy.evaluate_actions(observations, actions)
            self.snapshots[-1]["training_entropy"] = entropy.mean().item()

    callback = TrainingEntropy(n_observations=32, plot_freq=1, n_plot_observations=2)
    model.learn(64, callback=callback)
    assert len(callback.snapshots) == 2
    for snapshot in callback.snapshots:
        check_sensible(snapshot, n_components=3)
        assert snapshot["gmm/entropy"] == pytest.approx(snapshot["training_entropy"], rel=1e-5)
        check_image(snapshot["figure"], n_rows=2, n_columns=3)
    assert set(callback.plot_observations) == {"position", "mode"}


# A fixed squashed mixture (the same for every state) whose entropy is known: 1-D, as for Pendulum.
FAKE_LOGITS = th.tensor([0.4, -0.4])
FAKE_MEANS = th.tensor([[-0.8], [0.6]])
FAKE_STDS = th.tensor([[0.3], [0.6]])


class ConstantSquashedMixture(SquashedMixture):
    """The test's squashed contract, with ``entropy()`` of the squashed actions by quadrature (1-D)."""

    def entropy(self) -> th.Tensor:
        grid = th.tanh(th.linspace(-8, 8, 20001, dtype=th.float64))
        single = SquashedMixture(self.logits[:1].double(), self.means[:1].double(), self.stds[:1].double())
        log_density = single.log_prob(grid[:, None])
        entropy = -th.trapezoid(log_density.exp() * log_density, grid)
        return entropy.to(self.means.dtype).expand(self.logits.shape[0])


def constant_squashed_distribution(obs: th.Tensor) -> ConstantSquashedMixture:
    batch = obs.shape[0]
    return ConstantSquashedMixture(
        FAKE_LOGITS.expand(batch, 2), FAKE_MEANS.expand(batch, 2, 1), FAKE_STDS.expand(batch, 2, 1)
    )


@pytest.mark.parametrize("record_freq, n_records", [(None, 1), (50, 3)])
def test_off_policy_squashed_actor(record_freq, n_records):
    """SAC with an actor obeying the squashed contract: states come from the replay buffer, first once it holds
    n_observations states (step 64), then every record_freq steps (1000 by default, so once in 200 steps);
    pre-squash statistics are labelled so, and gmm/entropy is the squashed actions' entropy (below the pre-squash
    one: tanh contracts)."""
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, batch_size=32, seed=0,
                policy_kwargs=dict(net_arch=[16]))  # fmt: skip
    model.policy.actor.get_distribution = constant_squashed_distribution
    callback = RecordingCallback(n_observations=64, plot_freq=1, record_freq=record_freq)
    model.learn(200, callback=callback)
    assert callback.n_records == n_records == len(callback.snapshots)
    truth = ConstantSquashedMixture(FAKE_LOGITS[None], FAKE_MEANS[None], FAKE_STDS[None])
    pre_squash_entropy = gmm_entropy(FAKE_LOGITS, FAKE_MEANS, FAKE_STDS).item()
    for snapshot in callback.snapshots:
        assert set(SQUASHED_KEYS) <= set(snapshot)
        assert not any(key.startswith("gmm/std") or key == "gmm/mean_separation" for key in snapshot)
        check_sensible(snapshot, n_components=2, prefix="gmm/pre_squash_")
        assert snapshot["gmm/pre_squash_entropy"] == pytest.approx(pre_squash_entropy, rel=1e-5)
        assert snapshot["gmm/entropy"] == pytest.approx(truth.entropy().item(), rel=1e-5)
        assert snapshot["gmm/entropy"] < snapshot["gmm/pre_squash_entropy"]
        assert snapshot["gmm/pre_squash_std_min"] == pytest.approx(0.3)
        assert snapshot["gmm/pre_squash_std_max"] == pytest.approx(0.6)
        check_image(snapshot["figure"], n_rows=3, n_columns=1)


def test_sac_with_the_gmm_actor():
    """The real GMMSACPolicy: squashed keys, the squashed entropy estimate below the pre-squash one, an image."""
    gmm_sac_policy = pytest.importorskip("sb3_gmm").__dict__.get("GMMSACPolicy")
    if gmm_sac_policy is None:
        pytest.skip("sb3_gmm.GMMSACPolicy is not there yet")
    model = SAC(gmm_sac_policy, "Pendulum-v1", learning_starts=50, batch_size=32, seed=0,
                policy_kwargs=dict(n_components=3, net_arch=[16]))  # fmt: skip
    callback = RecordingCallback(n_observations=64, plot_freq=2, record_freq=50)
    model.learn(200, callback=callback)
    assert len(callback.snapshots) == 3
    for snapshot in callback.snapshots:
        assert set(SQUASHED_KEYS) <= set(snapshot)
        check_sensible(snapshot, n_components=3, prefix="gmm/pre_squash_")
        assert math.isfinite(snapshot["gmm/entropy"])
        assert snapshot["gmm/entropy"] < snapshot["gmm/pre_squash_entropy"]
    check_image(callback.snapshots[0]["figure"], n_rows=3, n_columns=1)
    assert callback.snapshots[1]["figure"] is None


def test_replay_buffer_sampling_takes_recent_states_across_the_ring():
    """After the ring buffer wraps, the sampled states are the newest ones, oldest first, none unwritten."""
    model = SAC("MlpPolicy", "Pendulum-v1", buffer_size=100, learning_starts=1000, seed=0)
    model.policy.actor.get_distribution = constant_squashed_distribution
    callback = GMMDiagnosticsCallback(n_observations=10, plot_freq=0, record_freq=30)
    model.learn(130, callback=callback)  # the ring wrapped once; pos is 30
    buffer = model.replay_buffer
    assert buffer.full and buffer.pos == 30
    callback.last_record_timestep = 80  # 50 steps since: the window is the entries of steps 81..130, at 80..99, 0..29
    sampled = callback._sample_observations()
    newest = buffer.observations[(buffer.pos - 50 + np.arange(50)) % 100, 0]
    assert sampled.shape == (10, 3)
    rows = [int(np.flatnonzero((newest == row).all(-1))[0]) for row in sampled]
    assert rows == sorted(rows) and rows[0] == 0 and rows[-1] == 49


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_observations"):
        GMMDiagnosticsCallback(n_observations=0)
    with pytest.raises(ValueError, match="plot_freq"):
        GMMDiagnosticsCallback(plot_freq=-1)
    with pytest.raises(ValueError, match="n_plot_observations"):
        GMMDiagnosticsCallback(n_plot_observations=0)
    with pytest.raises(ValueError, match="record_freq"):
        GMMDiagnosticsCallback(record_freq=-5)
