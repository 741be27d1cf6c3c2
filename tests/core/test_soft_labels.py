"""Bernoulli observations with soft labels (values in [0, 1], e.g. grey-level pixels in a
VAE). With NumPyro's validation off (``numpyro.enable_validation(False)``) NumPyro scores
them with its cross-entropy formula, y log p + (1 - y) log(1 - p), and so does ppl; with
validation on (NumPyro's default) NumPyro's loss is inf and ppl refuses the data by name,
saying so. Values outside [0, 1] are refused either way."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro.infer import Trace_ELBO

import ppl

PIXELS = np.array([[0.0, 0.2, 0.9, 1.0], [0.5, 0.1, 0.7, 0.3], [1.0, 0.0, 0.4, 0.6]])


def decoder(pixels, parameterization):
    """A two-dimensional code per image decoded into pixel probabilities."""
    w = numpyro.param("w", 0.3 * jnp.arange(8.0).reshape(2, 4) - 1.0)
    with numpyro.plate("images", pixels.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        logits = z @ w
        fn = (
            dist.Bernoulli(logits=logits)
            if parameterization == "logits"
            else dist.Bernoulli(probs=jax.nn.sigmoid(logits))
        )
        numpyro.sample("x", fn.to_event(1), obs=pixels)


def point_guide(pixels, parameterization):
    """A hand-written point-mass encoder (AutoDelta's initialization, in NumPyro, refuses
    soft labels under ``Bernoulli(probs)``)."""
    z_loc = numpyro.param("z_loc", jnp.ones((pixels.shape[0], 2)))
    with numpyro.plate("images", pixels.shape[0]):
        numpyro.sample("z", dist.Delta(z_loc, event_dim=1))


@pytest.mark.parametrize("parameterization", ["logits", "probs"])
def test_soft_labels_are_scored_as_numpyro_scores_them(parameterization):
    with enable_x64():
        guide = point_guide
        params = {"w": 0.3 * jnp.arange(8.0).reshape(2, 4) - 1.0, "z_loc": jnp.ones((3, 2))}

        def value_and_grad(loss):
            return jax.value_and_grad(
                lambda p: loss.loss(
                    jax.random.PRNGKey(0), p, decoder, guide, PIXELS, parameterization
                )
            )(params)

        with numpyro.validation_enabled(False):
            ours, grad = value_and_grad(ppl.objectives.elbo())
            theirs, their_grad = value_and_grad(Trace_ELBO())
        with pytest.raises(ValueError, match=r"observed site 'x' is outside .*soft labels"):
            value_and_grad(ppl.objectives.elbo())
        assert np.isposinf(value_and_grad(Trace_ELBO())[0])  # NumPyro, validation on
    assert np.isfinite(ours)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    for k in params:
        np.testing.assert_allclose(grad[k], their_grad[k], rtol=1e-8, atol=1e-12)


def test_values_outside_the_unit_interval_stay_refused():
    params = {"w": jnp.zeros((2, 4)), "z_loc": jnp.zeros((3, 2))}
    bad = PIXELS.copy()
    bad[1, 2] = 1.5
    with (
        numpyro.validation_enabled(False),
        pytest.raises(ValueError, match=r"observed site 'x' is outside the support of Bernoulli"),
    ):
        ppl.objectives.elbo().loss(
            jax.random.PRNGKey(0), params, decoder, point_guide, bad, "logits"
        )
