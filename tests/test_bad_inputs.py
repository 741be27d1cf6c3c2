"""The catalogue of misuse: every case is a clear error naming what is wrong, raised
before any number is produced; none is a silent wrong answer."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed

import ppl
import ppl.dt as dt
from models.coin import DATA, model
from tests.reward import finite

KEY = jax.random.PRNGKey(0)
obj = ppl.objectives
MEANS, SCALES = jnp.array([[0.0], [2.0]]), jnp.array([[[1.0]], [[0.5]]])


def posterior(reward):
    return ppl.reward.posterior(finite.reference, reward, beta=0.7, response_ndim=0)


def guide(data):
    numpyro.sample("z", dist.Bernoulli(numpyro.param("p", 0.5)))


def site(d, grad):
    return lambda: numpyro.sample("z", d, infer={"grad": grad})


def estimate(fn):
    return lambda: ppl.expectation(lambda: jnp.sum(fn()))(KEY)


def elbo_loss(g, m=model, data=DATA, loss=None):
    return lambda: (loss or obj.elbo()).loss(KEY, {}, m, g, data)


def wrong_name_guide(data):
    numpyro.sample("zz", dist.Bernoulli(0.5))


def continuous_guide(data):
    numpyro.sample("z", dist.Normal(0.5, 1.0))


def plated_guide(data):
    with numpyro.plate("d", 4):
        numpyro.sample("z", dist.Bernoulli(0.5))


def loo_outside():
    return numpyro.sample("z", dist.Bernoulli(0.3), infer={"grad": ppl.reinforce("loo")})


def shared_running_baseline():
    b = ppl.running_baseline("b")
    x = numpyro.sample("x", dist.Bernoulli(0.3), infer={"grad": ppl.reinforce(b)})
    y = numpyro.sample("y", dist.Bernoulli(0.6), infer={"grad": ppl.reinforce(b)})
    return x + y


def running_in_particles():
    def one():
        b = ppl.running_baseline("b")
        return numpyro.sample("z", dist.Bernoulli(0.3), infer={"grad": ppl.reinforce(b)})

    return jnp.mean(ppl.particles(one, 3)())


def too_many_combinations():
    return sum(
        numpyro.sample(f"z{i}", dist.Bernoulli(0.5), infer={"grad": "enum"}) for i in range(17)
    )


CATALOGUE = {
    # strategies that cannot apply, named by site
    "enum on continuous": (
        estimate(site(dist.Normal(0, 1), "enum")),
        ppl.StrategyError,
        "site 'z': strategy 'enum' needs a distribution with finite",
    ),
    "reparam on Bernoulli": (
        estimate(site(dist.Bernoulli(0.3), "reparam")),
        ppl.StrategyError,
        "site 'z': strategy 'reparam' needs a distribution with rsample",
    ),
    "mvd on Gamma": (
        estimate(site(dist.Gamma(2.0), "mvd")),
        ppl.StrategyError,
        "site 'z': no measure-valued derivative for Gamma",
    ),
    "implicit on Normal": (
        estimate(site(dist.Normal(0, 1), "implicit")),
        ppl.StrategyError,
        "site 'z': strategy 'implicit' applies to Gamma",
    ),
    "unknown strategy name": (
        estimate(site(dist.Normal(0, 1), "pathwise")),
        ppl.StrategyError,
        "site 'z': unknown gradient strategy 'pathwise'",
    ),
    "strategy map names a missing site": (
        elbo_loss(ppl.strategy(guide, {"w": "enum"})),
        ppl.StrategyError,
        r"never samples: \['w'\]",
    ),
    "strategy map not a mapping": (
        lambda: ppl.strategy(guide, ["z"]),
        TypeError,
        "ppl.strategy needs a mapping",
    ),
    "bad baseline name": (
        lambda: ppl.reinforce(baseline="mean"),
        ValueError,
        "reinforce baseline must be 'none', 'loo' or a value",
    ),
    "learn without a value": (
        lambda: ppl.reinforce(baseline="loo", learn=True),
        ValueError,
        "needs a baseline value",
    ),
    "loo outside particles": (
        estimate(loo_outside),
        ppl.StrategyError,
        "site 'z': reinforce baseline 'loo' needs the site inside",
    ),
    "running baseline decay": (
        lambda: ppl.running_baseline("b", decay=1.5),
        ValueError,
        "decay must be in",
    ),
    "running baseline on two sites": (
        estimate(shared_running_baseline),
        ValueError,
        "running baseline 'b' serves two sites",
    ),
    "running baseline in particles": (
        estimate(running_in_particles),
        ppl.StrategyError,
        "site 'z': a running baseline needs the site outside",
    ),
    "joint enumeration too large": (
        estimate(too_many_combinations),
        ValueError,
        "needs 131072 combinations",
    ),
    # model / guide mismatches
    "guide misses a model latent": (
        elbo_loss(wrong_name_guide),
        ValueError,
        "latent site 'z' of the model has no value",
    ),
    "continuous guide, discrete model": (
        elbo_loss(continuous_guide),
        ValueError,
        r"site 'z': the guide samples it from Normal \(continuous\)",
    ),
    "guide plate the model lacks": (
        elbo_loss(plated_guide),
        ValueError,
        r"shapes disagree at site 'z': guide \(4,\)",
    ),
    "density values not a dict": (
        lambda: ppl.density(model, [1.0], DATA),
        TypeError,
        "values must be a dict",
    ),
    "program returns a vector": (
        lambda: ppl.expectation(lambda: jnp.ones(3))(KEY),
        ValueError,
        r"must return a scalar, got shape \(3,\)",
    ),
    "expectation of a non-callable": (
        lambda: ppl.expectation(3),
        TypeError,
        "needs a callable program",
    ),
    "simulate a non-callable": (
        lambda: seed(lambda: ppl.simulate(3), KEY)(),
        TypeError,
        "ppl.simulate needs a program",
    ),
    "particles of a non-callable": (
        lambda: ppl.particles(3, 2),
        TypeError,
        "ppl.particles needs a callable",
    ),
    "particles without a key": (
        lambda: ppl.particles(lambda: 0.0, 2)(),
        RuntimeError,
        "ppl.particles needs a random key",
    ),
    # objective arguments
    "elbo K = 0": (lambda: obj.elbo(0), ValueError, "elbo: num_particles must be a positive int"),
    "iwae K = 0": (lambda: obj.iwae(0), ValueError, "iwae: num_particles must be a positive int"),
    "iwae K not an int": (lambda: obj.iwae(2.5), ValueError, "got 2.5"),
    "vimco K = 1": (lambda: obj.vimco(1), ValueError, "vimco: num_particles must be an int >= 2"),
    "renyi alpha = 1": (lambda: obj.renyi(1.0, 3), ValueError, "alpha = 1 is the ELBO"),
    "cubo n <= 1": (lambda: obj.cubo(0.5, 3), ValueError, "cubo: n must be > 1"),
    "rws K negative": (
        lambda: obj.rws(-2),
        ValueError,
        "rws: num_particles must be a positive int",
    ),
    "tail_adaptive K = 1": (
        lambda: obj.tail_adaptive(1),
        ValueError,
        "num_particles must be an int >= 2",
    ),
    "iwhvi M = 0": (lambda: obj.iwhvi(["z"], guide, 0), ValueError, "iwhvi: num_samples must be"),
    "forward_kl pairs = 0": (
        lambda: obj.forward_kl(num_pairs=0),
        ValueError,
        "num_pairs must be a positive int",
    ),
    "num_estimates = 0": (
        lambda: ppl.Objective(lambda m, g: 0.0, num_estimates=0),
        ValueError,
        "num_estimates must be a positive int",
    ),
    "dreg with a discrete guide": (
        elbo_loss(guide, loss=obj.iwae(2, dreg=True)),
        ppl.StrategyError,
        r"site 'z': iwae\(dreg=True\) needs a reparam",
    ),
    "normalize K = 0": (
        lambda: ppl.normalize(model, guide, 0),
        ValueError,
        "num_particles must be a positive int",
    ),
    "marginal M < 0": (
        lambda: ppl.marginal(guide, ["z"], guide, -1),
        ValueError,
        "num_samples must be an int >= 0",
    ),
    # validation helpers
    "check_unbiased shapes": (
        lambda: ppl.validate.check_unbiased(lambda k: jnp.ones(3), jnp.ones(2), KEY, 10),
        ValueError,
        "exact has 2 entries, estimator 3",
    ),
    "check_unbiased one sample": (
        lambda: ppl.validate.check_unbiased(lambda k: jnp.ones(3), jnp.ones(3), KEY, 1),
        ValueError,
        "num_samples must be an int >= 2",
    ),
    # distribution transformers: invalid GMMs
    "GMM weights not normalized": (
        lambda: dt.GMM(jnp.log(jnp.array([0.5, 0.6])), MEANS, SCALES),
        ValueError,
        "weights are not normalized",
    ),
    "GMM NaN weights": (
        lambda: dt.GMM(jnp.array([jnp.nan, 0.0]), MEANS, SCALES),
        ValueError,
        "log_weights contain NaN",
    ),
    "GMM negative scale diagonal": (
        lambda: dt.GMM(jnp.log(jnp.array([0.5, 0.5])), MEANS, -SCALES),
        ValueError,
        "scale_tril must have a positive diagonal",
    ),
    "GMM components disagree": (
        lambda: dt.GMM(jnp.log(jnp.array([0.5, 0.5])), jnp.zeros((3, 1)), SCALES),
        ValueError,
        r"log_weights has shape \(2,\), expected \(3,\)",
    ),
    # reward posteriors and their objectives
    "reward of the wrong shape": (
        lambda: seed(posterior(lambda y, p: jnp.ones(7)), 0)(finite.PROMPTS),
        ValueError,
        r"reward returned shape \(7,\), expected \(2,\)",
    ),
    "NaN rewards": (
        lambda: seed(posterior(lambda y, p: jnp.full(y.shape, jnp.nan)), 0)(finite.PROMPTS),
        ValueError,
        "reward is NaN for 2 of 2 responses",
    ),
    "reward beta <= 0": (
        lambda: ppl.reward.posterior(finite.reference, finite.reward, beta=0.0),
        ValueError,
        "beta must be > 0",
    ),
    "unknown reward likelihood": (
        lambda: ppl.reward.posterior(finite.reference, finite.reward, likelihood="softmax"),
        ValueError,
        "unknown likelihood 'softmax'",
    ),
    "brain n = 0": (lambda: obj.brain(0), ValueError, "brain: num_samples must be a positive int"),
    "unknown f-divergence": (lambda: obj.fdiv("hellinger2"), ValueError, "unknown f 'hellinger2'"),
    # MCMC combinators
    "repeat n = 0": (
        lambda: ppl.mcmc.repeat(ppl.mcmc.mala(lambda x: -(x**2), 0.1), 0),
        ValueError,
        "repeat: n must be a positive int",
    ),
    "mixture probs mismatch": (
        lambda: ppl.mcmc.mixture([ppl.mcmc.mala(lambda x: -(x**2), 0.1)], jnp.array([0.5, 0.5])),
        ValueError,
        r"1 kernels but probs of shape \(2,\)",
    ),
    "checkpoint every = 0": (
        lambda: ppl.resumable_run(None, KEY, 10, checkpoint="unused", every=0),
        ValueError,
        "every must be a positive int",
    ),
}


def test_catalogue_is_large():
    assert len(CATALOGUE) >= 25


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_bad_input_is_a_clear_error(case):
    thunk, exc, message = CATALOGUE[case]
    with pytest.raises(exc, match=message):
        thunk()
