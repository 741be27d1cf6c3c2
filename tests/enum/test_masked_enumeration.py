"""A mask on a site enumerated in the model: hidden elements are summed with weights 1/S.

Two common programs hide elements of an enumerated site: ``obs_mask`` on a discrete
observation (NumPyro adds a latent ``<name>_unobserved`` site, masked at the observed
entries, which nothing reads there) and ``mask(t < length)`` padding a Markov chain. In
both the hidden elements must add nothing: the ELBO is the likelihood of the data as
they are, which is what ``TraceEnum_ELBO`` returns (and a brute-force sum). NumPyro's
``numpyro.contrib.funsor.log_density`` instead sums each hidden element's S values with
weight 1 (log S each; same gradient).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro import handlers
from numpyro.contrib.funsor import config_enumerate, markov
from numpyro.infer import TraceEnum_ELBO
from numpyro.infer.autoguide import AutoDelta

import ppl

COUNTS = np.array([1, -1, 0, 1, -1, 1])  # -1: missing
OBSERVED = COUNTS >= 0
W = np.arange(6.0) / 5


@config_enumerate
def missing_labels(counts, observed, w):
    """A binary label per item, missing for some items (obs_mask), and a noisy reading."""
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    with numpyro.plate("items", len(counts)):
        label = numpyro.sample(
            "label", dist.Bernoulli(p), obs=np.clip(counts, 0, 1), obs_mask=observed
        )
        numpyro.sample("w", dist.Normal(label, 1.0), obs=w)


def _brute_force_missing_labels(p):
    lp = dist.Beta(2.0, 2.0).log_prob(p)
    for c, seen, w in zip(COUNTS, OBSERVED, W, strict=True):
        if seen:
            lp += dist.Bernoulli(p).log_prob(c) + dist.Normal(float(c), 1.0).log_prob(w)
        else:
            terms = [
                dist.Bernoulli(p).log_prob(z) + dist.Normal(z, 1.0).log_prob(w) for z in (0, 1)
            ]
            lp += jax.nn.logsumexp(jnp.stack(terms))
    return lp


def _value_and_grad(loss, model, guide, params, *args):
    return jax.jit(
        jax.value_and_grad(lambda q: loss.loss(jax.random.PRNGKey(0), q, model, guide, *args))
    )(params)


def test_obs_mask_on_an_enumerated_site_is_the_likelihood_of_the_data():
    """-elbo = log p(observed labels, readings, p), the missing labels summed out: equal
    to a brute-force sum and to TraceEnum_ELBO, value and gradient (float64)."""
    with enable_x64():
        guide = AutoDelta(handlers.block(missing_labels, hide=["label_unobserved"]))
        args = (COUNTS, OBSERVED, W)
        for p in (0.5, 0.3):
            params = {"p_auto_loc": jnp.array(p)}
            ours, grad = _value_and_grad(
                ppl.objectives.elbo(), missing_labels, guide, params, *args
            )
            theirs, their_grad = _value_and_grad(
                TraceEnum_ELBO(), missing_labels, guide, params, *args
            )
            exact, exact_grad = jax.value_and_grad(_brute_force_missing_labels)(jnp.array(p))
            np.testing.assert_allclose(-ours, exact, rtol=1e-10)
            np.testing.assert_allclose(ours, theirs, rtol=1e-10)
            np.testing.assert_allclose(-grad["p_auto_loc"], exact_grad, rtol=1e-8)
            np.testing.assert_allclose(grad["p_auto_loc"], their_grad["p_auto_loc"], rtol=1e-8)


S, T = 3, 5
Y = np.sin(np.arange(2.0 * T)).reshape(2, T)  # two series, the second padded after 3 steps
LENGTHS = np.array([T, 3])


def padded_hmm(y, lengths):
    """An HMM over two series of different lengths, padded by ``mask(t < length)``
    (``markov`` form, where ``TraceEnum_ELBO`` is exact)."""
    trans = numpyro.param(
        "trans", (0.3 + jnp.eye(S)) / (1 + 0.3 * S), constraint=dist.constraints.simplex
    )
    locs = numpyro.param("locs", jnp.linspace(-1.0, 1.0, S))
    with numpyro.plate("series", 2):
        x = 0
        for t in markov(range(T)):
            with handlers.mask(mask=t < lengths):
                x = numpyro.sample(
                    f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"}
                )
                numpyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=y[:, t])


def _forward(params):
    """log p(y) of each series over its own length (a sum over all its paths), summed."""
    trans, locs = params["trans"], params["locs"]
    total = 0.0
    for n in range(2):
        paths = np.array(list(itertools.product(range(S), repeat=int(LENGTHS[n]))))
        prev = np.concatenate([np.zeros((len(paths), 1), int), paths[:, :-1]], axis=1)
        steps = jnp.log(trans[prev, paths]) + dist.Normal(locs[paths], 1.0).log_prob(
            Y[n, : paths.shape[1]]
        )
        total += jax.nn.logsumexp(steps.sum(-1))
    return total


def _padded_params():
    trans = 0.3 + jnp.eye(S) + 0.1 * jnp.arange(S)
    return {"trans": trans / trans.sum(-1, keepdims=True), "locs": jnp.array([-1.0, 0.2, 1.1])}


def _no_guide(*args):
    return None


def test_padded_chain_is_the_likelihood_of_the_sequences_as_they_are():
    """A padded step adds nothing: -elbo equals the likelihood of each series over its
    own length (brute force over paths), value and gradient."""
    with enable_x64():
        params = _padded_params()
        ours, grad = _value_and_grad(
            ppl.objectives.elbo(), padded_hmm, _no_guide, params, Y, LENGTHS
        )
        exact, exact_grad = jax.value_and_grad(_forward)(params)
        np.testing.assert_allclose(-ours, exact, rtol=1e-10)
        for k in params:
            np.testing.assert_allclose(-grad[k], exact_grad[k], rtol=1e-8, atol=1e-12)


@pytest.mark.slow  # TraceEnum_ELBO's markov program compiles slowly
def test_padded_chain_is_trace_enums():
    """TraceEnum_ELBO's value, and its gradient along the simplex: TraceEnum scores a
    padded step's transition row, whose sum is 1, a gradient constant along each row,
    which the simplex does not see."""
    with enable_x64():
        params = _padded_params()
        ours, grad = _value_and_grad(
            ppl.objectives.elbo(), padded_hmm, _no_guide, params, Y, LENGTHS
        )
        theirs, their_grad = _value_and_grad(
            TraceEnum_ELBO(), padded_hmm, _no_guide, params, Y, LENGTHS
        )
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)
        np.testing.assert_allclose(grad["locs"], their_grad["locs"], rtol=1e-8, atol=1e-12)
        along = grad["trans"] - grad["trans"].mean(-1, keepdims=True)
        their_along = their_grad["trans"] - their_grad["trans"].mean(-1, keepdims=True)
        np.testing.assert_allclose(along, their_along, rtol=1e-8, atol=1e-12)
