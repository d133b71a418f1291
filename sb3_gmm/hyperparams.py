"""Tuned hyperparameters per algorithm and environment: the one source for the CLI, examples, tests and benchmarks.

Each entry is what ``zoo_configs/<algo>.yml`` holds for that environment, in rl-zoo3's format (``n_envs``,
``n_timesteps``, ``normalize``, schedules as ``"lin_<value>"`` strings), except that ``policy_kwargs`` is a dict here
(a string in the yml, which rl-zoo3 evaluates) and the zoo-only keys ``policy`` and ``callback`` are left out.
tests/test_zoo.py checks every yml entry against this module, so the two cannot drift apart; why each value differs
from rl-zoo3's own file is said in the yml's comments.

Usage::

    from sb3_gmm.hyperparams import algorithm_kwargs, hyperparams

    n_envs = hyperparams("ppo", "Pendulum-v1")["n_envs"]  # 4
    model = PPO(GMMActorCriticPolicy, make_vec_env("Pendulum-v1", n_envs), **algorithm_kwargs("ppo", "Pendulum-v1"))
"""

import copy
from typing import Any, Callable, Dict, Tuple

import torch as th

# Keys of an entry that configure the zoo's experiment (environment creation, budget), not the algorithm.
EXPERIMENT_KEYS = ("n_envs", "n_timesteps", "normalize")
# The zoo's schedule keys whose value may be a "lin_<initial value>" string (rl_zoo3 ExperimentManager).
SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")

# The policy each algorithm's zoo file names (``policy: 'sb3_gmm.<name>'``).
POLICY_NAMES: Dict[str, str] = {
    "ppo": "GMMActorCriticPolicy",
    "a2c": "GMMActorCriticPolicy",
    "trpo": "GMMActorCriticPolicy",
    "ppo_lstm": "GMMRecurrentActorCriticPolicy",
    "sac": "GMMSACPolicy",
    "tqc": "GMMTQCPolicy",
}

# Algorithms whose loss adds ent_coef * entropy (the GMM policy's entropy_in_loss option matters only to them).
ENTROPY_BONUS_ALGORITHMS = ("ppo", "a2c", "ppo_lstm")

# The GMM options a hyperparameter search tries (sb3_gmm.zoo for rl-zoo3's -optimize, examples/optuna_search.py).
SEARCHED_N_COMPONENTS = (1, 2, 4, 8)
SEARCHED_ENTROPY_METHODS = ("qmc", "pairwise_bhattacharyya", "component_average", "legendre")

BANDIT_ID = "sb3_gmm/TwoPeakBandit-v0"
NAVIGATION_ID = "sb3_gmm/TwoRouteNavigation-v0"

_RECURRENT_POLICY_KWARGS = dict(
    n_components=4,
    ortho_init=False,
    activation_fn=th.nn.ReLU,
    lstm_hidden_size=64,
    enable_critic_lstm=True,
    net_arch=dict(pi=[64], vf=[64]),
)

# rl-zoo3's SAC entries, which its TQC file repeats, without gSDE (zoo_configs/sac.yml says what changed and why).
_SQUASHED_ACTOR_HYPERPARAMS: Dict[str, Dict[str, Any]] = {
    "Pendulum-v1": dict(
        n_timesteps=20_000,
        learning_rate=1e-3,
        policy_kwargs=dict(n_components=4),
    ),
    "LunarLanderContinuous-v3": dict(
        n_timesteps=500_000,
        batch_size=256,
        learning_rate="lin_7.3e-4",
        buffer_size=1_000_000,
        ent_coef="auto",
        gamma=0.99,
        tau=0.01,
        train_freq=1,
        gradient_steps=1,
        learning_starts=10_000,
        policy_kwargs=dict(n_components=4, net_arch=[400, 300]),
    ),
    "MountainCarContinuous-v0": dict(
        n_timesteps=50_000,
        learning_rate=3e-4,
        buffer_size=50_000,
        batch_size=512,
        ent_coef=0.1,
        train_freq=32,
        gradient_steps=32,
        gamma=0.9999,
        tau=0.01,
        learning_starts=0,
        policy_kwargs=dict(n_components=4, net_arch=[64, 64]),
    ),
    "BipedalWalker-v3": dict(
        n_timesteps=500_000,
        learning_rate=7.3e-4,
        buffer_size=300_000,
        batch_size=256,
        ent_coef="auto",
        gamma=0.98,
        tau=0.02,
        train_freq=64,
        gradient_steps=64,
        learning_starts=10_000,
        policy_kwargs=dict(n_components=4, net_arch=[400, 300]),
    ),
}

