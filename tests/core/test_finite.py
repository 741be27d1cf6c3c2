"""ppl.check_finite: the first non-finite value is reported with the site (or the user's
source line) that produced it; clean programs give the unchecked results."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import ppl

KEY = jax.random.PRNGKey(0)
elbo = ppl.objectives.elbo()


def checked_grad(model, guide, *args):
    return ppl.check_finite(jax.value_and_grad(lambda p: elbo.loss(KEY, p, model, guide, *args)))


def scale_model(x):
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.sample("x", dist.Normal(0.0, s), obs=x)


def normal_guide(x):
    numpyro.sample("s", dist.Normal(numpyro.param("m", 1.0), numpyro.param("sd", 0.1)))


def test_value_outside_the_models_support():
    f = checked_grad(scale_model, normal_guide, 1.0)
    with pytest.raises(
        ppl.NonFiniteError,
        match=r"site 's' \(HalfNormal\) in ppl.density: log density is -inf at value -3\.\d+",
    ):
        f({"m": jnp.array(-3.0), "sd": jnp.array(0.1)})


def test_invalid_guide_parameter():
    f = checked_grad(scale_model, normal_guide, 1.0)
    with pytest.raises(
        ppl.NonFiniteError,
        match=r"site 's' \(Normal\) in ppl.simulate: log density is nan .*scale=-0\.1",
    ):
        f({"m": jnp.array(1.0), "sd": jnp.array(-0.1)})


def test_nan_parameter_names_the_site():
    def model(x):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("x", dist.Normal(jnp.log(s - 1.0), 1.0), obs=x)

    def guide(x):
        numpyro.sample("s", dist.LogNormal(numpyro.param("m", 0.0), 0.1))

    f = checked_grad(model, guide, 1.0)
    with pytest.raises(
        ppl.NonFiniteError, match="site 'x' \\(Normal\\) in ppl.density: parameter loc"
    ):
        f({"m": jnp.array(-1.0)})


def test_nan_only_in_the_gradient_points_at_the_user_line():
    """jnp.where(z > 0, sqrt(z), 0): finite value, NaN gradient (the untaken branch)."""

    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(jnp.where(z > 0, jnp.sqrt(z), 0.0), 1.0), obs=x)

    def guide(x):
        numpyro.sample("z", dist.Normal(numpyro.param("m", -3.0), 0.1))

    params = {"m": jnp.array(-3.0)}
    value, grad = jax.value_and_grad(lambda p: elbo.loss(KEY, p, model, guide, 1.0))(params)
    assert np.isfinite(value) and np.isnan(grad["m"])  # what the user sees without ppl
    with pytest.raises(
        ppl.NonFiniteError, match=r"(?s)primitive: sqrt.*test_finite.py:\d+ \(.*model\)"
    ):
        checked_grad(model, guide, 1.0)(params)


@pytest.mark.slow  # (the fast suite's 6-minute budget)
def test_clean_programs_unchanged_with_discrete_strategies_and_plates():
    x = jnp.array([0.3, -1.0, 2.0])

    def model(x):
        with numpyro.plate("d", 3):
            z = numpyro.sample("z", dist.Bernoulli(logits=jnp.zeros(3)))
            numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    def guide(x):
        logits = numpyro.param("l", jnp.zeros(3))  # logits at exactly 0
        with numpyro.plate("d", 3):
            numpyro.sample("z", dist.Bernoulli(logits=logits))

    params = {"l": jnp.zeros(3)}
    for strategy in ("reinforce", "enum", "mvd"):
        g = ppl.strategy(guide, {"z": strategy})
        f = jax.value_and_grad(lambda p, g=g: elbo.loss(KEY, p, model, g, x))
        expected = jax.jit(f)(params)
        got = ppl.check_finite(f)(params)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1]["l"], expected[1]["l"])


def test_svi_update_checked():
    svi = SVI(scale_model, normal_guide, optax.adam(0.1), loss=elbo)
    update = ppl.check_finite(lambda s: svi.update(s, 1.0))
    new_state, loss = update(svi.init(KEY, 1.0))
    assert np.isfinite(loss)
    with pytest.raises(ppl.NonFiniteError, match="site 's' \\(HalfNormal\\) in ppl.density"):
        bad = svi.optim.init({"m": jnp.array(-3.0), "sd": jnp.array(0.1)})  # s < 0 in q
        update(new_state._replace(optim_state=bad))
