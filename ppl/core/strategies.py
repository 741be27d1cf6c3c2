"""Gradient strategies: how each random choice is differentiated.

A strategy is chosen per sample site with NumPyro's own idiom,
``infer={"grad": "reinforce"}`` (a name or a strategy object), or in bulk with the
:func:`strategy` handler. Unmarked sites use :class:`Reparam` when the distribution has
``rsample`` and :class:`Reinforce` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.primitives import Messenger

from .distributions import base_distribution, is_reparameterized
from .running import RunningBaseline

__all__ = [
    "Strategy",
    "StrategyError",
    "Reparam",
    "Implicit",
    "Reinforce",
    "Enum",
    "MVD",
    "reparam",
    "implicit",
    "reinforce",
    "enum",
    "mvd",
    "strategy",
    "resolve_strategy",
    "STRATEGIES",
]

_IMPLICIT_FAMILIES = (dist.Gamma, dist.Beta, dist.Dirichlet, dist.Chi2, dist.InverseGamma)


class StrategyError(ValueError):
    """A strategy that cannot apply to a site (raised at trace time)."""


class Strategy:
    """Base class. ``name`` is the string users may pass as ``infer={"grad": name}``."""

    name: str = ""

    def check(self, site_name: str, fn: dist.Distribution) -> None:
        """Raise :class:`StrategyError` if this strategy cannot apply to ``fn``."""

    def __repr__(self) -> str:
        return f"ppl.{self.name}()"


class Reparam(Strategy):
    """Pathwise: x = T(eps, theta); gradients flow through the sample."""

    name = "reparam"

    def check(self, site_name, fn):
        if not is_reparameterized(fn):
            raise StrategyError(
                f"site '{site_name}': strategy 'reparam' needs a distribution with "
                f"rsample, but {type(base_distribution(fn)).__name__} has none; "
                "use 'reinforce', 'mvd' or 'enum'"
            )


class Implicit(Reparam):
    """Implicit reparameterization (Gamma, Beta, Dirichlet, ... via NumPyro's rsample)."""

    name = "implicit"

    def check(self, site_name, fn):
        base = base_distribution(fn)
        if not isinstance(base, _IMPLICIT_FAMILIES):
            names = ", ".join(f.__name__ for f in _IMPLICIT_FAMILIES)
            raise StrategyError(
                f"site '{site_name}': strategy 'implicit' applies to {names}; "
                f"got {type(base).__name__}"
            )
        super().check(site_name, fn)


class Reinforce(Strategy):
    """Score function: k(x) * grad log p(x), minus an optional baseline.

    ``baseline``: ``"none"``; ``"loo"`` (leave-one-out across the particles of the
    innermost :func:`ppl.particles`: the program value with this particle's value replaced
    by the mean of the others); or a value (a number, or an array of the site's batch
    shape, one per element) computed before the site is sampled, e.g. a
    ``numpyro.param`` or a network's output; or a :func:`ppl.running_baseline` (a moving
    average of the cost, carried through SVI's mutable state). ``learn=True`` trains that value (its
    params) to predict the cost its score multiplies, by least squares, through the same
    gradient step; the estimate's value is unchanged.
    """

    name = "reinforce"

    def __init__(self, baseline="none", learn: bool = False):
        if isinstance(baseline, str) and baseline not in ("none", "loo"):
            raise ValueError(
                f"reinforce baseline must be 'none', 'loo' or a value; got {baseline!r}"
            )
        if not isinstance(baseline, (str, RunningBaseline)) and not _is_value(baseline):
            raise TypeError(
                "reinforce: baseline must be 'none', 'loo', a number or array (e.g. a param) "
                f"or a ppl.running_baseline; got {type(baseline).__name__} {baseline!r:.60}"
            )
        if not isinstance(learn, (bool, np.bool_)):
            raise TypeError(f"reinforce: learn must be a bool, got {learn!r:.60}")
        if learn and isinstance(baseline, (str, RunningBaseline)):
            raise ValueError("reinforce(learn=True) needs a baseline value (e.g. a param)")
        self.baseline = baseline
        self.learn = learn

    def __repr__(self) -> str:
        b = self.baseline if isinstance(self.baseline, str) else "<value>"
        return f"ppl.reinforce(baseline={b!r})"


def _is_value(x) -> bool:
    """A number or a numeric array (a traced one included), never a bool."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, (int, float, np.number, jax.Array, np.ndarray)):
        return jnp.issubdtype(jnp.result_type(x), jnp.number)
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x).dtype.kind in "iuf"
        except (TypeError, ValueError):
            return False
    return False


class Enum(Strategy):
    """Exact enumeration: sum_v p(v) k(v), weights differentiated too.

    A scalar site outside :func:`ppl.particles` is enumerated jointly with the other such
    sites (one vectorized replay over the combinations); in ppl's ELBO family, when the
    program's other sites are pathwise, by variable elimination over the sites each term
    reads instead (:mod:`ppl.core.factored_enum`: a chain costs O(K), not 2^K). A batched
    site (plate elements or particles) uses per-element local expectations: the value
    comes from the sample and the gradient sums over every element's support,
    O(N * |support|) evaluations. A jointly enumerated value of guide probability 0 is
    left out of the sum whatever the program gives there (-inf, NaN: 0 * log 0 = 0, the
    limit as its probability goes to 0), value and gradient; one of positive probability
    whose value is -inf makes the expectation -inf.
    """

    name = "enum"

    def check(self, site_name, fn):
        base = base_distribution(fn)
        if not getattr(base, "has_enumerate_support", False):
            raise StrategyError(
                f"site '{site_name}': strategy 'enum' needs a distribution with finite "
                f"enumerable support; {type(base).__name__} has none"
            )


class MVD(Strategy):
    """Measure-valued derivative: c(theta) * (k(x+) - k(x-)) per parameter, coupled x+/x-."""

    name = "mvd"

    def check(self, site_name, fn):
        from .mvd import mvd_rule  # local import: mvd depends on this module

        mvd_rule(site_name, fn)


def reparam() -> Reparam:
    """Pathwise gradients through the sample (needs rsample); see :class:`Reparam`."""
    return Reparam()


def implicit() -> Implicit:
    """Implicit reparameterization (Gamma, Beta, Dirichlet, ...); see :class:`Implicit`."""
    return Implicit()


def reinforce(baseline="none", learn: bool = False) -> Reinforce:
    """REINFORCE with a baseline; see :class:`Reinforce`."""
    return Reinforce(baseline, learn)


def enum() -> Enum:
    """Exact enumeration / per-element local expectations; see :class:`Enum`."""
    return Enum()


def mvd() -> MVD:
    """Measure-valued derivatives; see :class:`MVD`."""
    return MVD()


STRATEGIES = {
    "reparam": Reparam,
    "implicit": Implicit,
    "reinforce": Reinforce,
    "enum": Enum,
    "mvd": MVD,
}


def refuse_strategy_on_observed(site_name: str, site: dict, where: str) -> None:
    """A gradient strategy on an observed site is a ``StrategyError``: the site is never
    sampled, so the strategy could only be ignored."""
    spec = (site.get("infer") or {}).get("grad")
    if site.get("is_observed") and spec is not None:
        raise StrategyError(
            f"{where}: site '{site_name}' is observed but has infer['grad']={spec!r}; a "
            "gradient strategy applies to sampled sites only: remove it"
        )


def resolve_strategy(site_name: str, fn: dist.Distribution, spec) -> Strategy:
    """Turn ``infer["grad"]`` (name, object or None) into a checked :class:`Strategy`."""
    if spec is None:
        chosen = Reparam() if is_reparameterized(fn) else Reinforce()
    elif isinstance(spec, Strategy):
        chosen = spec
    elif isinstance(spec, str) and spec in STRATEGIES:
        chosen = STRATEGIES[spec]()
    else:
        raise StrategyError(
            f"site '{site_name}': unknown gradient strategy {spec!r}; "
            f"choose one of {sorted(STRATEGIES)} or a ppl strategy object"
        )
    chosen.check(site_name, fn)
    return chosen


class strategy(Messenger):
    """Assign strategies in bulk: ``ppl.strategy(fn, {"z": "enum", "w": ppl.mvd()})``.

    Like ``numpyro.handlers.infer_config``; a site's own ``infer={"grad": ...}`` wins.
    Naming a site that ``fn`` never samples is an error (checked when the run ends).
    """

    def __init__(self, fn=None, strategies=None):
        if not isinstance(strategies, Mapping):
            raise TypeError(
                f"ppl.strategy needs a mapping {{site name: strategy}}, got {strategies!r}"
            )
        for name, spec in strategies.items():
            if not (isinstance(spec, Strategy) or spec in STRATEGIES):
                raise StrategyError(
                    f"site '{name}': unknown gradient strategy {spec!r}; "
                    f"choose one of {sorted(STRATEGIES)} or a ppl strategy object"
                )
        self.strategies = dict(strategies)
        self._seen: set = set()
        super().__init__(fn)

    def __enter__(self):
        self._seen = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        out = super().__exit__(exc_type, exc_value, traceback)
        missing = set(self.strategies) - self._seen
        if exc_type is None and missing:
            raise StrategyError(
                f"ppl.strategy names sites the program never samples: {sorted(missing)}"
            )
        return out

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["name"] not in self.strategies:
            return
        self._seen.add(msg["name"])
        infer = dict(msg.get("infer") or {})  # never mutate the user's dict
        infer.setdefault("grad", self.strategies[msg["name"]])
        msg["infer"] = infer
