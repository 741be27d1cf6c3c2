"""ppl's Categorical log densities are NumPyro's numbers, computed without NumPyro's copies.

``ppl.core.distributions.log_prob`` gathers a Categorical's normalized logits at the
value without first broadcasting the logits to the value's batch shape, and
``support_log_prob`` scores an enumerated site (its value is its support, ``arange(S)``
on the site's own dim) by moving the event axis to that dim (no gather, no scatter in the
gradient). Both must equal ``fn.log_prob(value)`` exactly, values and gradients, through
``mask`` / ``expand`` wrappers and with ``validate_args``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import enable_x64

from ppl.core.distributions import log_prob, support_log_prob

S = 4


def _probs(key, shape):
    p = jax.random.dirichlet(key, jnp.ones(S), shape)
    return p.at[..., 0, 1].set(0.0) / p.at[..., 0, 1].set(0.0).sum(-1, keepdims=True)


def _families(params_shape):
    key = jax.random.PRNGKey(1)
    probs = _probs(key, params_shape)
    logits = 3.0 * jax.random.normal(key, params_shape + (S,))
    return {
        "probs": (lambda p: dist.Categorical(probs=p), probs),
        "logits": (lambda z: dist.Categorical(logits=z), logits),
    }


# (parameter batch shape, value) pairs the way enumeration and data produce them
VALUES = {
    "data": ((3, 1), jnp.array([[0], [3], [2]])),
    "enumerated dim -2": ((1, 3), jnp.arange(S).reshape(S, 1)),
    "enumerated dim -3, time-stacked params": ((5, 1, 1, 3), jnp.arange(S).reshape(S, 1, 1)),
    "value with extra leading dims": ((3,), jnp.arange(2 * 3).reshape(2, 3) % S),
}


def assert_same_value_and_grad(ours, numpyros, params):
    """Equal log densities; equal gradients of a weighted sum over the finite entries."""
    np.testing.assert_array_equal(ours(params), numpyros(params))
    lp = ours(params)
    w = jnp.cos(jnp.arange(lp.size)).reshape(lp.shape)

    def weighted(f):
        return jax.grad(lambda p: jnp.sum(jnp.where(jnp.isfinite(f(p)), f(p) * w, 0.0)))

    np.testing.assert_allclose(
        weighted(ours)(params), weighted(numpyros)(params), rtol=1e-12, atol=1e-12
    )


SLOW = pytest.mark.slow  # the fast suite keeps a few cases, both families
FAST = {("logits", "enumerated dim -3, time-stacked params"), ("probs", -2)}


@pytest.mark.parametrize(
    ("family", "case"),
    [
        (family, case) if (family, case) in FAST else pytest.param(family, case, marks=SLOW)
        for family in ("probs", "logits")
        for case in VALUES
    ],
)
def test_log_prob_is_numpyros(family, case):
    params_shape, value = VALUES[case]
    with enable_x64():
        make, params = _families(params_shape)[family]
        params = params.astype(jnp.float64)

        def ours(p):
            return log_prob(make(p), value)

        def numpyros(p):
            return make(p).log_prob(value)

        assert_same_value_and_grad(ours, numpyros, params)


def test_validate_args_scores_values_outside_the_support_minus_infinity():
    fn = dist.Categorical(probs=jnp.ones(S) / S, validate_args=True)
    value = jnp.array([0, S, -1, 2])
    np.testing.assert_array_equal(log_prob(fn, value), fn.log_prob(value))
    assert np.isneginf(np.asarray(log_prob(fn, value))[[1, 2]]).all()


@pytest.mark.parametrize(
    ("family", "dim"),
    [
        (family, dim) if (family, dim) in FAST else pytest.param(family, dim, marks=SLOW)
        for family in ("probs", "logits")
        for dim in (-1, -2, -3)
    ],
)
def test_support_log_prob_is_numpyros_at_the_enumerated_value(family, dim):
    """The site's support on dim ``dim``, parameters broadcasting on the other dims."""
    nd = 3
    params_shape = tuple(1 if d == nd + dim else 2 + d for d in range(nd))
    value = jnp.arange(S).reshape((S,) + (1,) * (-dim - 1))
    with enable_x64():
        make, params = _families(params_shape)[family]
        params = params.astype(jnp.float64)
        mask = jnp.arange(np.prod(params_shape)).reshape(params_shape) % 3 > 0
        for wrap in (
            lambda f: f,
            lambda f: f.mask(mask),
            lambda f: f.expand((2,) + params_shape),
        ):

            def ours(p, wrap=wrap):
                return support_log_prob(wrap(make(p)), value, dim)

            def numpyros(p, wrap=wrap):
                return wrap(make(p)).log_prob(value)

            assert_same_value_and_grad(ours, numpyros, params)


def test_support_log_prob_falls_back_where_parameters_vary_along_the_sites_dim():
    """Parameters that vary along the site's own dim: the states are not the event axis
    alone, so the value is gathered (the general path)."""
    probs = _probs(jax.random.PRNGKey(2), (S, 3))  # batch dim -2 has size S
    value = jnp.arange(S).reshape(S, 1)
    fn = dist.Categorical(probs=probs)
    np.testing.assert_array_equal(support_log_prob(fn, value, -2), fn.log_prob(value))
