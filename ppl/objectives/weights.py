"""The importance weight log p(x, z) - log q(z) of one guide sample: the shared building block."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.handlers import seed
from numpyro.primitives import Messenger

from ..core.constructs import (
    _particles,
    density,
    density_terms,
    particles,
    simulate,
    site_log_prob_fixed,
)
from ..core.distributions import is_reparameterized
from ..core.elements import Plates, independent_plates, per_element, trace_terms
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


class ElementWeights(NamedTuple):
    """K log weights per element of the independent plates: ``log_w`` of shape
    ``(K, *plates.shape)`` (``(K,)`` where no plate encloses every sample site), without
    the plates' subsample scale; a bound is ``plates.total(log_mean_exp(log_w))``."""

    log_w: Any
    plates: Plates


def is_sampler(guide) -> bool:
    """A sampler with an estimated density (:func:`ppl.marginal`), not a program."""
    return hasattr(guide, "simulate") and not hasattr(guide, "get_trace")


def element_log_weight(model, guide, *args, **kwargs):
    """One sample z ~ q and its log weight per element of the plates enclosing every
    sample site of model and guide: ``(log_w, plates)`` (:func:`element_log_weights`)."""
    q = simulate(guide, *args, **kwargs)
    _, terms, model_trace = density_terms(model, q, *args, **kwargs)
    who = "importance weights"
    if is_sampler(guide):  # its log q is one estimate: the joint weight
        plates = independent_plates(model_trace, who=who, joint=True)
        return per_element(terms, plates, who) - q.log_prob, plates
    plates = independent_plates(q.trace, model_trace, who=who)
    log_q = per_element(trace_terms(q.trace), plates, who)
    return per_element(terms, plates, who) - log_q, plates


def element_log_weights(model, guide, num_particles, *args, **kwargs) -> ElementWeights:
    """K independent log weights per element of the *independent plates* (those enclosing
    every sample site of model and guide, e.g. a VAE's data plate), vectorized.

    Inside those plates model and guide factorize over the elements, so a bound is taken
    per element and summed, as NumPyro's ``RenyiELBO`` does; IWAE::

        w = element_log_weights(model, guide, K, *args, **kwargs)
        bound = w.plates.total(log_mean_exp(w.log_w))  # scale * sum_i log mean_k w_ik

    A subsampled independent plate scales that sum by size / subsample_size; a subsampled
    plate that is not independent is refused by name. Without independent plates
    ``log_w`` is :func:`log_weights`' ``(K,)``.
    """
    return element_particles(element_log_weight, num_particles)(model, guide, *args, **kwargs)


def element_particles(fn, num_particles):
    """:func:`ppl.particles` for ``fn(model, guide, *args, **kwargs)`` returning
    ``(arrays, plates)``: the arrays stacked on a leading axis of size K, with the (static)
    plates of the runs. Every particle sees the same minibatch of each subsampled plate
    (one key for the plates, as NumPyro's ``RenyiELBO``): the per-element log-mean-exp
    combines the K weights of one element."""

    def run(model, guide, *args, **kwargs):
        found = []

        def one(shared, model, guide, *a, **kw):
            model = same_minibatch(model, shared)
            guide = guide if is_sampler(guide) else same_minibatch(guide, shared)
            out, plates = fn(model, guide, *a, **kw)
            found.append(plates)
            return out

        out = _particles(one, num_particles, shared_key=True)(model, guide, *args, **kwargs)
        return ElementWeights(out, found[0])

    return run


def same_minibatch(fn, key):
    """``fn`` whose plates draw their subsample indices from ``key`` alone (every run the
    same minibatch); its sample sites keep the enclosing seed."""
    return seed(fn, key, hide_types=["sample", "prng_key", "control_flow"])


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
