"""Bad input gets a clear error naming the site and what is wrong, at trace time."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

KEY = jax.random.PRNGKey(0)


def _site(d, grad):
    def f(x):
        return numpyro.sample("z", d, infer={"grad": grad}) * x

    return f


@pytest.mark.parametrize(
    "d, grad, message",
    [
        (
            dist.Normal(0.0, 1.0),
            "enum",
            "site 'z': strategy 'enum' needs a distribution with finite",
        ),
        (
            dist.Bernoulli(0.3),
            "reparam",
            "site 'z': strategy 'reparam' needs a distribution with rsample",
        ),
        (dist.Gamma(2.0), "mvd", "site 'z': no measure-valued derivative for Gamma"),
        (dist.Normal(0.0, 1.0), "implicit", "site 'z': strategy 'implicit' applies to Gamma"),
        (dist.Normal(0.0, 1.0), "pathwise", "site 'z': unknown gradient strategy 'pathwise'"),
        (
            dist.Dirichlet(jnp.ones(3)),
            "mvd",
            "site 'z': strategy 'mvd' needs a distribution with scalar",
        ),
    ],
)
def test_strategy_that_cannot_apply(d, grad, message):
    E = ppl.expectation(lambda x: jnp.sum(_site(d, grad)(x)))
    with pytest.raises(ppl.StrategyError, match=message.replace("(", r"\(")):
        E(KEY, 1.0)
    # raised while tracing: jit does not hide it
    with pytest.raises(ppl.StrategyError, match="site 'z'"):
        jax.jit(lambda x: E(KEY, x))(1.0)


def test_strategy_handler_unknown_site():
    def f():
        return numpyro.sample("z", dist.Bernoulli(0.5))

    E = ppl.expectation(ppl.strategy(f, {"w": "enum"}))
    with pytest.raises(ppl.StrategyError, match=r"never samples: \['w'\]"):
        E(KEY)


def test_strategy_handler_unknown_strategy():
    with pytest.raises(ppl.StrategyError, match="site 'z': unknown gradient strategy 'exact'"):
        ppl.strategy(lambda: None, {"z": "exact"})


def test_bad_baseline():
    with pytest.raises(ValueError, match="reinforce baseline must be 'none', 'loo' or a value"):
        ppl.reinforce(baseline="mean")


def test_loo_outside_particles():
    def f():
        return numpyro.sample("z", dist.Bernoulli(0.5), infer={"grad": ppl.reinforce("loo")})

    with pytest.raises(
        ppl.StrategyError, match="site 'z': reinforce baseline 'loo' needs the site"
    ):
        ppl.expectation(f)(KEY)


def test_non_scalar_program():
    def f():
        with numpyro.plate("n", 3):
            return numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(3,\)"):
        ppl.expectation(f)(KEY)


@pytest.mark.parametrize("k", [0, -2, 1.5])
def test_bad_particle_count(k):
    with pytest.raises(ValueError, match="num_particles must be a positive int"):
        ppl.particles(lambda: 0.0, k)
    with pytest.raises(ValueError, match="num_particles must be a positive int"):
        ppl.objectives.elbo(num_particles=k)


def _model():
    numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", 2):
        numpyro.sample("b", dist.Normal(0.0, 1.0))


def test_density_missing_latent():
    with pytest.raises(ValueError, match="latent site 'b' of the model has no value"):
        ppl.density(_model, {"a": 0.0})


def test_density_shape_mismatch():
    with pytest.raises(ValueError, match=r"site 'b': value of shape \(3,\) does not fit"):
        ppl.density(_model, {"a": 0.0, "b": jnp.zeros(3)})


def test_guide_model_shape_mismatch_in_svi_loss():
    def guide():
        numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", 3):
            numpyro.sample("b", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"site 'b': guide \(3,\)"):
        ppl.objectives.elbo().loss(KEY, {}, _model, guide)


def test_density_values_must_be_dict():
    with pytest.raises(TypeError, match="values must be a dict"):
        ppl.density(_model, [0.0])


def test_particles_outside_a_seed():
    with pytest.raises(RuntimeError, match="ppl.particles needs a random key"):
        ppl.particles(lambda: numpyro.sample("z", dist.Normal(0.0, 1.0)), 2)()


def test_too_many_joint_combinations():
    def f():
        total = 0.0
        for i in range(17):
            total = total + numpyro.sample(f"z{i}", dist.Bernoulli(0.5), infer={"grad": "enum"})
        return total

    with pytest.raises(ValueError, match="needs 131072 combinations"):
        ppl.expectation(f)(KEY)
