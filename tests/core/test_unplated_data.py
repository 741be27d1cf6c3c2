"""NumPyro's shape conventions. Observed data with dims outside any plate,
``numpyro.sample("y", Normal(mu, 1), obs=y)`` with ``y`` of shape (n,) and no plate, is a
common NumPyro idiom: NumPyro sums the broadcast log density, and so must ppl in every
path (plain density, pathwise and REINFORCE gradients, model-side enumeration, where, as
``TraceEnum_ELBO`` does, the unplated data dims count in the plate nesting and enumerated
dims go to their left). A *latent* value that grows its site's shape (a guide with a plate
the model lacks) stays refused. A site's shape includes NumPyro's ``sample_shape``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer import Trace_ELBO, TraceEnum_ELBO
from numpyro.infer.autoguide import AutoDelta
from scipy import stats

import ppl

Y = jnp.array([0.3, 1.2, -0.4, 2.0])
KEY = jax.random.PRNGKey(0)


def normal_mean(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_density_sums_the_data_dims():
    expected = stats.norm.logpdf(0.1) + stats.norm.logpdf(np.asarray(Y), 0.1).sum()
    np.testing.assert_allclose(ppl.density(normal_mean, {"mu": 0.1}, Y), expected, rtol=1e-6)


def assert_elbo_is_trace_elbos(model, params, *args):
    """With ``AutoDelta(model)`` at ``params``: ppl's -elbo and its gradient equal
    ``Trace_ELBO``'s (rtol 1e-6)."""
    guide = AutoDelta(model)

    def value_and_grad(loss):
        return jax.jit(jax.value_and_grad(lambda p: loss.loss(KEY, p, model, guide, *args)))(params)

    (ours, ours_grad), (theirs, theirs_grad) = (
        value_and_grad(ppl.objectives.elbo()),
        value_and_grad(Trace_ELBO()),
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(ours_grad[name], theirs_grad[name], rtol=1e-6)


def test_elbo_equals_trace_elbo_with_a_delta_guide():
    assert_elbo_is_trace_elbos(normal_mean, {"mu_auto_loc": jnp.array(0.4)}, Y)


def switch(y):
    z = numpyro.sample("z", dist.Bernoulli(0.3))
    numpyro.sample("y", dist.Normal(2.0 * z - 1.0, 1.0), obs=y)


def switch_guide(y):
    q = numpyro.param("q", 0.6, constraint=dist.constraints.unit_interval)
    numpyro.sample("z", dist.Bernoulli(q))


def test_reinforce_gradient_is_unbiased():
    """REINFORCE on a guide-sampled switch: the mean over 4000 keys is within 4 SE of the
    exact gradient (the ``enum`` strategy sums the switch out)."""
    params = {"q": jnp.array(0.6)}
    exact = jax.grad(
        lambda p: ppl.objectives.elbo().loss(
            KEY, p, switch, ppl.strategy(switch_guide, {"z": "enum"}), Y
        )
    )(params)["q"]

    def one(key):
        return jax.grad(lambda p: ppl.objectives.elbo().loss(key, p, switch, switch_guide, Y))(
            params
        )["q"]

    grads = jax.jit(jax.vmap(one))(jax.random.split(KEY, 4000))
    se = float(jnp.std(grads)) / np.sqrt(grads.size)
    assert abs(float(jnp.mean(grads)) - float(exact)) < 4 * se, (float(jnp.mean(grads)), exact)


@config_enumerate
def enumerated_switch(y):
    pz = numpyro.param("pz", 0.3, constraint=dist.constraints.unit_interval)
    z = numpyro.sample("z", dist.Bernoulli(pz))
    numpyro.sample("y", dist.Normal(2.0 * z - 1.0, 1.0), obs=y)


def _no_guide(y):
    pass


def _brute(pz, y=Y):
    lp = jnp.log(jnp.stack([1.0 - pz, pz]))
    lp = lp + jnp.stack([dist.Normal(m, 1.0).log_prob(y).sum() for m in (-1.0, 1.0)])
    return -jax.nn.logsumexp(lp)


def test_model_side_enumeration_equals_trace_enum_and_brute_force():
    with enable_x64(True):
        y = jnp.asarray(np.asarray(Y), jnp.float64)
        params = {"pz": jnp.array(0.3)}
        ours = jax.jit(
            jax.value_and_grad(
                lambda p: ppl.objectives.elbo().loss(KEY, p, enumerated_switch, _no_guide, y)
            )
        )(params)
        theirs = jax.jit(
            jax.value_and_grad(
                lambda p: TraceEnum_ELBO().loss(KEY, p, enumerated_switch, _no_guide, y)
            )
        )(params)
        brute = jax.value_and_grad(lambda p: _brute(p["pz"], y))(params)
        for ref in (theirs, brute):
            np.testing.assert_allclose(ours[0], ref[0], rtol=1e-10)
            np.testing.assert_allclose(ours[1]["pz"], ref[1]["pz"], rtol=1e-10)


def test_declared_nesting_without_room_for_the_data_dims_is_refused():
    params = {"pz": jnp.array(0.3)}
    with pytest.raises(ppl.EnumerationError, match="site 'y'.*max_plate_nesting=0"):
        ppl.objectives.elbo(max_plate_nesting=0).loss(KEY, params, enumerated_switch, _no_guide, Y)
    value = ppl.objectives.elbo(max_plate_nesting=1).loss(
        KEY, params, enumerated_switch, _no_guide, Y
    )
    np.testing.assert_allclose(value, _brute(0.3), rtol=1e-5)


def test_latent_value_growing_its_site_is_refused():
    def guide(y):
        with numpyro.plate("extra", 3):
            numpyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="shapes disagree at site 'mu'"):
        ppl.objectives.elbo().loss(KEY, {}, normal_mean, guide, jnp.array(0.5))
    with pytest.raises(ValueError, match="site 'mu': value of shape \\(3,\\) does not fit"):
        ppl.density(normal_mean, {"mu": jnp.zeros(3)}, jnp.array(0.5))


