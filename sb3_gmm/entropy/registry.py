"""The estimator registry: one entry per method name, holding the function and what is known about it."""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch as th

EstimatorFn = Callable[..., th.Tensor]


@dataclass(frozen=True)
class Option:
    """One keyword option of an estimator.

    :param default: value used when the caller does not pass the option
    :param check: returns an error message for a bad value, or None when the value is fine
    :param doc: one line for the docs and error messages
    """

    default: Any
    check: Callable[[Any], Optional[str]]
    doc: str


@dataclass(frozen=True)
class EstimatorInfo:
    """A registered entropy estimator.

    :param name: the ``method`` string that selects it
    :param fn: ``fn(params: MixtureParams, **options) -> Tensor [...]``
    :param bound: "lower", "upper" or None (an approximation, no guarantee)
    :param deterministic: False only for plain Monte Carlo without a seed
    :param exact_for_single_gaussian: True when K = 1 gives the Gaussian closed form
    :param cost: the time/memory cost in K components, D dimensions and the order / point count
    :param options: keyword options with defaults and checks
    :param summary: one line for tables and error messages
    :param family: the group it belongs to in tables and figures (e.g. "pairwise (Kolchinsky & Tracey)")
    :param point_rule: for estimators that average over standard-normal points with the control variate:
        ``point_rule(n_components, dim, dtype, device, **options)`` gives the points, weights and integrand
        (:class:`sb3_gmm.entropy.quadrature.PointRule`) the estimate uses with these options, or None where they take
        another path. Compiled callers (a policy head's one-call evaluation) evaluate the rule themselves
    """

    name: str
    fn: EstimatorFn
    bound: Optional[str]
    deterministic: bool
    exact_for_single_gaussian: bool
    cost: str
    summary: str
    options: Dict[str, Option] = field(default_factory=dict)
    family: str = "other"
    point_rule: Optional[Callable[..., Any]] = None

    def resolve_options(self, given: Dict[str, Any]) -> Dict[str, Any]:
        """Fill in defaults and reject unknown or out-of-range options with a message naming them."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"method {self.name!r} got unknown option(s) {unknown}; it accepts: {accepted}")
        resolved = {}
        for option_name, option in self.options.items():
            value = given.get(option_name, option.default)
            problem = option.check(value)
            if problem is not None:
                raise ValueError(
                    f"option {option_name!r} of method {self.name!r} {problem} (got {value!r}); {option.doc}"
                )
            resolved[option_name] = value
        return resolved


ESTIMATORS: Dict[str, EstimatorInfo] = {}

# The family of each built-in estimator, kept here so that a registration need not pass it (``register(family=...)``
# does, for a new one).
FAMILIES: Dict[str, str] = {
    **dict.fromkeys(("component_average", "huber_upper", "moment_matched", "huber_lower"), "closed-form brackets"),
    **dict.fromkeys(("pairwise_kl", "pairwise_bhattacharyya", "pairwise_chernoff"), "pairwise (Kolchinsky & Tracey)"),
    **dict.fromkeys(("taylor", "taylor_limit", "legendre"), "moment series (Dahlke & Pacheco)"),
    **dict.fromkeys(("huber_taylor", "sigma_points"), "sigma points and local expansions"),
    **dict.fromkeys(("qmc", "monte_carlo"), "(quasi-)Monte Carlo"),
}


def register(
    name: str,
    *,
    bound: Optional[str],
    cost: str,
    summary: str,
    options: Optional[Dict[str, Option]] = None,
    deterministic: bool = True,
    exact_for_single_gaussian: bool = True,
    family: Optional[str] = None,
    point_rule: Optional[Callable[..., Any]] = None,
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator that adds an estimator function to :data:`ESTIMATORS` (``family`` defaults to :data:`FAMILIES`)."""
    if bound not in ("lower", "upper", None):
        raise ValueError(f"bound must be 'lower', 'upper' or None, got {bound!r}")

    def decorator(fn: EstimatorFn) -> EstimatorFn:
        if name in ESTIMATORS:
            raise ValueError(f"an entropy estimator named {name!r} is already registered")
        ESTIMATORS[name] = EstimatorInfo(
            name=name,
            fn=fn,
            bound=bound,
            deterministic=deterministic,
            exact_for_single_gaussian=exact_for_single_gaussian,
            cost=cost,
            summary=summary,
            options=dict(options or {}),
            family=family or FAMILIES.get(name, "other"),
            point_rule=point_rule,
        )
        return fn

    return decorator


# Reusable option checks: each returns an error message or None.
def positive_int(maximum: Optional[int] = None, minimum: int = 1) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an int"
        if value < minimum:
            return f"must be >= {minimum}"
        if maximum is not None and value > maximum:
            return f"must be <= {maximum}"
        return None

    return check


def unit_interval(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        return "must be a number in [0, 1]"
    return None


def optional_seed(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return "must be an int or None"


def one_of(*choices: Any) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        # Equality alone would let False stand for 0 and 2.0 for 2 (positive_int rejects both).
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return None
        return f"must be one of {list(choices)}"

    return check
