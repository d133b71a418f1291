"""The entropy estimator's name saved with a policy's weights, so a reloaded model keeps the estimator it trained with.

``model.save()`` stores the ``policy_kwargs`` the user passed. With ``entropy_method=None`` (the library default)
a reload would resolve None again, to whatever the default is by then. The name therefore also travels in the
state dict, as torch's module "extra state", and wins on load.
"""

from typing import Any, Dict, Optional

from sb3_gmm.distributions import resolve_entropy_settings


class EstimatorStateMixin:
    """Adds the resolved estimator name to an ``nn.Module``'s state dict (key ``_extra_state``).

    The class using it provides ``_entropy_distribution()``, the distribution whose ``entropy_method`` and
    ``entropy_kwargs`` are saved and restored. State dicts without the key (files saved before it existed, or SB3's
    own policies' weights loaded into a K = 1 mixture) load unchanged.
    """

    def _entropy_distribution(self) -> Any:
        raise NotImplementedError

    def get_extra_state(self) -> Dict[str, Any]:
        return {"entropy_method": self._entropy_distribution().entropy_method}

    def set_extra_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state is None:
            return
        distribution = self._entropy_distribution()
        name = state["entropy_method"]
        try:
            resolve_entropy_settings(name, distribution.entropy_kwargs)
        except ValueError as error:
            raise ValueError(
                f"the saved model was trained with entropy_method={name!r}, which this version cannot use: {error}"
            ) from None
        distribution.entropy_method = name

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # load_state_dict hands each module a copy of the state dict: a missing entry means "keep what the
        # constructor resolved", not a strict-mode error.
        state_dict.setdefault(prefix + "_extra_state", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
