"""Discrete-latent NumPyro models written the NumPyro way: model-side enumeration.

Each entry of :data:`ZOO` is a small model whose discrete sites are marked for
enumeration (``config_enumerate`` or ``infer={"enumerate": "parallel"}``) and absent
from the guide, with its data. They cover the structures of ``TraceEnum_ELBO``: one
site, several in a plate, nested plates, a global site with plate-local children, two
plates coupled through a global site, Markov chains (``markov`` loops and ``scan``, first
and second order, factorial), enumerated sites with continuous parents, ``mask`` and
``scale``; and, in :data:`STATISTICAL_ZOO`, a subsampled plate and stochastic guides.
Shared by the tests, the benchmarks and tutorial 07.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.contrib.funsor import config_enumerate, markov

E = {"enumerate": "parallel"}  # copied per site: NumPyro's enumeration writes into it


class Case(NamedTuple):
    name: str
    model: object
    args: tuple
    markov: bool = False  # a Markov chain (brute force only on short ones)
    scan: bool = False  # uses numpyro.contrib.control_flow.scan
    guide: str = "AutoDelta"  # the AutoGuide (numpyro.infer.autoguide) over continuous latents


def _simplex(name, shape):
    return numpyro.param(name, jnp.ones(shape) / shape[-1], constraint=dist.constraints.simplex)


# --- single sites and plates ------------------------------------------------------------
def single(x):
    probs = _simplex("probs", (3,))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    z = numpyro.sample("z", dist.Categorical(probs), infer={**E})
    numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def bernoulli_logits(x):
    logit = numpyro.param("logit", 0.0)  # exactly zero: the gradient edge case
    z = numpyro.sample("z", dist.Bernoulli(logits=logit), infer={**E})
    numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)


def continuous_parent(x):
    """An enumerated site whose parent is a continuous latent sampled by the guide."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(logits=mu), infer={**E})
        numpyro.sample("x", dist.Normal(jnp.where(z == 1, mu, -mu), 1.0), obs=x)


@config_enumerate
def mixture(x):
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(w))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def two_in_plate(x):
    p = numpyro.param("p", jnp.array([0.3, 0.6]), constraint=dist.constraints.unit_interval)
    shift = numpyro.sample("shift", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        a = numpyro.sample("a", dist.Bernoulli(p[0]), infer={**E})
        b = numpyro.sample("b", dist.Bernoulli(p[1]), infer={**E})
        numpyro.sample("x", dist.Normal(shift + a - 2.0 * b, 1.0), obs=x)


def chain_in_plate(x):
    trans = _simplex("trans", (2, 3))
    with numpyro.plate("data", x.shape[0]):
        a = numpyro.sample("a", dist.Bernoulli(0.4), infer={**E})
        b = numpyro.sample("b", dist.Categorical(trans[a]), infer={**E})
        numpyro.sample("x", dist.Normal(b.astype(jnp.float32), 0.5), obs=x)


def nested_plates(x):  # x: (3, 2): outer plate of 2 (dim -1), inner plate of 3 (dim -2)
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    with numpyro.plate("outer", x.shape[1], dim=-1):
        with numpyro.plate("inner", x.shape[0], dim=-2):
            z = numpyro.sample("z", dist.Bernoulli(p), infer={**E})
            numpyro.sample("x", dist.Normal(z * 2.0, 1.0), obs=x)


def nested_dependent(x):  # z per outer element, w per (inner, outer) element depending on z
    q = numpyro.param("q", jnp.array([0.2, 0.7]), constraint=dist.constraints.unit_interval)
    with numpyro.plate("outer", x.shape[1], dim=-1):
        z = numpyro.sample("z", dist.Bernoulli(0.5), infer={**E})
        with numpyro.plate("inner", x.shape[0], dim=-2):
            w = numpyro.sample("w", dist.Bernoulli(q[z]), infer={**E})
            numpyro.sample("x", dist.Normal(w + z, 1.0), obs=x)


def global_local(x):
    """A global discrete site with plate-local continuous-observation children."""
    mus = numpyro.sample("mus", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    g = numpyro.sample("g", dist.Bernoulli(0.3), infer={**E})
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mus[g], 1.0), obs=x)


