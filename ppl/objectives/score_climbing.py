"""Markovian score climbing (Naesseth, Lindsten & Blei 2020): inclusive KL by following a
conditional-importance-sampling chain whose state SVI carries between steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
from jax import lax
from numpyro.primitives import mutable

from ..core.arguments import count
from ..core.constructs import density, particles
from ..core.runtime import update_state
from ..infer.svi import Objective, numpyro_loss_options
from .wake_sleep import _hidden_guide_run
from .weights import log_mean_exp


def msc_chain(name: str = "msc_chain", **like) -> dict:
    """Declare the chain of :func:`msc` in the guide: ``like`` = example values (shapes) of
    the guide's latent sites, e.g. ``msc_chain(z=jnp.zeros(3))``. The state lives in the
    mutable site ``name``; SVI carries it from step to step."""
    if not like:
        raise ValueError("msc_chain: give example values of the guide's latent sites, e.g. z=0.0")
    values = {k: jnp.zeros(jnp.shape(v), jnp.result_type(float)) for k, v in like.items()}
    return mutable(name, {"values": values, "initialized": jnp.zeros(())})


@numpyro_loss_options
def msc(num_particles: int = 5, chain: str = "msc_chain") -> Objective:
    """Markovian score climbing: z_t ~ CIS(z_(t-1)), then ascend log q(z_t) (and log p(x, z_t)).

    The conditional importance sampling kernel keeps the chain's state z_(t-1) as one of K
    candidates, draws K - 1 from the guide, and picks one in proportion to p(x, z) / q(z);
    it leaves p(z | x) invariant, so the guide's gradient sum grad_phi log q(z_t) follows
    the inclusive KL(p || q) without the 1/K bias of RWS. Model parameters get
    grad_theta log p(x, z_t). Value (monitoring): log of the mean weight of the
    candidates. Declare the chain in the guide with :func:`msc_chain`.

    Example::

        def guide(x):
            ppl.objectives.msc_chain(z=0.0)
            numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), numpyro.param("s", 1.0)))

        svi = SVI(model, guide, optax.adam(1e-2), loss=ppl.objectives.msc(5))
    """
    num_particles = count(num_particles, "num_particles", "msc", minimum=2)

    def program(model, guide, *args, **kwargs):
        state = mutable(chain)
        if state is None:
            raise ValueError(
                f"msc: no chain state '{chain}'; declare it in the guide with "
                f"ppl.objectives.msc_chain(name={chain!r}, <site>=<example value>, ...)"
            )
        names = sorted(state["values"])

        def fresh():
            q = _hidden_guide_run(guide, args, kwargs)
            return {k: lax.stop_gradient(q.values[k]) for k in names}

        candidates = particles(fresh, num_particles)()
        previous = jax.tree.map(
            lambda p, c: jnp.where(state["initialized"] > 0, p.astype(c.dtype), c[0]),
            state["values"],
            candidates,
        )
        candidates = jax.tree.map(lambda c, p: c.at[0].set(p), candidates, previous)

        def log_weight(values):
            return density(model, values, *args, **kwargs) - density(guide, values, *args, **kwargs)

        log_w = lax.stop_gradient(jax.vmap(log_weight)(candidates))
        pick = jax.random.categorical(numpyro.prng_key(), log_w)
        current = jax.tree.map(lambda c: c[pick], candidates)
        update_state(chain, {"values": current, "initialized": jnp.ones(())})
        wake = density(model, current, *args, **kwargs) + density(guide, current, *args, **kwargs)
        return log_mean_exp(log_w) + (wake - lax.stop_gradient(wake))

    return Objective(program, name=f"msc(num_particles={num_particles})", subsampling=False)