def iid_means(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0), sample_shape=(3,))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_sample_shape_is_part_of_the_site_shape():
    """``sample("mu", Normal(0, 1), sample_shape=(3,))``: the site's value has shape (3,),
    so a guide (here AutoDelta) sampling (3,) values matches it; -elbo equals
    ``Trace_ELBO``'s (value and gradient). Before: "Model and guide shapes disagree at site
    'mu': guide (3,), model ()"."""
    y = Y[:3]
    params = {"mu_auto_loc": jnp.array([0.1, -0.2, 0.3])}
    assert_elbo_is_trace_elbos(iid_means, params, y)
    expected = stats.norm.logpdf([0.1, -0.2, 0.3]).sum()
    expected += stats.norm.logpdf(np.asarray(y), [0.1, -0.2, 0.3]).sum()
    np.testing.assert_allclose(
        ppl.density(iid_means, {"mu": params["mu_auto_loc"]}, y), expected, rtol=1e-6
    )


def regression(marriage, age, divorce=None):
    """NumPyro's introductory regression, as written there: no plate around the data."""
    a = numpyro.sample("a", dist.Normal(0.0, 0.2))
    b_m = numpyro.sample("bM", dist.Normal(0.0, 0.5))
    b_a = numpyro.sample("bA", dist.Normal(0.0, 0.5))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0))
    mu = a + b_m * marriage + b_a * age
    numpyro.sample("obs", dist.Normal(mu, sigma), obs=divorce)


def test_intro_regression_gradient_agrees_with_trace_elbo():
    """AutoNormal on the unplated regression: ppl's and ``Trace_ELBO``'s gradient estimates
    have the same mean (every coordinate within 4 combined SEs over 2000 keys each)."""
    from numpyro.infer import SVI
    from numpyro.infer.autoguide import AutoNormal

    rng = np.random.default_rng(0)
    marriage, age = (jnp.asarray(rng.normal(size=50)) for _ in range(2))
    divorce = 0.1 + 0.3 * marriage - 0.6 * age + 0.8 * jnp.asarray(rng.normal(size=50))
    guide = AutoNormal(regression)
    svi = SVI(regression, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    params = svi.get_params(svi.init(KEY, marriage, age, divorce))
    keys = jax.random.split(jax.random.PRNGKey(1), 2000)

    def grads(loss):
        one = jax.grad(lambda p, k: loss.loss(k, p, regression, guide, marriage, age, divorce))
        flat = jax.jit(jax.vmap(lambda k: jax.flatten_util.ravel_pytree(one(params, k))[0]))
        g = flat(keys)
        return g.mean(0), g.std(0) / np.sqrt(len(keys))

    (ours, se_ours), (theirs, se_theirs) = grads(ppl.objectives.elbo()), grads(Trace_ELBO())
    z = (ours - theirs) / jnp.sqrt(se_ours**2 + se_theirs**2)
    assert float(jnp.max(jnp.abs(z))) < 4.0, np.asarray(z)


@config_enumerate
def switch_and_columns(y):
    pz = numpyro.param("pz", 0.3, constraint=dist.constraints.unit_interval)
    z = numpyro.sample("z", dist.Bernoulli(pz))
    with numpyro.plate("cols", 4):
        w = numpyro.sample("w", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(2.0 * z - 1.0 + w, 1.0), obs=y)


@pytest.mark.slow
def test_unplated_rows_inside_a_plate_with_global_and_local_enumeration():
    """Data (3, 4): a plate over the 4 columns, the 3 rows outside any plate; z global and
    w per column, both summed out: equals brute force and ``TraceEnum_ELBO``."""
    with enable_x64(True):
        y = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
        params = {"pz": jnp.array(0.3)}
        ours = ppl.objectives.elbo().loss(KEY, params, switch_and_columns, _no_guide, y)
        theirs = TraceEnum_ELBO().loss(KEY, params, switch_and_columns, _no_guide, y)
        per_z = []
        for z, pz in ((0, 0.7), (1, 0.3)):
            cols = [
                jax.nn.logsumexp(
                    jnp.array(
                        [
                            np.log(0.5) + dist.Normal(2.0 * z - 1 + w, 1).log_prob(y[:, c]).sum()
                            for w in (0, 1)
                        ]
                    )
                )
                for c in range(4)
            ]
            per_z.append(np.log(pz) + sum(cols))
        brute = -jax.nn.logsumexp(jnp.array(per_z))
        np.testing.assert_allclose(ours, brute, rtol=1e-10)
        np.testing.assert_allclose(theirs, brute, rtol=1e-10)