def global_local_discrete(x):
    """A global discrete site with plate-local discrete children."""
    trans = _simplex("trans", (2, 2))
    g = numpyro.sample("g", dist.Bernoulli(0.5), infer={**E})
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(trans[g]), infer={**E})
        numpyro.sample("x", dist.Normal(z * 2.0 - 1.0, 1.0), obs=x)


def two_plates(x, y):
    """Plate-local discrete sites in two different plates, coupled through a global one."""
    pa = _simplex("pa", (2, 2))
    pb = _simplex("pb", (2, 3))
    g = numpyro.sample("g", dist.Bernoulli(0.5), infer={**E})
    with numpyro.plate("A", x.shape[0]):
        a = numpyro.sample("a", dist.Categorical(pa[g]), infer={**E})
        numpyro.sample("x", dist.Normal(a * 1.0, 1.0), obs=x)
    with numpyro.plate("B", y.shape[0]):
        b = numpyro.sample("b", dist.Categorical(pb[g]), infer={**E})
        numpyro.sample("y", dist.Normal(b - 1.0, 1.0), obs=y)


def dawid_skene(labels):  # labels: (items, annotators) ints in {0, 1, 2}
    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(3)))
    conf = numpyro.param(
        "confusion", jnp.full((labels.shape[1], 3, 3), 1 / 3), constraint=dist.constraints.simplex
    )
    with numpyro.plate("items", labels.shape[0], dim=-2):
        c = numpyro.sample("c", dist.Categorical(pi), infer={**E})
        with numpyro.plate("annotators", labels.shape[1], dim=-1):
            numpyro.sample("y", dist.Categorical(conf[jnp.arange(labels.shape[1]), c]), obs=labels)


def change_point(counts):
    rates = numpyro.sample("rates", dist.Gamma(2.0, 0.5).expand([2]).to_event(1))
    tau = numpyro.sample("tau", dist.Categorical(logits=jnp.zeros(counts.shape[0])), infer={**E})
    t = jnp.arange(counts.shape[0])
    with numpyro.plate("time", counts.shape[0]):
        numpyro.sample("c", dist.Poisson(jnp.where(t < tau, rates[0], rates[1])), obs=counts)


def binomial_site(x):
    p = numpyro.param("p", 0.4, constraint=dist.constraints.unit_interval)
    with numpyro.plate("data", x.shape[0]):
        k = numpyro.sample("k", dist.Binomial(3, p), infer={**E})
        numpyro.sample("x", dist.Normal(k * 1.0, 0.7), obs=x)


def masked(x, mask):
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(0.5), infer={**E})
        with numpyro.handlers.mask(mask=mask):
            numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


SUBSAMPLE = 8


@config_enumerate
def mixture_subsampled(x):
    """:func:`mixture` whose data plate draws a minibatch of ``SUBSAMPLE`` points."""
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=SUBSAMPLE) as idx:
        z = numpyro.sample("z", dist.Categorical(w))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x[idx])


def scaled(x):
    with numpyro.handlers.scale(scale=0.5):
        mixture(x)


# --- Markov chains ----------------------------------------------------------------------
def hmm_markov(y):
    trans = numpyro.sample("trans", dist.Dirichlet(jnp.ones((3, 3))).to_event(1))
    locs = numpyro.sample("locs", dist.Normal(jnp.arange(3.0), 1.0).to_event(1))
    x = 0
    for t in markov(range(y.shape[0])):
        x = numpyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={**E})
        numpyro.sample(f"y_{t}", dist.Normal(locs[x], 0.5), obs=y[t])


def hmm_scan(y):
    trans = numpyro.sample("trans", dist.Dirichlet(jnp.ones((3, 3))).to_event(1))
    locs = numpyro.sample("locs", dist.Normal(jnp.arange(3.0), 1.0).to_event(1))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={**E})
        numpyro.sample("y", dist.Normal(locs[x], 0.5), obs=y_t)
        return x, None

    scan(step, 0, y)


def hmm2_markov(y):
    """Second-order chain: x_t depends on x_(t-1) and x_(t-2)."""
    trans = _simplex("trans2", (3, 3, 3))
    x_prev, x = 0, 0
    for t in markov(range(y.shape[0]), history=2):
        x_prev, x = x, numpyro.sample(f"x_{t}", dist.Categorical(trans[x_prev, x]), infer={**E})
        numpyro.sample(f"y_{t}", dist.Normal(x * 1.0, 0.5), obs=y[t])


