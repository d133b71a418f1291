"""rl-zoo3 hyperparameter search (``-optimize``) with GMM policies: pass ``--gym-packages sb3_gmm.zoo``.

rl-zoo3's own samplers return a ``policy_kwargs`` dict (network size, activation) that replaces the config's whole
``policy_kwargs``, so every trial silently ran with the policy's defaults (K = 4 where the config asked for K = 2).
rl-zoo3 imports each ``--gym-packages`` module before it builds its experiment; importing this one registers, for
ppo, a2c, trpo, ppo_lstm, sac and tqc, a sampler that

- calls rl-zoo3's own sampler for that algorithm (same search space, same trial parameter names);
- keeps every GMM option the config's ``policy_kwargs`` sets (``n_components``, ``entropy_method``,
  ``entropy_kwargs``, ``log_std_init``, ...), with rl-zoo3's sampled ``net_arch`` / ``activation_fn`` on top;
- searches ``n_components`` over :data:`SEARCHED_N_COMPONENTS` and ``entropy_method`` over
  :data:`SEARCHED_ENTROPY_METHODS`, each only where the config leaves it out (so a config that fixes K keeps it).

rl-zoo3 gives a sampler only ``(trial, n_actions, n_envs, additional_args)``; the config's ``policy_kwargs`` are read
from the experiment whose ``objective`` called the sampler (found on the call stack). That is rl-zoo3's internal
layout, checked by tests/test_zoo.py against the installed version: if it changes, the sampler raises an error that
says so instead of dropping the options. examples/optuna_search.py searches the same options without rl-zoo3.
"""

import inspect
from typing import Any, Callable, Dict

from sb3_gmm.hyperparams import SEARCHED_ENTROPY_METHODS, SEARCHED_N_COMPONENTS

GMM_ALGOS = ("ppo", "a2c", "trpo", "ppo_lstm", "sac", "tqc")

Sampler = Callable[..., Dict[str, Any]]


def config_policy_kwargs() -> Dict[str, Any]:
    """The ``policy_kwargs`` of the rl-zoo3 experiment whose ``objective`` is running (config and ``--hyperparams``).

    :return: a copy of the dict rl-zoo3 evaluated from the config (empty when the config has none)
    """
    from rl_zoo3.exp_manager import ExperimentManager

    frame = inspect.currentframe()
    while frame is not None:
        experiment = frame.f_locals.get("self")
        if isinstance(experiment, ExperimentManager) and frame.f_code.co_name == "objective":
            policy_kwargs = getattr(experiment, "_hyperparams", {}).get("policy_kwargs", {})
            if not isinstance(policy_kwargs, dict):
                break
            return dict(policy_kwargs)
        frame = frame.f_back
    raise RuntimeError(
        "sb3_gmm.zoo's sampler must be called from rl-zoo3's ExperimentManager.objective with the evaluated config "
        "in ExperimentManager._hyperparams; this rl-zoo3 version does it differently. Search the GMM options with "
        "examples/optuna_search.py instead"
    )


def gmm_sampler(zoo_sampler: Sampler) -> Sampler:
    """Wrap one of rl-zoo3's samplers so that trials keep the config's GMM options and search the missing ones.

    :param zoo_sampler: rl-zoo3's sampler for the algorithm (``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER[algo]``)
    """

    def sample(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> Dict[str, Any]:
        config_kwargs = config_policy_kwargs()
        sampled = zoo_sampler(trial, n_actions, n_envs, additional_args)
        policy_kwargs = {**config_kwargs, **sampled.get("policy_kwargs", {})}
        if "n_components" not in config_kwargs:
            policy_kwargs["n_components"] = trial.suggest_categorical("n_components", SEARCHED_N_COMPONENTS)
        if "entropy_method" not in config_kwargs:
            policy_kwargs["entropy_method"] = trial.suggest_categorical("entropy_method", SEARCHED_ENTROPY_METHODS)
        sampled["policy_kwargs"] = policy_kwargs
        return sampled

    sample.zoo_sampler = zoo_sampler  # type: ignore[attr-defined]
    return sample


def gmm_converter(zoo_converter: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Callable[..., Dict[str, Any]]:
    """Wrap one of rl-zoo3's trial-parameter converters (used by ``--trial-id``) to put the GMM options back.

    :param zoo_converter: ``rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER[algo]``
    """

    def convert(params: Dict[str, Any]) -> Dict[str, Any]:
        params = dict(params)
        gmm_options = {key: params.pop(key) for key in ("n_components", "entropy_method") if key in params}
        hyperparams = zoo_converter(params)
        hyperparams["policy_kwargs"] = {**hyperparams.get("policy_kwargs", {}), **gmm_options}
        return hyperparams

    convert.zoo_converter = zoo_converter  # type: ignore[attr-defined]
    return convert


def register() -> None:
    """Install the GMM samplers and converters in rl-zoo3's registries (idempotent)."""
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    for algo in GMM_ALGOS:
        if not hasattr(HYPERPARAMS_SAMPLER[algo], "zoo_sampler"):
            HYPERPARAMS_SAMPLER[algo] = gmm_sampler(HYPERPARAMS_SAMPLER[algo])
        if not hasattr(HYPERPARAMS_CONVERTER[algo], "zoo_converter"):
            HYPERPARAMS_CONVERTER[algo] = gmm_converter(HYPERPARAMS_CONVERTER[algo])


register()
