"""Amortized inclusive KL from simulated (latent, data) pairs."""

from __future__ import annotations

import jax
import numpyro
from jax import lax
from numpyro.handlers import block, seed, trace

from ..core.arguments import count
from ..core.constructs import density
from ..infer.svi import Objective, numpyro_loss_options


@numpyro_loss_options
def forward_kl(data_arg: str = "data", observed: str = "x", num_pairs: int = 1) -> Objective:
    """E_{p(z, x)}[log q(z | x)]: maximizing it minimizes E_x KL(p(z | x) || q(z | x)).

    Each step simulates ``num_pairs`` (z, x) pairs from the model with its observation
    left unset (the model is called with ``data_arg=None``; ``observed`` names the site
    that is then sampled), and scores the guide, called with ``data_arg=x``, at z. Only
    the guide's parameters get gradients (the simulation is held fixed), so no gradient
    strategies are involved; the estimate is unbiased for the objective and its gradient.
    Model and guide take the data as the keyword argument ``data_arg``.
    """
    num_pairs = count(num_pairs, "num_pairs", "forward_kl")

    def one(model, guide, key, args, kwargs):
        with block(hide_fn=lambda msg: msg["type"] == "sample"):
            tr = trace(seed(model, key)).get_trace(*args, **{**kwargs, data_arg: None})
        if observed not in tr:
            raise ValueError(f"forward_kl: the model has no site '{observed}'")
        sim = {
            name: lax.stop_gradient(site["value"])
            for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        x = sim.pop(observed)
        return density(guide, sim, *args, **{**kwargs, data_arg: x})

    def program(model, guide, *args, **kwargs):
        key = numpyro.prng_key()
        keys = jax.random.split(key, num_pairs)
        scores = jax.vmap(lambda k: one(model, guide, k, args, kwargs))(keys)
        return scores.mean()

    return Objective(program, name=f"forward_kl(num_pairs={num_pairs})")
