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


Y8 = jnp.linspace(-1.0, 1.0, 8)


def _global_then_data(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("d", 8):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _local_latents(y):
    with numpyro.plate("d", 8):
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(u, 1.0), obs=y)


def _guide_mu_of_shape_3(y):
    numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([3]))


def _guide_plate_of_4(y):
    with numpyro.plate("d", 4):
        numpyro.sample("u", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "model, guide, message",
    [
        # the model's run breaks at 'y' (a (3,) mean in a plate of 8): the guide's 'mu' named
        (_global_then_data, _guide_mu_of_shape_3, r"at site 'mu': guide \(3,\)"),
        # the model's run succeeds; the observation check must not crash first, unnamed
        (_local_latents, _guide_plate_of_4, r"at site 'u': guide \(4,\).*model \(8,\)"),
    ],
    ids=["model_run_breaks", "plate_size"],
)
def test_guide_value_of_the_wrong_shape_is_named_not_a_broadcast_error(model, guide, message):
    """Before: NumPyro's or numpy's broadcasting error, naming no site ("Incompatible
    shapes for broadcasting: shapes=[(8,), (3,)]", "shape mismatch: objects cannot be
    broadcast ... (8,) and ... (4,)")."""
    with pytest.raises(ppl.ModelGuideMismatch, match=message):
        ppl.objectives.elbo().loss(KEY, {}, model, guide, Y8)


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
