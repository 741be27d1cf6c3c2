"""ArviZ export that also works for models whose discrete sites are enumerated out.

``arviz.from_numpyro`` builds the log-likelihood group by re-running the model on each
posterior draw; when a discrete site was marginalized (``infer={"enumerate": "parallel"}``
with NUTS/HMC) it is not among the draws, and the re-run fails. ``to_arviz`` computes that
group with the discrete sites summed out instead (funsor enumeration), pointwise: the
log-likelihood of observation i is log Σ_z p(z) p(y_i | z, θ), every other element of the
observed sites masked out of the enumerated joint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import _guess_max_plate_nesting
from numpyro.primitives import Messenger

if TYPE_CHECKING:  # arviz and funsor are imported when used: ppl imports without them
    import arviz as az


class _keep_element(Messenger):
    """Mask the observed site ``name`` to its element ``i`` along the leading batch axis
    (``i = -1``: no element) and every other observed site out."""

    def __init__(self, fn, name, i):
        self.name, self.i = name, i
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or not msg["is_observed"]:
            return
        if msg["name"] != self.name:
            msg["fn"] = msg["fn"].mask(False)
            return
        # the value's batch shape (right-aligned against the enumerated fn's batch shape)
        event_dim = len(msg["fn"].event_shape)
        shape = jnp.shape(msg["value"])[: jnp.ndim(msg["value"]) - event_dim]
        keep = jnp.arange(shape[0]) == self.i if shape else jnp.asarray(True)
        msg["fn"] = msg["fn"].mask(keep.reshape(keep.shape + (1,) * (len(shape) - 1)))


def _pointwise_marginal_loglik(model, args, kwargs, draws, observed, max_plate_nesting):
    """{site: (num_draws, n_site)} log Σ_z p(z) p(y_i | z, θ) per observation i."""
    from numpyro.contrib.funsor import config_enumerate, enum
    from numpyro.contrib.funsor.infer_util import log_density as enum_log_density

    enumerated = enum(config_enumerate(model), first_available_dim=-max_plate_nesting - 1)
    out = {}
    for name, value in observed.items():
        n = np.shape(value)[0] if np.ndim(value) else 1

        def one(params, i, name=name):
            # log p(θ, y_i) − log p(θ): the latter with every observation masked out
            kept = _keep_element(enumerated, name, i)
            none = _keep_element(enumerated, name, -1)
            return (
                enum_log_density(kept, args, kwargs, params)[0]
                - enum_log_density(none, args, kwargs, params)[0]
            )

        per_draw = jax.vmap(lambda p, one=one, n=n: jax.vmap(lambda i: one(p, i))(jnp.arange(n)))
        out[name] = np.asarray(jax.jit(per_draw)(draws))
    return out


def to_arviz(mcmc: Any, **kwargs) -> az.InferenceData:
    """``arviz.InferenceData`` from a finished ``numpyro.infer.MCMC`` run, including runs on
    models with enumerated (marginalized) discrete sites, where ``arviz.from_numpyro``
    fails on the log-likelihood group: there the group holds the pointwise marginal
    log-likelihood log Σ_z p(z) p(y_i | z, θ). Models whose discrete sites were sampled
    (``ppl.mcmc.EnumGibbs``) or that have none go through ``arviz.from_numpyro`` (extra
    ``kwargs`` are passed to it).

    Example::

        mcmc = MCMC(NUTS(model), num_warmup=500, num_samples=1000)  # z enumerated in model
        mcmc.run(key, y)
        idata = ppl.mcmc.to_arviz(mcmc)
        az.loo(idata)
    """
    import arviz as az

    model = mcmc.sampler.model
    args, model_kwargs = mcmc._args, mcmc._kwargs
    samples = mcmc.get_samples(group_by_chain=True)
    one_draw = jax.tree.map(lambda x: x[0, 0], samples)
    tr = handlers.trace(handlers.seed(handlers.substitute(model, data=one_draw), 0)).get_trace(
        *args, **model_kwargs
    )
    enumerated = [
        name
        for name, s in tr.items()
        if s["type"] == "sample"
        and not s["is_observed"]
        and s["fn"].support.is_discrete
        and name not in samples
    ]
    if not enumerated:
        return az.from_numpyro(mcmc, **kwargs)
    observed = {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and s["is_observed"]}
    latent = {n: v for n, v in samples.items() if n in tr and tr[n]["type"] == "sample"}
    num_chains, num_draws = jax.tree.leaves(samples)[0].shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((num_chains * num_draws,) + x.shape[2:]), latent)
    loglik = _pointwise_marginal_loglik(
        model, args, model_kwargs, flat, observed, _guess_max_plate_nesting(tr)
    )
    loglik = {n: v.reshape(num_chains, num_draws, -1) for n, v in loglik.items()}
    stats = mcmc.get_extra_fields(group_by_chain=True)
    return az.from_dict(
        posterior={n: np.asarray(v) for n, v in samples.items()},
        log_likelihood=loglik,
        observed_data={n: np.asarray(v) for n, v in observed.items()},
        sample_stats={n: np.asarray(v) for n, v in stats.items() if np.ndim(v) >= 2},
    )
