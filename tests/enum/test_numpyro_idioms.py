"""NumPyro's own "Gaussian Mixture Model" tutorial, with only ``loss=`` changed.

Trained with ``TraceEnum_ELBO`` and with ``ppl.objectives.elbo()`` from the same start:
the same losses and parameters; then NumPyro's ``infer_discrete`` (MAP) and
``Predictive(..., infer_discrete=True)`` with the ppl-trained parameters decode the
assignments, checked against a brute-force argmax over all 2^5 assignments.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.contrib.funsor import config_enumerate, infer_discrete
from numpyro.infer import SVI, Predictive, TraceEnum_ELBO, init_to_value
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.util import log_density

import ppl

DATA = jnp.array([0.0, 1.0, 10.0, 11.0, 12.0])
K = 2


@config_enumerate
def model(data):
    weights = numpyro.sample("weights", dist.Dirichlet(0.5 * jnp.ones(K)))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with numpyro.plate("components", K):
        locs = numpyro.sample("locs", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", len(data)):
        assignment = numpyro.sample("assignment", dist.Categorical(weights))
        numpyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


INIT = {
    "weights": jnp.ones(K) / K,
    "scale": (DATA.var() / 2) ** 0.5,
    "locs": jnp.array([0.0, 10.0]),
}


def _fit(loss):
    guide = AutoDelta(
        handlers.block(model, hide=["assignment"]), init_loc_fn=init_to_value(values=INIT)
    )
    svi = SVI(model, guide, optax.adam(0.1), loss)
    return guide, svi.run(jax.random.PRNGKey(0), 200, DATA, progress_bar=False)


@pytest.mark.slow  # tutorial 07 runs the same in the notebooks step
def test_gmm_tutorial_trains_the_same_and_decodes():
    _, theirs = _fit(TraceEnum_ELBO())
    guide, ours = _fit(ppl.objectives.elbo())
    np.testing.assert_allclose(ours.losses, theirs.losses, rtol=1e-4)
    for k in theirs.params:
        np.testing.assert_allclose(ours.params[k], theirs.params[k], rtol=1e-4, atol=1e-5)

    median = guide.median(ours.params)
    trained = handlers.substitute(model, data=median)
    decoder = infer_discrete(trained, temperature=0, first_available_dim=-2)
    tr = handlers.trace(handlers.seed(decoder, 0)).get_trace(DATA)
    rows = jnp.array(list(itertools.product(range(K), repeat=len(DATA))))
    scores = jax.vmap(lambda a: log_density(model, (DATA,), {}, {**median, "assignment": a})[0])(
        rows
    )
    best = np.asarray(rows[jnp.argmax(scores)])
    np.testing.assert_array_equal(np.asarray(tr["assignment"]["value"]), best)
    assert len(set(best.tolist())) == 2  # a real decoding, not all one class

    predictive = Predictive(
        model, guide=guide, params=ours.params, num_samples=3, infer_discrete=True
    )
    draws = predictive(jax.random.PRNGKey(1), DATA)["assignment"]
    assert draws.shape == (3, len(DATA))
    # the posterior of each assignment is near-certain here: every draw is the MAP
    np.testing.assert_array_equal(np.asarray(draws), np.broadcast_to(best, draws.shape))


def test_density_of_a_scan_hmm_needs_no_seed():
    """``ppl.density`` called directly (no seed handler) on a ``scan`` HMM: scan's body
    draws placeholders with a key, which density supplies; the value is the ``markov``
    model's (an independent elimination path). Before: an AssertionError from
    ``Categorical.sample`` (no key)."""
    from models.enum_zoo import _series, hmm_markov, hmm_scan

    values = {
        "trans": jnp.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]]),
        "locs": jnp.array([-1.0, 0.5, 2.0]),
    }
    y = _series(5)
    # compiled: the eager funsor elimination costs seconds; the no-seed path is the same
    scan_value = jax.jit(lambda v: ppl.density(hmm_scan, v, y))(values)
    markov_value = jax.jit(lambda v: ppl.density(hmm_markov, v, y))(values)
    np.testing.assert_allclose(scan_value, markov_value, rtol=1e-5)
