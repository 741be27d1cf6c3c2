"""Model-side enumeration on the site kinds and handlers users write beside ``Categorical``
and ``Bernoulli``: ``Binomial`` and ``DiscreteUniform`` sites (a support that is not
0..S-1: ppl scores its values; NumPyro's ``enum`` gives the indices, and
``TraceEnum_ELBO``'s number is wrong there), plates with explicit
``dim=``, ``handlers.scale`` around the whole model, ``mask`` hiding elements, a
``factor`` or a ``deterministic`` reading an enumerated value, and a discrete site whose
distribution is indexed by another.

Each model is param-only (the ELBO is the log marginal likelihood), and its value and
its gradient with respect to the unconstrained params (what ``SVI`` follows) must equal,
float64, rtol 1e-6, both NumPyro's ``TraceEnum_ELBO`` and brute force: ``logsumexp``
of NumPyro's ``log_density`` over every joint assignment of the enumerated sites
(``tests/enum/reference.py``; nothing of ppl or funsor in it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro import handlers
from numpyro.contrib.funsor import markov
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import MCMC, TraceEnum_ELBO

import ppl

_spec = importlib.util.spec_from_file_location(
    "enum_reference", Path(__file__).with_name("reference.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

E = {"enumerate": "parallel"}
X = np.array([-2.1, -1.9, 0.1, 2.0, 2.2, 1.8])


def binomial(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    loc = numpyro.param("loc", 0.8)
    with numpyro.plate("n", len(x)):
        k = numpyro.sample("k", dist.Binomial(3, p), infer=E)
        numpyro.sample("x", dist.Normal(loc * (k - 1.5), 1.0), obs=x)


def discrete_uniform(x):
    loc = numpyro.param("loc", 0.8)
    with numpyro.plate("n", len(x)):
        k = numpyro.sample("k", dist.DiscreteUniform(-2, 2), infer=E)
        numpyro.sample("x", dist.Normal(k * loc, 1.0), obs=x)


def discrete_uniform_from_zero(x):  # support 0..4: the indices are the values
    loc = numpyro.param("loc", 0.8)
    with numpyro.plate("n", len(x)):
        k = numpyro.sample("k", dist.DiscreteUniform(0, 4), infer=E)
        numpyro.sample("x", dist.Normal((k - 2) * loc, 1.0), obs=x)


def discrete_uniform_markov(x):
    loc = numpyro.param("loc", 0.8)
    k = 0
    for t in markov(range(len(x))):
        k = numpyro.sample(f"k_{t}", dist.DiscreteUniform(-2, 2), infer=E)
        numpyro.sample(f"x_{t}", dist.Normal(k * loc + 0.1 * t, 1.0), obs=x[t])


def explicit_plate_dims(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    loc = numpyro.param("loc", 0.8)
    with numpyro.plate("rows", 2, dim=-2), numpyro.plate("cols", 3, dim=-1):
        z = numpyro.sample("z", dist.Bernoulli(p), infer=E)
        numpyro.sample("x", dist.Normal(2.0 * z - loc, 1.0), obs=x.reshape(2, 3))


def _two_means(x, p, loc):
    with numpyro.plate("n", len(x)):
        z = numpyro.sample("z", dist.Bernoulli(p), infer=E)
        numpyro.sample("x", dist.Normal(jnp.where(z == 1, loc, -loc), 1.0), obs=x)


def scaled_model(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    loc = numpyro.param("loc", 0.8)
    with handlers.scale(scale=0.1):
        _two_means(x, p, loc)


def masked(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    loc = numpyro.param("loc", 0.8)
    with handlers.mask(mask=x > -2.0):  # hides the first point: z_0 and x_0
        _two_means(x, p, loc)


def factor_on_enumerated(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    loc = numpyro.param("loc", 0.8)
    with numpyro.plate("n", len(x)):
        z = numpyro.sample("z", dist.Bernoulli(p), infer=E)
        numpyro.factor("fit", -0.5 * (x - jnp.where(z == 1, loc, -loc)) ** 2)


def deterministic_of_enumerated(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    loc = numpyro.param("loc", 0.8)
    with numpyro.plate("n", len(x)):
        z = numpyro.sample("z", dist.Bernoulli(p), infer=E)
        mean = numpyro.deterministic("mean", jnp.where(z == 1, loc, -loc))
        numpyro.sample("x", dist.Normal(mean, 1.0), obs=x)


def indexed_pair(x):
    p = numpyro.param("p", 0.35, constraint=constraints.unit_interval)
    table = numpyro.param("table", jnp.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]),
                          constraint=constraints.simplex)  # fmt: skip
    with numpyro.plate("n", len(x)):
        a = numpyro.sample("a", dist.Bernoulli(p), infer=E)
        b = numpyro.sample("b", dist.Categorical(table[a]), infer=E)
        numpyro.sample("x", dist.Normal(b - 1.0 + a, 1.0), obs=x)


def global_choice(x):
    w = numpyro.param("w", jnp.array([0.2, 0.5, 0.3]), constraint=constraints.simplex)
    scale = numpyro.param("scale", 1.3, constraint=constraints.positive)
    c = numpyro.sample("c", dist.Categorical(w), infer=E)
    with numpyro.plate("n", len(x)):
        numpyro.sample("x", dist.Normal(jnp.array([-2.0, 0.0, 2.0])[c], scale), obs=x)


class Case(NamedTuple):
    name: str
    model: object
    scale: float = 1.0  # brute force scores the unscaled model; the marginal is scaled
    hidden: int = 0  # elements a mask hides: brute force counts each one's S values
    # NumPyro's enum gives every enumerated site the indices 0..S-1 as its value: right
    # only where that is the support, so TraceEnum_ELBO scores DiscreteUniform(-2, 2) at 0..4
    trace_enum_indices: bool = False


CASES = [
    Case("binomial", binomial),
    Case("discrete_uniform", discrete_uniform, trace_enum_indices=True),
    Case("discrete_uniform_from_zero", discrete_uniform_from_zero),
    Case("discrete_uniform_markov", discrete_uniform_markov, trace_enum_indices=True),
    Case("explicit_plate_dims", explicit_plate_dims),
    Case("scaled_model", scaled_model, scale=0.1),
    Case("masked", masked, hidden=1),
    Case("factor_on_enumerated", factor_on_enumerated),
    Case("deterministic_of_enumerated", deterministic_of_enumerated),
    Case("indexed_pair", indexed_pair),
    Case("global_choice", global_choice),
]


@pytest.mark.parametrize(
    "kernel",
    [ppl.mcmc.NUTS, pytest.param(ppl.mcmc.HMC, marks=pytest.mark.slow)],
    ids=["NUTS", "HMC"],
)
def test_numpyro_enumerated_potential_is_refused_where_it_would_score_indices(kernel):
    """ppl's HMC / NUTS sample NumPyro's enumerated log density, which scores the indices
    0..S-1: a DiscreteUniform(-2, 2) site marked for enumeration is refused by name (0..4
    runs: its indices are its values)."""

    def model(x, low):
        loc = numpyro.sample("loc", dist.Normal(0.0, 2.0))
        with numpyro.plate("n", len(x)):
            k = numpyro.sample("k", dist.DiscreteUniform(low, low + 4), infer=E)
            numpyro.sample("x", dist.Normal((k - low - 2) * loc, 1.0), obs=x)

    run = lambda low: MCMC(kernel(model), num_warmup=5, num_samples=5, progress_bar=False).run(
        jax.random.PRNGKey(0), jnp.asarray(X), low
    )
    with pytest.raises(ppl.EnumerationError, match="site 'k'.*not 0..4"):
        run(-2)
    run(0)


def _no_guide(x):
    pass


def _params(model, x):
    """Unconstrained params moved off their initial values, and their transforms."""
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(x)
    out, transforms = {}, {}
    for i, (name, site) in enumerate(sorted((n, s) for n, s in tr.items() if s["type"] == "param")):
        t = biject_to(site["kwargs"].get("constraint", constraints.real))
        u = t.inv(site["value"])
        out[name] = u + 0.3 * jax.random.normal(jax.random.PRNGKey(7 + i), jnp.shape(u))
        transforms[name] = t
    return out, transforms


FAST = {"discrete_uniform", "discrete_uniform_from_zero", "discrete_uniform_markov", "masked"}
PARAMS = [c if c.name in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES]


@pytest.mark.parametrize("case", PARAMS, ids=[c.name for c in CASES])
def test_value_and_gradient_equal_trace_enum_and_brute_force(case):
    with enable_x64():
        x = jnp.asarray(X)
        unconstrained, transforms = _params(case.model, x)
        constrain = lambda u: {k: transforms[k](v) for k, v in u.items()}
        key = jax.random.PRNGKey(0)
        plain = case.model
        if case.scale != 1.0:
            plain = handlers.scale(case.model, 1.0 / case.scale)
        sites = ref.enumerated_shapes(
            handlers.substitute(plain, data=constrain(unconstrained)), {}, (x,)
        )
        states = {name: len(support) for name, _, support in sites}

        def brute(u):
            model = handlers.substitute(plain, data=constrain(u))
            log_p = ref.brute_force_log_joint(model, {}, (x,), sites)
            # a hidden element's S values each score log 1 here; the ELBO weighs them 1/S
            log_p = log_p - case.hidden * np.log(max(states.values()))
            return -case.scale * log_p

        def loss_of(objective):
            return lambda u: objective.loss(key, constrain(u), case.model, _no_guide, x)

        losses = {
            "ppl": loss_of(ppl.objectives.elbo()),
            "TraceEnum_ELBO": loss_of(TraceEnum_ELBO()),
            "brute force": brute,
        }
        results = {}
        for name, f in losses.items():
            try:
                results[name] = jax.jit(jax.value_and_grad(f))(unconstrained)
            except TypeError:  # TraceEnum_ELBO on the markov chain of DiscreteUniform sites
                assert name == "TraceEnum_ELBO" and case.trace_enum_indices, name
    value, grad = results["ppl"]
    assert np.isfinite(float(value))
    others = ("TraceEnum_ELBO", "brute force")
    if case.trace_enum_indices:  # ppl scores the support's values; TraceEnum the indices
        if "TraceEnum_ELBO" in results:
            assert abs(float(results["TraceEnum_ELBO"][0]) - float(value)) > 1.0
        others = ("brute force",)
    for other in others:
        v, g = results[other]
        np.testing.assert_allclose(float(value), float(v), rtol=1e-6, err_msg=other)
        for name in grad:
            np.testing.assert_allclose(
                np.asarray(grad[name]), np.asarray(g[name]), rtol=1e-6, atol=1e-9,
                err_msg=f"{other}: d/d{name}",
            )  # fmt: skip