_HYPERPARAMS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "ppo": {
        # rl-zoo3's tuned Pendulum-v1 entry without gSDE.
        "Pendulum-v1": dict(
            n_envs=4,
            n_timesteps=100_000,
            n_steps=1024,
            batch_size=64,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
            policy_kwargs=dict(n_components=4),
        ),
        "MountainCarContinuous-v0": dict(
            normalize=True,
            n_envs=1,
            n_timesteps=20_000,
            batch_size=256,
            n_steps=8,
            gamma=0.9999,
            learning_rate=7.77e-05,
            ent_coef=0.00429,
            clip_range=0.1,
            n_epochs=10,
            gae_lambda=0.9,
            max_grad_norm=5,
            vf_coef=0.19,
            policy_kwargs=dict(n_components=4, ortho_init=False),
        ),
        "LunarLanderContinuous-v3": dict(
            n_envs=16,
            n_timesteps=1_000_000,
            n_steps=1024,
            batch_size=64,
            gae_lambda=0.98,
            gamma=0.999,
            n_epochs=4,
            ent_coef=0.01,
            policy_kwargs=dict(n_components=4),
        ),
        "BipedalWalker-v3": dict(
            normalize=True,
            n_envs=32,
            n_timesteps=5_000_000,
            n_steps=2048,
            batch_size=64,
            gae_lambda=0.95,
            gamma=0.999,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=3e-4,
            clip_range=0.18,
            policy_kwargs=dict(n_components=4),
        ),
        # The built-in multimodal tasks: the settings of the docs/rl_results.md grid (benchmarks/rl_compare.py),
        # where every GMM configuration reached the optimum. Short rollouts and lr 1e-3 matter: with n_steps 256
        # and SB3's lr 3e-4 the bandit policy was still in the valley after 20k steps (returns 0.07 / -2.29 / -2.41).
        BANDIT_ID: dict(
            n_envs=4,
            n_timesteps=20_480,
            n_steps=128,
            batch_size=64,
            n_epochs=10,
            learning_rate=1e-3,
            gamma=0.99,
            gae_lambda=0.95,
            ent_coef=0.01,
            policy_kwargs=dict(n_components=2),
        ),
        NAVIGATION_ID: dict(
            n_envs=4,
            n_timesteps=40_960,
            n_steps=256,
            batch_size=64,
            n_epochs=10,
            learning_rate=1e-3,
            gamma=0.99,
            gae_lambda=0.95,
            ent_coef=0.01,
            policy_kwargs=dict(n_components=4),
        ),
    },
    "a2c": {
        "Pendulum-v1": dict(
            normalize=True,
            n_envs=8,
            n_timesteps=1_000_000,
            ent_coef=0.0,
            max_grad_norm=0.5,
            n_steps=8,
            gae_lambda=0.9,
            vf_coef=0.4,
            gamma=0.9,
            use_rms_prop=True,
            normalize_advantage=False,
            learning_rate="lin_7e-4",
            policy_kwargs=dict(n_components=4, log_std_init=-1, ortho_init=False),
        ),
        "MountainCarContinuous-v0": dict(
            normalize=True,
            n_envs=4,
            n_steps=100,
            n_timesteps=100_000,
            ent_coef=0.0,
            policy_kwargs=dict(n_components=4, log_std_init=0.0, ortho_init=False),
        ),
        "LunarLanderContinuous-v3": dict(
            normalize=True,
            n_envs=4,
            n_timesteps=5_000_000,
            ent_coef=0.0,
            max_grad_norm=0.5,
            n_steps=8,
            gae_lambda=0.9,
            vf_coef=0.4,
            gamma=0.99,
            use_rms_prop=True,
            normalize_advantage=False,
            learning_rate="lin_7e-4",
            policy_kwargs=dict(n_components=4, log_std_init=-1, ortho_init=False),
        ),
        "BipedalWalker-v3": dict(
            normalize=True,
            n_envs=16,
            n_timesteps=5_000_000,
            ent_coef=0.0,
            max_grad_norm=0.5,
            n_steps=8,
            gae_lambda=0.9,
            vf_coef=0.4,
            gamma=0.99,
            use_rms_prop=True,
            normalize_advantage=False,
            learning_rate="lin_0.00096",
            policy_kwargs=dict(n_components=4, log_std_init=-1, ortho_init=False),
        ),
    },
    "ppo_lstm": {
        "Pendulum-v1": dict(
            normalize=True,
            n_envs=4,
            n_timesteps=100_000,
            n_steps=1024,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
            policy_kwargs=_RECURRENT_POLICY_KWARGS,
        ),
        "MountainCarContinuous-v0": dict(
            normalize=True,
            n_envs=8,
            n_timesteps=300_000,
            batch_size=256,
            n_steps=1024,
            gamma=0.9999,
            learning_rate=7.77e-05,
            ent_coef=0.00429,
            clip_range=0.1,
            n_epochs=10,
            gae_lambda=0.9,
            max_grad_norm=5,
            vf_coef=0.19,
            policy_kwargs=dict(
                n_components=4,
                ortho_init=False,
                lstm_hidden_size=32,
                enable_critic_lstm=True,
                net_arch=dict(pi=[64], vf=[64]),
            ),
        ),
        "LunarLanderContinuous-v3": dict(
            normalize=True,
            n_envs=16,
            n_timesteps=1_000_000,
            n_steps=512,
            batch_size=128,
            gae_lambda=0.98,
            gamma=0.999,
            n_epochs=4,
            ent_coef=0.01,
            policy_kwargs=_RECURRENT_POLICY_KWARGS,
        ),
        "BipedalWalker-v3": dict(
            normalize=True,
            n_envs=32,
            n_timesteps=5_000_000,
            n_steps=256,
            batch_size=256,
            gae_lambda=0.95,
            gamma=0.999,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=3e-4,
            clip_range=0.18,
            policy_kwargs=_RECURRENT_POLICY_KWARGS,
        ),
    },
    "trpo": {
        "Pendulum-v1": dict(
            n_envs=2,
            n_timesteps=100_000,
            n_steps=1024,
            gamma=0.9,
            n_critic_updates=15,
            policy_kwargs=dict(n_components=4),
        ),
        "MountainCarContinuous-v0": dict(
            normalize=True,
            n_envs=2,
            n_timesteps=50_000,
            policy_kwargs=dict(n_components=4),
        ),
        "LunarLanderContinuous-v3": dict(
            normalize=True,
            n_envs=2,
            n_timesteps=100_000,
            n_steps=1024,
            n_critic_updates=20,
            policy_kwargs=dict(n_components=4),
        ),
        "BipedalWalker-v3": dict(
            normalize=True,
            n_envs=2,
            n_timesteps=1_000_000,
            batch_size=128,
            n_steps=1024,
            gamma=0.99,
            gae_lambda=0.95,
            sub_sampling_factor=1,
            cg_max_steps=25,
            cg_damping=0.1,
            n_critic_updates=20,
            learning_rate=1e-3,
            policy_kwargs=dict(n_components=4),
        ),
    },
    "sac": _SQUASHED_ACTOR_HYPERPARAMS,
    "tqc": _SQUASHED_ACTOR_HYPERPARAMS,
}


