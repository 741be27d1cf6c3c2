"""ppl objectives inside NumPyro's SVI: loss contract, run, autoguides, Predictive, jit/vmap."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import (
    SVI,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from numpyro.infer.autoguide import AutoDelta, AutoNormal

import ppl
from models.coin import DATA
from models.coin import model as coin_model
from ppl.validate import estimator_stats

KEY = jax.random.PRNGKey(0)


def coin_guide(data):
    p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
    numpyro.sample("z", dist.Bernoulli(p))


@ppl.objective
def my_elbo(model, guide, *args, **kwargs):
    q = ppl.simulate(guide, *args, **kwargs)
    return ppl.density(model, q.values, *args, **kwargs) - q.log_prob


def exact_coin_posterior():
    l1, l0 = 0.8**3 * 0.2, 0.2**3 * 0.8
    return l1 / (l1 + l0), -np.log(0.5 * l1 + 0.5 * l0)


def test_loss_contract():
    loss = ppl.objectives.elbo()
    assert loss.can_infer_discrete
    params = {"p": jnp.array(0.3)}
    value = loss.loss(KEY, params, coin_model, coin_guide, DATA)
    out = loss.loss_with_mutable_state(KEY, params, coin_model, coin_guide, DATA)
    assert out["mutable_state"] is None
    assert jnp.allclose(out["loss"], value)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (ppl.objectives.elbo, Trace_ELBO),
        (ppl.objectives.elbo, TraceMeanField_ELBO),
        (ppl.objectives.elbo, TraceGraph_ELBO),
        (ppl.objectives.renyi, RenyiELBO),
    ],
)
def test_defaults_are_numpyros(ours, theirs):
    """``loss=RenyiELBO()`` swapped for ``renyi()`` is the same bound: the arguments the two
    share default alike (before: ``renyi()`` was alpha 0.5 with 5 particles, NumPyro's
    ``RenyiELBO()`` alpha 0 with 2)."""
    mine = inspect.signature(ours).parameters
    shared = [p for p in inspect.signature(theirs).parameters.values() if p.name in mine]
    assert shared, (ours, theirs)
    for p in shared:
        assert mine[p.name].default == p.default, (p.name, mine[p.name].default, p.default)
    made = ours()
    for p in shared:
        if p.name in ("alpha", "num_particles"):
            assert f"{p.name}={p.default}" in made.name, made.name


def test_user_objective_reaches_exact_posterior():
    """Default strategy for a Bernoulli guide site is reinforce; enum and mvd by handler."""
    p_exact, nll_exact = exact_coin_posterior()
    guide = ppl.strategy(coin_guide, {"z": "enum"})
    svi = SVI(coin_model, guide, optax.adam(5e-2), loss=my_elbo)
    result = svi.run(KEY, 800, DATA, progress_bar=False)
    # enum: exact gradient, so Adam converges to the exact posterior
    assert abs(float(result.params["p"]) - p_exact) < 2e-3
    # at the optimum q = posterior, the ELBO equals log p(x) exactly
    assert abs(float(result.losses[-1]) - nll_exact) < 1e-3
    # mvd: the log q(z) term adds zero-mean noise; Adam hovers near the optimum
    guide = ppl.strategy(coin_guide, {"z": "mvd"})
    svi = SVI(coin_model, guide, optax.adam(1e-2), loss=my_elbo)
    result = svi.run(KEY, 1500, DATA, progress_bar=False)
    assert abs(float(result.params["p"]) - p_exact) < 0.03
    svi = SVI(coin_model, coin_guide, optax.adam(1e-2), loss=ppl.objectives.elbo(4, loo=True))
    result = svi.run(KEY, 1500, DATA, progress_bar=False)
    assert abs(float(result.params["p"]) - p_exact) < 0.03


def normal_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_autoguide_elbo_matches_trace_elbo_in_expectation():
    y = jax.random.normal(KEY, (30,)) * 2.0 + 3.0
    guide = AutoNormal(normal_model)
    svi = SVI(normal_model, guide, optax.adam(1e-2), loss=Trace_ELBO())
    state = svi.init(KEY, y)
    params = svi.get_params(state)
    ours = ppl.objectives.elbo()
    mean_o, se_o, _ = estimator_stats(
        lambda k: ours.loss(k, params, normal_model, guide, y), KEY, 2000
    )
    mean_n, se_n, _ = estimator_stats(
        lambda k: Trace_ELBO().loss(k, params, normal_model, guide, y), jax.random.PRNGKey(1), 2000
    )
    assert abs(mean_o[0] - mean_n[0]) < 4 * np.hypot(se_o[0], se_n[0])
    g_o = estimator_stats(
        lambda k: jax.grad(lambda p: ours.loss(k, p, normal_model, guide, y))(params), KEY, 2000
    )
    g_n = estimator_stats(
        lambda k: jax.grad(lambda p: Trace_ELBO().loss(k, p, normal_model, guide, y))(params),
        jax.random.PRNGKey(1),
        2000,
    )
    assert np.all(np.abs(g_o[0] - g_n[0]) < 4 * np.hypot(g_o[1], g_n[1]))


def test_svi_run_stable_update_and_predictive():
    y = jax.random.normal(KEY, (50,)) * 2.0 + 3.0
    guide = AutoNormal(normal_model)
    svi = SVI(normal_model, guide, optax.adam(5e-2), loss=ppl.objectives.elbo())
    result = svi.run(KEY, 1500, y, progress_bar=False, stable_update=True)
    assert np.isfinite(result.losses).all()
    post = Predictive(guide, params=result.params, num_samples=2000)(KEY, y)
    # the draws come from the fitted guide: their mean is its loc within 4 Monte Carlo SE
    # (SE = sd / sqrt(2000), about 0.007); the fitted loc is the posterior mean ȳ (the
    # N(0, 10) prior shrinks it by < 0.003) up to Adam's jitter, steps of about lr = 0.05
    # (measured 0.052): within 2 lr. Together 0.13, inside the former bare 0.15.
    loc, draws = float(result.params["mu_auto_loc"]), np.asarray(post["mu"])
    assert abs(draws.mean() - loc) < 4 * draws.std() / np.sqrt(draws.size), (draws.mean(), loc)
    assert abs(loc - float(y.mean())) < 2 * 5e-2, (loc, float(y.mean()))
    pred = Predictive(normal_model, guide=guide, params=result.params, num_samples=200)(KEY, y)
    assert pred["y"].shape == (200, 50)


def test_autodelta_map():
    y = jnp.array([1.0, 2.0, 3.0])
    svi = SVI(normal_model, AutoDelta(normal_model), optax.adam(5e-2), loss=ppl.objectives.elbo())
    result = svi.run(KEY, 2000, y, progress_bar=False)
    # MAP of mu with a N(0, 10) prior is close to the sample mean
    assert abs(float(result.params["mu_auto_loc"]) - 2.0) < 0.05


def test_subsampled_plate_uses_guide_minibatch_and_scale():
    y = jnp.arange(10.0)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", 10, subsample_size=4) as idx:
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    def guide(y):
        numpyro.sample("mu", dist.Delta(numpyro.param("m", 0.5)))
        with numpyro.plate("n", 10, subsample_size=4):
            pass

    def fixed(k):
        return ppl.objectives.elbo().loss(k, {"m": jnp.array(0.5)}, model, guide, y)

    mean, se, _ = estimator_stats(fixed, KEY, 3000)
    exact = -(dist.Normal(0.0, 1.0).log_prob(0.5) + dist.Normal(0.5, 1.0).log_prob(y).sum())
    assert abs(mean[0] - float(exact)) < 4 * se[0]


def _global_mean_subsampled(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", y.shape[0], subsample_size=2) as idx:
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def _global_mean_guide(y):
    numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.2), 0.5))


@pytest.mark.parametrize(
    "name", ["iwae", "renyi", "vimco", "cubo", "rws", "tail_adaptive", "diwhvi", "msc"]
)
def test_importance_weighted_objectives_refuse_a_subsampled_plate(name):
    """A minibatch's scaled-up log weight is unbiased for the full one, but its log-mean-exp
    is not the bound: on this model (true -log p(y) = 9.661) the subsampled iwae(8) loss
    averaged 7.97 over 20000 keys, below -log p(y), against 9.68 on the full data. NumPyro's
    RenyiELBO refuses the program (plate "n" does not enclose "mu"); so does every ppl
    objective nonlinear in the log weight, naming the plate. Those taken per element of the
    plates enclosing every site ("independent") allow subsampling there
    (tests/objectives/test_renyi_plates.py); the ELBO, linear in the log weight, keeps
    subsampling (its test above)."""
    factories = {
        "iwae": lambda: ppl.objectives.iwae(4),
        "renyi": lambda: ppl.objectives.renyi(0.5, 4),
        "vimco": lambda: ppl.objectives.vimco(4),
        "cubo": lambda: ppl.objectives.cubo(2.0, 4),
        "rws": lambda: ppl.objectives.rws(4),
        "tail_adaptive": lambda: ppl.objectives.tail_adaptive(4),
        "diwhvi": lambda: ppl.objectives.diwhvi(["mu"], lambda *a: None, 2, 2),
        "msc": lambda: ppl.objectives.msc(4),
    }
    loss = factories[name]()
    assert loss.subsampling is (False if name in ("diwhvi", "msc") else "independent")
    if name in ("diwhvi", "msc"):  # their guides take other forms: the flag is the contract
        return
    y = jnp.array([0.3, 1.2, -0.4, 2.0, 0.7, -1.1])
    params = {"m": jnp.array(0.2)}
    with pytest.raises(ValueError, match="plate 'n' is subsampled \\(2 of 6\\)"):
        loss.loss(KEY, params, _global_mean_subsampled, _global_mean_guide, y)
    assert ppl.objectives.elbo().subsampling is True
    assert ppl.objectives.cubo(2.0, 4, exponentiated=True).subsampling is False
    assert ppl.objectives.rws(4, rejuvenate=lambda ld: None).subsampling is False


def test_mutable_state_returned():
    def model():
        numpyro.primitives.mutable("count", jnp.zeros(()))
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))

    svi = SVI(model, guide, optax.adam(1e-2), loss=ppl.objectives.elbo())
    state = svi.init(KEY)
    assert state.mutable_state is not None and "count" in state.mutable_state
    state, loss = svi.update(state)
    assert jnp.isfinite(loss)


def test_jit_and_vmap_around_the_estimate():
    def f(p):
        z = numpyro.sample("z", dist.Bernoulli(p), infer={"grad": "mvd"})
        w = numpyro.sample("w", dist.Normal(p, 1.0))
        return (z + w) ** 2

    E = ppl.expectation(f)
    keys = jax.random.split(KEY, 2)
    eager = jnp.stack([E.value_and_grad(k, 0.3)[1] for k in keys])
    batched = jax.jit(jax.vmap(lambda k: E.grad(k, 0.3)))(keys)
    assert np.allclose(eager, batched, rtol=1e-5, atol=1e-6)
    ps = jnp.array([0.2, 0.5])
    per_p = jax.vmap(lambda p: E.grad(KEY, p))(ps)
    one_p = jax.jit(lambda p: E.grad(KEY, p))  # compiled once: eager is covered above
    assert np.allclose(per_p, jnp.stack([one_p(p) for p in ps]), rtol=1e-5, atol=1e-6)
