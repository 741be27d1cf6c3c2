"""Measure-valued derivative rules and per-element local-expectation rules.

For a site x ~ p_theta with elements i, a rule gives, per element, A alternative values
x_a and a pairing ``(parameter j, sign)`` such that

    d/dtheta_j E[k(x)] = c_j(theta) * sum_a sign_a * E[k(x with x_i -> x_a)]

(Mohamed et al. 2020, Table 3). Discrete families with finite support use the
local-expectation form d/dtheta E[k] = sum_v dq(v)/dtheta * k(v): alternatives are the
support values, "parameters" are the probabilities q(v), c = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import random

from .distributions import base_distribution, log_prob
from .strategies import StrategyError

_SQRT_2PI = jnp.sqrt(2 * jnp.pi)


class LocalRule(NamedTuple):
    """How to differentiate one site element by element.

    ``alternatives(fn, x, key) -> (A, *x.shape)``; ``parameters(fn, x) -> (theta, coef)``
    each ``(P, *x.shape)``, theta differentiable, coef not; ``pairs[a] = (j, sign)``.
    """

    num_alternatives: int
    pairs: tuple
    alternatives: Callable
    parameters: Callable


def _broadcast_param(fn, attr, x):
    return jnp.broadcast_to(getattr(base_distribution(fn), attr), jnp.shape(x))


def _support_rule(fn) -> LocalRule:
    base = base_distribution(fn)
    support = base.enumerate_support(expand=False).reshape(-1)
    size = support.shape[0]

    def alternatives(fn, x, key):
        values = support.astype(jnp.result_type(x))
        return jnp.broadcast_to(
            values.reshape((size,) + (1,) * jnp.ndim(x)), (size,) + jnp.shape(x)
        )

    def parameters(fn, x):
        vals = alternatives(fn, x, None)
        probs = jnp.exp(jax.vmap(lambda v: _elementwise_log_prob(fn, v))(vals))
        return probs, jnp.ones_like(probs)

    return LocalRule(size, tuple((a, 1.0) for a in range(size)), alternatives, parameters)


def _elementwise_log_prob(fn, value):
    """Log density per element (event dims of wrappers not summed)."""
    base = base_distribution(fn)
    return jnp.broadcast_to(log_prob(base, value), jnp.shape(value))


def _normal_rule(fn) -> LocalRule:
    def alternatives(fn, x, key):
        loc, scale = _broadcast_param(fn, "loc", x), _broadcast_param(fn, "scale", x)
        k1, k2, k3 = random.split(key, 3)
        rayleigh = jnp.sqrt(-2.0 * jnp.log(random.uniform(k1, jnp.shape(x), minval=1e-12)))
        maxwell = jnp.linalg.norm(random.normal(k2, (3,) + jnp.shape(x)), axis=0)
        sign = jnp.where(random.bernoulli(k3, 0.5, jnp.shape(x)), 1.0, -1.0)
        return jnp.stack(
            [loc + scale * rayleigh, loc - scale * rayleigh, loc + scale * sign * maxwell, x]
        ).astype(jnp.result_type(x))

    def parameters(fn, x):
        loc, scale = _broadcast_param(fn, "loc", x), _broadcast_param(fn, "scale", x)
        sg_scale = jax.lax.stop_gradient(scale)
        return jnp.stack([loc, scale]), jnp.stack([1.0 / (sg_scale * _SQRT_2PI), 1.0 / sg_scale])

    return LocalRule(4, ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)), alternatives, parameters)


def _poisson_rule(fn) -> LocalRule:
    def alternatives(fn, x, key):
        return jnp.stack([x + 1, x]).astype(jnp.result_type(x))

    def parameters(fn, x):
        rate = _broadcast_param(fn, "rate", x)
        return rate[None], jnp.ones_like(rate)[None]

    return LocalRule(2, ((0, 1.0), (0, -1.0)), alternatives, parameters)


def _geometric_rule(fn) -> LocalRule:
    # p(x) = p (1-p)^x on {0, 1, ...}: d/dp p(x) = (1/p) [p(x) - (x' ~ 1 + Geom + Geom)]
    def alternatives(fn, x, key):
        probs = _broadcast_param(fn, "probs", x)
        extra = dist.Geometric(probs=jax.lax.stop_gradient(probs)).sample(key)
        return jnp.stack([x, x + 1 + extra]).astype(jnp.result_type(x))

    def parameters(fn, x):
        probs = _broadcast_param(fn, "probs", x)
        return probs[None], (1.0 / jax.lax.stop_gradient(probs))[None]

    return LocalRule(2, ((0, 1.0), (0, -1.0)), alternatives, parameters)


def _check_scalar_events(site_name, fn, strategy):
    base = base_distribution(fn)
    if base.event_shape != ():
        raise StrategyError(
            f"site '{site_name}': strategy '{strategy}' needs a distribution with scalar "
            f"events; {type(base).__name__} has event shape {base.event_shape}"
        )


def mvd_rule(site_name: str, fn) -> LocalRule:
    """The MVD rule for ``fn``, or a :class:`StrategyError` naming the site."""
    base = base_distribution(fn)
    _check_scalar_events(site_name, fn, "mvd")
    if isinstance(base, (dist.BernoulliProbs, dist.BernoulliLogits)) or isinstance(
        base, (dist.CategoricalProbs, dist.CategoricalLogits)
    ):
        return _support_rule(fn)
    if isinstance(base, dist.Normal):
        return _normal_rule(fn)
    if isinstance(base, dist.Poisson) and not getattr(base, "is_sparse", False):
        return _poisson_rule(fn)
    if isinstance(base, (dist.GeometricProbs, dist.GeometricLogits)):
        return _geometric_rule(fn)
    raise StrategyError(
        f"site '{site_name}': no measure-valued derivative for {type(base).__name__}; "
        "'mvd' supports Bernoulli, Categorical, Normal, Poisson and Geometric"
    )


def enum_rule(site_name: str, fn) -> LocalRule:
    """Per-element local expectation over the finite support (enum on batched sites)."""
    _check_scalar_events(site_name, fn, "enum")
    return _support_rule(fn)
