"""The importance weight log p(x, z) - log q(z) of one guide sample: the shared building block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.primitives import Messenger

from ..core.constructs import density, particles, simulate, site_log_prob_fixed
from ..core.distributions import is_reparameterized
from ..core.expectation import additive_by_construction
from ..core.strategies import Reinforce, StrategyError


@additive_by_construction
def log_weight(model, guide, *args, **kwargs):
    """One sample z ~ q and its log weight log p(x, z) - log q(z)."""
    q = simulate(guide, *args, **kwargs)
    return density(model, q, *args, **kwargs) - q.log_prob


def log_weights(model, guide, num_particles, *args, **kwargs):
    """K independent log weights (vectorized), shape (K,)."""
    return particles(lambda: log_weight(model, guide, *args, **kwargs), num_particles)()


def log_mean_exp(x, axis=0):
    """log (1/K) sum_k exp(x_k)."""
    return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


class default_reinforce(Messenger):
    """Sites with no ``infer["grad"]`` and no rsample get ``reinforce(baseline)``."""

    def __init__(self, fn=None, baseline="loo"):
        self.baseline = baseline
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        infer = dict(msg.get("infer") or {})
        if infer.get("grad") is None and not is_reparameterized(msg["fn"]):
            infer["grad"] = Reinforce(self.baseline)
        msg["infer"] = infer


def require_reparameterized(simulation, who: str) -> None:
    """Raise a StrategyError naming the first guide site without rsample."""
    for name, site in simulation.trace.items():
        if site["type"] == "sample" and not site["is_observed"]:
            if not is_reparameterized(site["fn"]):
                raise StrategyError(
                    f"site '{name}': {who} needs a reparameterized guide; "
                    f"{type(site['fn']).__name__} has no rsample"
                )
    if simulation.log_prob_stl is None:  # a latent site whose log q needs its intermediates
        for name, site in simulation.trace.items():
            if site["type"] == "sample" and not site["is_observed"]:
                if site_log_prob_fixed(site, "params") is None:
                    raise StrategyError(
                        f"site '{name}': {who} needs log q at the sampled value with the "
                        f"guide's parameters held fixed, and {type(site['fn']).__name__} cannot "
                        "give it (a transform without an inverse, whose log q exists only "
                        "from the sampling intermediates, or one that is not a JAX pytree); "
                        "use a guide whose transforms are invertible pytrees, or the "
                        "objective without dreg / stick_the_landing"
                    )