def tuned_env_ids(algo: str) -> Tuple[str, ...]:
    """Environments with tuned settings for ``algo`` (the entries of ``zoo_configs/<algo>.yml``).

    :param algo: rl-zoo3 algorithm name (``ppo``, ``a2c``, ``trpo``, ``ppo_lstm``, ...)
    """
    return tuple(_HYPERPARAMS.get(algo, {}))


def algorithms() -> Tuple[str, ...]:
    """Algorithms with a table here (one ``zoo_configs/<algo>.yml`` each)."""
    return tuple(_HYPERPARAMS)


def hyperparams(algo: str, env_id: str) -> Dict[str, Any]:
    """A fresh copy of the tuned entry for ``algo`` on ``env_id``, in rl-zoo3's format (see the module docstring).

    :param algo: rl-zoo3 algorithm name
    :param env_id: Gymnasium id
    :return: a new dict (mutating it changes nothing here)
    """
    if algo not in _HYPERPARAMS:
        raise ValueError(f"algo={algo!r} has no tuned settings; choose one of {algorithms()}")
    if env_id not in _HYPERPARAMS[algo]:
        raise ValueError(
            f"env_id={env_id!r} has no tuned {algo} settings; choose one of {tuned_env_ids(algo)} "
            "or pass the hyperparameters yourself"
        )
    entry = copy.deepcopy(_HYPERPARAMS[algo][env_id])
    if algo in ENTROPY_BONUS_ALGORITHMS and entry.get("ent_coef", 0.0) == 0.0:
        # Without an entropy bonus the estimate would only be logged: skip it (same training, less time per update).
        entry["policy_kwargs"]["entropy_in_loss"] = False
    return entry


def linear_schedule(initial_value: float) -> Callable[[float], float]:
    """rl-zoo3's ``lin_<value>`` schedule: ``initial_value`` times the remaining progress (1 at start, 0 at end).

    :param initial_value: the value at the start of training
    """

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial_value

    return schedule


def algorithm_kwargs(algo: str, env_id: str) -> Dict[str, Any]:
    """The tuned entry as keyword arguments of the SB3 / sb3-contrib algorithm constructor.

    Drops the experiment keys (:data:`EXPERIMENT_KEYS`: read them from :func:`hyperparams`) and turns
    ``"lin_<value>"`` strings into :func:`linear_schedule` callables, as rl-zoo3 does. ``policy_kwargs`` stays in.

    :param algo: rl-zoo3 algorithm name
    :param env_id: Gymnasium id
    """
    kwargs = hyperparams(algo, env_id)
    for key in EXPERIMENT_KEYS:
        kwargs.pop(key, None)
    for key in SCHEDULE_KEYS:
        value = kwargs.get(key)
        if isinstance(value, str):
            kind, initial_value = value.split("_")
            if kind != "lin":
                raise ValueError(f"{key}={value!r}: only rl-zoo3's 'lin_<value>' schedules are supported")
            kwargs[key] = linear_schedule(float(initial_value))
    return kwargs
