"""NumPyro's ELBO keywords survive a swap of ``loss=``: ``max_plate_nesting`` and
``vectorize_particles`` on every ppl objective factory.

``TraceEnum_ELBO(max_plate_nesting=n)`` puts enumerated dims left of n plate dims; a ppl
objective given the same keyword does the same (the declared nesting reaches the
enumeration: checked by recording it), gives TraceEnum's value exactly with a delta guide,
and refuses a nesting smaller than the model's plates by naming the plate.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer import TraceEnum_ELBO
from numpyro.infer.autoguide import AutoDelta

import ppl
from ppl.core import model_enum

DATA = jnp.array([[0.0, 1.0, 9.0], [10.0, 11.0, 2.0]])  # (groups, items)


@config_enumerate
def nested(data):
    locs = numpyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    with numpyro.plate("groups", data.shape[0], dim=-2):
        w = numpyro.sample("w", dist.Beta(2.0, 2.0))
        with numpyro.plate("items", data.shape[1], dim=-1):
            z = numpyro.sample("z", dist.Bernoulli(w))
            numpyro.sample("obs", dist.Normal(locs[z.astype(jnp.int32)], 1.0), obs=data)


GUIDE = AutoDelta(handlers.block(nested, hide=["z"]))
FACTORIES = [
    ppl.objectives.elbo,
    ppl.objectives.iwae,
    ppl.objectives.renyi,
    ppl.objectives.vimco,
    ppl.objectives.cubo,
    ppl.objectives.rws,
    ppl.objectives.tail_adaptive,
    ppl.objectives.msc,
    ppl.objectives.annealed,
    ppl.objectives.forward_kl,
]


def _loss_and_grad(loss, params):
    key = jax.random.PRNGKey(0)
    return jax.jit(jax.value_and_grad(lambda p: loss.loss(key, p, nested, GUIDE, DATA)))(params)


@pytest.fixture(scope="module")
def params():
    tr = handlers.trace(handlers.seed(GUIDE, 1)).get_trace(DATA)
    return {n: s["value"] for n, s in tr.items() if s["type"] == "param"}


@pytest.mark.parametrize(
    "nesting",
    [pytest.param(None, marks=pytest.mark.slow), 2, pytest.param(3, marks=pytest.mark.slow)],
)
def test_value_and_gradient_equal_trace_enum(params, nesting):
    theirs = TraceEnum_ELBO(max_plate_nesting=3 if nesting is None else nesting)
    ours = ppl.objectives.elbo(max_plate_nesting=nesting)
    want, want_grad = _loss_and_grad(theirs, params)
    got, got_grad = _loss_and_grad(ours, params)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for k in want_grad:
        np.testing.assert_allclose(got_grad[k], want_grad[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "nesting", [2, pytest.param(3, marks=pytest.mark.slow), pytest.param(5, marks=pytest.mark.slow)]
)
def test_the_declared_nesting_reaches_the_enumeration(params, nesting, monkeypatch):
    seen = []
    real = model_enum.collapsed_terms

    def spy(fn, args, kwargs, used):
        seen.append(used)
        return real(fn, args, kwargs, used)

    monkeypatch.setattr("ppl.core.constructs.collapsed_terms", spy)
    loss = ppl.objectives.iwae(2, max_plate_nesting=nesting)
    value, grads = _loss_and_grad(loss, params)
    assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in grads.values())
    assert seen and set(seen) == {nesting}


def test_a_nesting_smaller_than_the_plates_is_refused_by_name(params):
    loss = ppl.objectives.elbo(max_plate_nesting=1)
    with pytest.raises(ppl.EnumerationError, match="plate 'groups'.*max_plate_nesting=1"):
        _loss_and_grad(loss, params)


def _continuous_two_plates(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", data.shape[0], dim=-2):
        a = numpyro.sample("a", dist.Normal(mu, 1.0))
        with numpyro.plate("items", data.shape[1], dim=-1):
            numpyro.sample("obs", dist.Normal(a, 1.0), obs=data)


def _continuous_guide(data):
    numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("groups", data.shape[0], dim=-2):
        numpyro.sample("a", dist.Normal(0.0, 1.0))


def test_a_nesting_smaller_than_the_plates_is_refused_without_enumeration_too():
    """``TraceEnum_ELBO(max_plate_nesting=1)`` refuses this all-continuous model ("Ran
    out of free dims during allocation for groups"); before, ppl ignored the declaration
    silently. A declaration the plates fit is accepted."""
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="Ran out of free dims"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(
            key, {}, _continuous_two_plates, _continuous_guide, DATA
        )
    loss = ppl.objectives.elbo(max_plate_nesting=1)
    with pytest.raises(
        ppl.EnumerationError, match="plate 'groups' \\(site 'a'\\).*max_plate_nesting=1"
    ):
        loss.loss(key, {}, _continuous_two_plates, _continuous_guide, DATA)
    value = ppl.objectives.elbo(max_plate_nesting=2).loss(
        key, {}, _continuous_two_plates, _continuous_guide, DATA
    )
    assert np.isfinite(float(value))


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_every_factory_takes_numpyro_keywords(factory):
    made = factory(max_plate_nesting=2, vectorize_particles=False)
    assert made.max_plate_nesting == 2
    names = inspect.signature(factory).parameters
    assert "max_plate_nesting" in names and "vectorize_particles" in names
    with pytest.raises(ValueError, match="max_plate_nesting must be an int"):
        factory(max_plate_nesting=-1)
    with pytest.raises(TypeError, match="vectorize_particles must be a bool"):
        factory(vectorize_particles="yes")
    made = factory(vectorize_particles=jax.vmap, sum_sites=True, multi_sample_guide=False)
    assert made.max_plate_nesting is None
    assert {"sum_sites", "multi_sample_guide"} <= set(names)
    with pytest.raises(ValueError, match="sum_sites=False .*no ppl counterpart"):
        factory(sum_sites=False)
    with pytest.raises(ValueError, match="multi_sample_guide=True .*not supported"):
        factory(multi_sample_guide=True)


def test_user_objective_takes_max_plate_nesting(params):
    @ppl.objective(max_plate_nesting=3)
    def my_elbo(model, guide, *args, **kwargs):
        q = ppl.simulate(guide, *args, **kwargs)
        return ppl.density(model, q.values, *args, **kwargs) - q.log_prob

    want, _ = _loss_and_grad(TraceEnum_ELBO(max_plate_nesting=3), params)
    got, _ = _loss_and_grad(my_elbo, params)
    np.testing.assert_allclose(got, want, rtol=1e-5)