def hmm2_scan(y):
    trans = _simplex("trans2", (3, 3, 3))

    def step(carry, y_t):
        x_prev, x = carry
        x_new = numpyro.sample("x", dist.Categorical(trans[x_prev, x]), infer={**E})
        numpyro.sample("y", dist.Normal(x_new * 1.0, 0.5), obs=y_t)
        return (x, x_new), None

    scan(step, (0, 0), y, history=2)


def factorial_hmm(y):
    ta = _simplex("ta", (2, 2))
    tb = _simplex("tb", (2, 2))
    a = b = 0
    for t in markov(range(y.shape[0])):
        a = numpyro.sample(f"a_{t}", dist.Categorical(ta[a]), infer={**E})
        b = numpyro.sample(f"b_{t}", dist.Categorical(tb[b]), infer={**E})
        numpyro.sample(f"y_{t}", dist.Normal(a + 2.0 * b, 0.5), obs=y[t])


def hmm_sequences(y):  # y: (T, sequences): independent chains in a plate
    trans = _simplex("trans", (2, 2))
    with numpyro.plate("seq", y.shape[1], dim=-1):
        x = 0
        for t in markov(range(y.shape[0])):
            x = numpyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={**E})
            numpyro.sample(f"y_{t}", dist.Normal(x * 2.0, 0.7), obs=y[t])


def _series(n, seed=0):
    return jnp.sin(jnp.arange(n) * 0.7 + seed) * 1.3 + 1.0


X5 = jnp.array([-1.9, 0.2, 2.1, 1.7, -0.4])
X3 = jnp.array([-1.2, 0.9, 2.4])
X20 = jnp.sin(jnp.arange(20) * 1.3) * 2.5 + 0.5

ZOO = [
    Case("single", single, (jnp.array(0.7),)),
    Case("bernoulli_logits", bernoulli_logits, (jnp.array(0.3),)),
    Case("continuous_parent", continuous_parent, (X3,)),
    Case("mixture", mixture, (X5,)),
    Case("two_in_plate", two_in_plate, (X3,)),
    Case("chain_in_plate", chain_in_plate, (X3,)),
    Case("nested_plates", nested_plates, (jnp.array([[0.1, 2.2], [1.9, -0.3], [0.4, 1.1]]),)),
    Case("nested_dependent", nested_dependent, (jnp.array([[0.1, 2.2], [1.9, -0.3]]),)),
    Case("global_local", global_local, (X5,)),
    Case("global_local_discrete", global_local_discrete, (X3,)),
    Case("two_plates", two_plates, (jnp.array([0.2, 1.1]), jnp.array([-0.5, 1.4, 0.3]))),
    Case("dawid_skene", dawid_skene, (jnp.array([[0, 0, 1], [2, 2, 2]]),)),
    Case("change_point", change_point, (jnp.array([3.0, 4.0, 9.0, 11.0, 10.0]),)),
    Case("binomial_site", binomial_site, (jnp.array([0.4, 2.6, 1.2]),)),
    Case("masked", masked, (X3, jnp.array([True, False, True]))),
    Case("scaled", scaled, (X3,)),
    Case("hmm_markov_short", hmm_markov, (_series(6),), markov=True),
    Case("hmm_scan_short", hmm_scan, (_series(6),), markov=True, scan=True),
    Case("hmm2_markov_short", hmm2_markov, (_series(5),), markov=True),
    Case("factorial_hmm_short", factorial_hmm, (_series(4),), markov=True),
    Case("hmm_sequences", hmm_sequences, (jnp.stack([_series(4), _series(4, 1.0)], 1),)),
    Case("hmm_markov_50", hmm_markov, (_series(50),), markov=True),
    Case("hmm_scan_60", hmm_scan, (_series(60),), markov=True, scan=True),
]

# Pairs whose ELBO is random (a subsampled plate, a stochastic guide): compared in
# distribution, over many keys (tests/enum/test_statistical_pairs.py), not to rtol 1e-5.
STATISTICAL_ZOO = [
    Case("mixture_subsampled", mixture_subsampled, (X20,)),
    Case("mixture_autonormal", mixture, (X5,), guide="AutoNormal"),
    Case("continuous_parent_autonormal", continuous_parent, (X3,), guide="AutoNormal"),
]
