"""Independent references for model-side enumeration: brute force and forward algorithms.

Nothing here uses funsor or ppl: brute force substitutes every joint assignment of the
enumerated sites into the model and takes ``logsumexp`` of NumPyro's ``log_density``;
the forward algorithms are written out in plain JAX.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import block, seed, substitute, trace
from numpyro.infer.autoguide import AutoDelta, AutoNormal
from numpyro.infer.util import log_density


def is_enum(msg) -> bool:
    return (msg.get("infer") or {}).get("enumerate") == "parallel"


def continuous_guide(model, kind=AutoDelta, **kw):
    """An AutoGuide over the model's non-enumerated latents (NumPyro's idiom)."""
    return kind(block(model, hide_fn=is_enum), **kw)


def enumerated_shapes(model, values, args):
    """(name, shape, support) of every enumerated latent without a value."""
    tr = trace(seed(substitute(model, data=values), 0)).get_trace(*args)
    out = []
    for name, site in tr.items():
        if site["type"] == "sample" and not site["is_observed"] and name not in values:
            assert is_enum(site), name
            support = np.asarray(site["fn"].enumerate_support(expand=False)).reshape(-1)
            out.append((name, np.shape(site["value"]), support))
    return out


def brute_force_log_joint(model, values, args, sites, max_combinations=200_000):
    """log sum_z p(values, z, data) over every joint assignment z of the enumerated sites
    (``sites``: :func:`enumerated_shapes`, computed outside any jit)."""
    sizes = [int(np.prod(shape)) for _, shape, _ in sites]
    supports = [s for _, _, s in sites for _ in range(int(np.prod(_)))]
    n = int(np.prod([len(s) for s in supports]))
    assert n <= max_combinations, f"{n} assignments"
    combos = np.array(list(itertools.product(*supports)), np.int32).reshape(n, sum(sizes))

    def one(row):
        assignment, start = {}, 0
        for (name, shape, _), size in zip(sites, sizes, strict=True):
            assignment[name] = row[start : start + size].reshape(shape)
            start += size
        return log_density(model, args, {}, {**values, **assignment})[0]

    return jax.nn.logsumexp(jax.vmap(one)(jnp.asarray(combos)))


def forward_log_marginal(log_init, log_trans, log_emit):
    """First-order HMM: log sum_x p(x_0) prod p(x_t | x_t-1) prod p(y_t | x_t).

    ``log_init`` (S,), ``log_trans`` (S, S), ``log_emit`` (T, S).
    """

    def step(alpha, e):
        alpha = jax.nn.logsumexp(alpha[:, None] + log_trans, axis=0) + e
        return alpha, None

    alpha0 = log_init + log_emit[0]
    alpha, _ = jax.lax.scan(step, alpha0, log_emit[1:])
    return jax.nn.logsumexp(alpha)


def forward2_log_marginal(log_trans2, log_emit):
    """Second-order HMM started from x_-2 = x_-1 = 0: ``log_trans2[a, b, c]`` = log p(c | a, b)."""
    S = log_emit.shape[1]
    # alpha[b, c] over (x_t-1, x_t); x_0 ~ trans[0, 0]
    alpha = jnp.full((S, S), -jnp.inf).at[0].set(log_trans2[0, 0] + log_emit[0])

    def step(alpha, e):
        new = jax.nn.logsumexp(alpha[:, :, None] + log_trans2, axis=0) + e[None, :]
        return new, None

    alpha, _ = jax.lax.scan(step, alpha, log_emit[1:])
    return jax.nn.logsumexp(alpha)


def continuous_parent_log_joint(x):
    """mu -> log p(x, mu) of ``models.enum_zoo.continuous_parent``, z summed out by hand."""

    def lj(mu):
        p1 = jax.nn.log_sigmoid(mu)
        p0 = jax.nn.log_sigmoid(-mu)
        lp1 = p1 + dist.Normal(mu, 1.0).log_prob(x)
        lp0 = p0 + dist.Normal(-mu, 1.0).log_prob(x)
        return dist.Normal(0.0, 1.0).log_prob(mu) + jnp.sum(jnp.logaddexp(lp0, lp1))

    return lj


def gaussian_expectation(f, loc, scale, num_nodes=4001, width=10.0):
    """E_{mu ~ N(loc, scale)}[f(mu)]: trapezoid rule in t = (mu - loc) / scale on
    [-width, width] (exponentially accurate for a smooth f; differentiable in loc, scale)."""
    t = jnp.linspace(-width, width, num_nodes)
    w = jnp.full(num_nodes, 2 * width / (num_nodes - 1)).at[0].mul(0.5).at[-1].mul(0.5)
    density = jnp.exp(-0.5 * t**2) / jnp.sqrt(2 * jnp.pi)
    return jnp.sum(w * density * jax.vmap(f)(loc + scale * t))


def guide_values(guide, params, args):
    """The (deterministic) values of an AutoDelta guide at ``params``."""
    tr = trace(substitute(seed(guide, 0), data=params)).get_trace(*args)
    return {n: s["value"] for n, s in tr.items() if s["type"] == "sample"}


__all__ = [
    "AutoDelta",
    "AutoNormal",
    "brute_force_log_joint",
    "continuous_guide",
    "continuous_parent_log_joint",
    "forward2_log_marginal",
    "forward_log_marginal",
    "gaussian_expectation",
    "guide_values",
    "numpyro",
]
