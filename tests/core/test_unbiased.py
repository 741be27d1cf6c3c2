"""The shared statistical battery: every strategy, alone and mixed, is unbiased.

Each case is a NumPyro program ``program(theta) -> scalar`` and an exact reference
``exact(theta)`` written in plain JAX (closed forms, exact enumeration over every discrete
value with itertools, or Gauss-Hermite quadrature checked for convergence below). The
reference never calls NumPyro's distributions, so it is independent of what ppl computes.

For each case, over ``num_samples`` keys, ``check_unbiased`` asserts that the surrogate's
value, its ``jax.grad`` and (for a subset) its ``jax.jvp`` along a random direction are
within 4 standard errors of the exact value, gradient and directional derivative. The
only tolerances are the standard errors (and ``check_unbiased``'s float32 floor for
coordinates that are computed exactly, e.g. under joint enumeration).

Every case compiles one vmapped estimator (value, gradient and tangent together) to keep
the file fast on two cores.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import gammaln, logsumexp

import ppl
from ppl.core.expectation import Expectation  # additive=True: the tests guarantee it
from ppl.validate import check_unbiased

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# plain-JAX helpers for the exact references (no NumPyro distributions)
# --------------------------------------------------------------------------------------
def normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * LOG_2PI


def bernoulli_probs(logit):
    """(P(z=0), P(z=1)) for Bernoulli(logits=logit), correct at logit = 0."""
    return jnp.stack([jax.nn.sigmoid(-logit), jax.nn.sigmoid(logit)])


def binomial_probs(n, logit):
    k = jnp.arange(n + 1.0)
    log_comb = gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)
    return jnp.exp(log_comb + k * jax.nn.log_sigmoid(logit) + (n - k) * jax.nn.log_sigmoid(-logit))


def poisson_probs(rate, num_terms):
    k = jnp.arange(float(num_terms))
    return jnp.exp(k * jnp.log(rate) - rate - gammaln(k + 1.0))


def gauss_hermite(num_nodes):
    """Nodes and weights for E[g(t)], t ~ N(0, 1)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return jnp.asarray(nodes, jnp.float32), jnp.asarray(
        weights / math.sqrt(2 * math.pi), jnp.float32
    )


def sample(name, d, strategy=None):
    infer = {} if strategy is None else {"grad": strategy}
    return numpyro.sample(name, d, infer=infer)


# --------------------------------------------------------------------------------------
# the registry of cases
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    program: Callable  # theta -> scalar, a NumPyro program
    exact: Callable  # theta -> E[program(theta)], plain JAX
    theta: tuple
    num_samples: int = 8000
    jvp: bool = False  # also check jax.jvp along a random direction
    slow: bool = False


CASES: list[Case] = []


def case(name, program, exact, theta, **kw):
    CASES.append(Case(name, program, exact, tuple(float(t) for t in theta), **kw))


# --- reparam / implicit -----------------------------------------------------------------
def normal_f(z):
    return jnp.sin(z) + 0.5 * z**2


def normal_f_exact(theta):
    mu, s = theta[0], jnp.exp(theta[1])
    return jnp.sin(mu) * jnp.exp(-0.5 * s**2) + 0.5 * (mu**2 + s**2)


def normal_program(strategy):
    def program(theta):
        z = sample("z", dist.Normal(theta[0], jnp.exp(theta[1])), strategy)
        return normal_f(z)

    return program


case("reparam_normal", normal_program("reparam"), normal_f_exact, [0.3, -0.2], jvp=True)


def gamma_program(theta):
    a, b = jnp.exp(theta[0]), jnp.exp(theta[1])
    z = sample("z", dist.Gamma(a, b), "implicit")
    return jnp.exp(-z) + 0.2 * z**2


def gamma_exact(theta):
    a, b = jnp.exp(theta[0]), jnp.exp(theta[1])
    return (b / (b + 1.0)) ** a + 0.2 * a * (a + 1.0) / b**2


case("implicit_gamma", gamma_program, gamma_exact, [math.log(2.0), math.log(1.5)])


def beta_program(theta):
    z = sample("z", dist.Beta(jnp.exp(theta[0]), jnp.exp(theta[1])), ppl.implicit())
    return z**2 - 2.0 * z**3


def beta_exact(theta):
    a, b = jnp.exp(theta[0]), jnp.exp(theta[1])

    def moment(k):
        return math.prod((a + r) / (a + b + r) for r in range(k))

    return moment(2) - 2.0 * moment(3)


case("implicit_beta", beta_program, beta_exact, [math.log(1.5), math.log(2.5)], slow=True)


def dirichlet_program(theta):
    z = sample("z", dist.Dirichlet(jnp.exp(theta)), "implicit")
    return z[0] ** 2 + 3.0 * z[1] * z[2] + z[2] ** 3


def dirichlet_exact(theta):
    a = jnp.exp(theta)
    s = jnp.sum(a)
    return (
        a[0] * (a[0] + 1) / (s * (s + 1))
        + 3.0 * a[1] * a[2] / (s * (s + 1))
        + a[2] * (a[2] + 1) * (a[2] + 2) / (s * (s + 1) * (s + 2))
    )


case(
    "implicit_dirichlet",
    dirichlet_program,
    dirichlet_exact,
    np.log([1.2, 0.8, 2.0]),
    jvp=True,
    slow=True,
)


# --- single discrete sites, every strategy ----------------------------------------------
def bernoulli_f(z, logit):
    return (z - 0.3) ** 2 * (1.0 + logit)


def bernoulli_program(strategy):
    def program(theta):
        z = sample("z", dist.Bernoulli(logits=theta[0]), strategy)
        return bernoulli_f(z, theta[0])

    return program


def bernoulli_exact(theta):
    p = bernoulli_probs(theta[0])
    return p[0] * bernoulli_f(0.0, theta[0]) + p[1] * bernoulli_f(1.0, theta[0])


for _s in ("enum", "mvd", "reinforce"):
    case(f"{_s}_bernoulli", bernoulli_program(_s), bernoulli_exact, [0.7])
    # NumPyro's own Bernoulli(logits=0).log_prob has a wrong gradient; ppl must be right.
    case(f"{_s}_bernoulli_logits_zero", bernoulli_program(_s), bernoulli_exact, [0.0])

case(
    "reinforce_bernoulli_value_baseline",
    bernoulli_program(ppl.reinforce(baseline=0.4)),
    bernoulli_exact,
    [-0.6],
)

TABLE4 = jnp.array([0.5, -1.0, 2.0, 0.3])


def categorical_program(strategy):
    def program(theta):
        z = sample("z", dist.Categorical(logits=theta), strategy)
        return (TABLE4[z] - theta[0]) ** 2

    return program


def categorical_exact(theta):
    return jnp.sum(jax.nn.softmax(theta) * (TABLE4 - theta[0]) ** 2)


CAT_THETA = [0.2, -0.5, 0.9, 0.0]
case("enum_categorical", categorical_program("enum"), categorical_exact, CAT_THETA, jvp=True)
case("mvd_categorical", categorical_program("mvd"), categorical_exact, CAT_THETA)
case(
    "reinforce_categorical",
    categorical_program("reinforce"),
    categorical_exact,
    CAT_THETA,
    num_samples=16000,
)


def binomial_f(z, logit):
    return (z - 1.5) ** 2 / (1.0 + z) + logit * z


def binomial_program(theta):
    z = sample("z", dist.Binomial(total_count=4, logits=theta[0]), "enum")
    return binomial_f(z, theta[0])


def binomial_exact(theta):
    return jnp.sum(binomial_probs(4, theta[0]) * binomial_f(jnp.arange(5.0), theta[0]))


case("enum_binomial", binomial_program, binomial_exact, [0.4])
case("enum_binomial_logits_zero", binomial_program, binomial_exact, [0.0])

case("mvd_normal_loc_scale", normal_program("mvd"), normal_f_exact, [0.3, -0.2], jvp=True)
case(
    "reinforce_normal", normal_program("reinforce"), normal_f_exact, [0.3, -0.2], num_samples=16000
)


def poisson_program(strategy):
    def program(theta):
        z = sample("z", dist.Poisson(jnp.exp(theta[0])), strategy)
        return 1.0 / (1.0 + z) + 0.1 * z**2

    return program


def poisson_exact(theta):
    rate = jnp.exp(theta[0])
    return (1.0 - jnp.exp(-rate)) / rate + 0.1 * (rate + rate**2)


case("mvd_poisson", poisson_program("mvd"), poisson_exact, [math.log(1.7)])
case(
    "reinforce_poisson",
    poisson_program("reinforce"),
    poisson_exact,
    [math.log(1.7)],
    num_samples=16000,
)


def geometric_program(theta):
    z = sample("z", dist.Geometric(probs=jax.nn.sigmoid(theta[0])), "mvd")
    return 1.0 / (1.0 + z) + 0.1 * z


def geometric_exact(theta):
    p = jax.nn.sigmoid(theta[0])
    # sum_k p q^k / (k + 1) = -p log(p) / q,  E[z] = q / p
    return -p * jnp.log(p) / (1.0 - p) + 0.1 * (1.0 - p) / p


case("mvd_geometric", geometric_program, geometric_exact, [-0.4])


def default_strategies_program(theta):
    x = numpyro.sample("x", dist.Normal(theta[0], 1.0))  # default: reparam
    z = numpyro.sample("z", dist.Bernoulli(logits=theta[1]))  # default: reinforce
    return z * (x - 0.5) ** 2 + (1 - z) * x


def default_strategies_exact(theta):
    p = bernoulli_probs(theta[1])
    return p[1] * ((theta[0] - 0.5) ** 2 + 1.0) + p[0] * theta[0]


case(
    "default_reparam_and_reinforce",
    default_strategies_program,
    default_strategies_exact,
    [0.2, 0.5],
)


# --- mixes ------------------------------------------------------------------------------
SHIFT3 = jnp.array([1.0, 0.0, -1.0])


def reinforce_then_enum_program(theta):
    z1 = sample("z1", dist.Bernoulli(logits=theta[0]), "reinforce")
    z2 = sample("z2", dist.Categorical(logits=theta[1:4] + theta[4] * z1 * SHIFT3), "enum")
    return (z1 + z2 - 1.2) ** 2 + z1 * z2 * theta[0]


def reinforce_then_enum_exact(theta):
    total = 0.0
    for v1, p1 in enumerate(bernoulli_probs(theta[0])):
        q2 = jax.nn.softmax(theta[1:4] + theta[4] * v1 * SHIFT3)
        for v2 in range(3):
            total += p1 * q2[v2] * ((v1 + v2 - 1.2) ** 2 + v1 * v2 * theta[0])
    return total


case(
    "reinforce_then_enum",
    reinforce_then_enum_program,
    reinforce_then_enum_exact,
    [0.4, 0.1, -0.3, 0.5, 0.8],
    jvp=True,
)


def enum_enum_body(theta):
    z1 = numpyro.sample("z1", dist.Categorical(logits=theta[:3]))
    z2 = numpyro.sample("z2", dist.Bernoulli(logits=theta[3] * (z1 - 1.0)))
    y = numpyro.sample("y", dist.Normal(z1 + z2, jnp.exp(theta[4])))  # reparam
    return jnp.cos(z1 + 2.0 * z2) + 0.3 * y**2


enum_enum_program = ppl.strategy(enum_enum_body, {"z1": "enum", "z2": ppl.enum()})


def enum_enum_exact(theta):
    total = 0.0
    q1 = jax.nn.softmax(theta[:3])
    for v1 in range(3):
        for v2, p2 in enumerate(bernoulli_probs(theta[3] * (v1 - 1.0))):
            ey2 = (v1 + v2) ** 2 + jnp.exp(2.0 * theta[4])
            total += q1[v1] * p2 * (jnp.cos(v1 + 2.0 * v2) + 0.3 * ey2)
    return total


case(
    "enum_then_enum_bulk_strategy",
    enum_enum_program,
    enum_enum_exact,
    [0.3, -0.2, 0.5, 1.1, -0.5],
)

W3 = jnp.array([1.0, -0.5, 2.0])


def plate_bernoulli_f(z):
    # not a sum over elements: every element's rule needs the others' values
    return (jnp.dot(z, W3) - 0.7) ** 2 + jnp.prod(1.0 + 0.5 * z)


def plate_bernoulli_program(strategy):
    def program(theta):
        with numpyro.plate("n", 3):
            z = sample("z", dist.Bernoulli(logits=theta), strategy)
        return plate_bernoulli_f(z)

    return program


def plate_bernoulli_exact(theta):
    zs = jnp.array(list(itertools.product((0, 1), repeat=3)))  # all 2^3 joint values
    prob = jnp.prod(bernoulli_probs(theta)[zs, jnp.arange(3)], axis=1)
    return jnp.sum(prob * jax.vmap(plate_bernoulli_f)(zs.astype(jnp.float32)))


case(
    "mvd_plate_nonadditive",
    plate_bernoulli_program("mvd"),
    plate_bernoulli_exact,
    [0.5, -1.0, 0.0],
    jvp=True,
)

TABLE3 = jnp.array([0.0, 1.0, -1.5])


def plate_categorical_f(z):
    v = TABLE3[z]
    return (jnp.sum(v) - 0.5) ** 2 + z[0] * z[2]


def plate_categorical_program(theta):
    with numpyro.plate("n", 3):
        z = sample("z", dist.Categorical(logits=theta.reshape(3, 3)), "enum")
    return plate_categorical_f(z)


def plate_categorical_exact(theta):
    zs = jnp.array(list(itertools.product(range(3), repeat=3)))  # all 3^3 joint values
    prob = jnp.prod(jax.nn.softmax(theta.reshape(3, 3), axis=-1)[jnp.arange(3), zs], axis=1)
    return jnp.sum(prob * jax.vmap(plate_categorical_f)(zs))


case(
    "enum_plate_nonadditive",
    plate_categorical_program,
    plate_categorical_exact,
    [0.2, -0.4, 0.1, 0.0, 0.7, -0.3, 0.5, 0.5, -1.0],
)


def mvd_then_enum_program(theta):
    z1 = sample("z1", dist.Categorical(logits=theta[:3]), "mvd")
    z2 = sample("z2", dist.Bernoulli(logits=theta[3] + theta[4] * z1), "enum")
    return (z1 - 1.5 * z2) ** 2 + z1 * z2 * theta[3]


def mvd_then_enum_exact(theta):
    total = 0.0
    q1 = jax.nn.softmax(theta[:3])
    for v1 in range(3):
        for v2, p2 in enumerate(bernoulli_probs(theta[3] + theta[4] * v1)):
            total += q1[v1] * p2 * ((v1 - 1.5 * v2) ** 2 + v1 * v2 * theta[3])
    return total


case(
    "mvd_then_enum",
    mvd_then_enum_program,
    mvd_then_enum_exact,
    [0.1, 0.4, -0.2, -0.5, 0.6],
)


def mvd_poisson_then_enum_program(theta):
    z1 = sample("z1", dist.Poisson(jnp.exp(theta[0])), "mvd")
    z2 = sample("z2", dist.Bernoulli(logits=theta[1] - 0.5 * z1), "enum")
    return 0.2 * (z1 - 1.0) ** 2 + z2 * (z1 + theta[1])


def mvd_poisson_then_enum_exact(theta):
    k = jnp.arange(60.0)  # P(z1 >= 60) < 1e-70 at rate 1.3
    p1 = poisson_probs(jnp.exp(theta[0]), 60)
    p2 = jax.nn.sigmoid(theta[1] - 0.5 * k)
    return jnp.sum(p1 * (0.2 * (k - 1.0) ** 2 + p2 * (k + theta[1])))


case(
    "mvd_poisson_then_enum",
    mvd_poisson_then_enum_program,
    mvd_poisson_then_enum_exact,
    [math.log(1.3), 0.3],
)


def reparam_into_discrete_f(z, x):
    return (z - 0.5) * x + z + 0.3 * x**2


def reparam_into_discrete_program(strategy):
    def program(theta):
        x = sample("x", dist.Normal(theta[0], jnp.exp(theta[1])), "reparam")
        z = sample("z", dist.Bernoulli(logits=2.0 * x - 0.5), strategy)
        return reparam_into_discrete_f(z, x)

    return program


def reparam_into_discrete_exact(theta, num_nodes=80):
    t, w = gauss_hermite(num_nodes)
    x = theta[0] + jnp.exp(theta[1]) * t
    p1 = jax.nn.sigmoid(2.0 * x - 0.5)
    g = p1 * reparam_into_discrete_f(1.0, x) + (1.0 - p1) * reparam_into_discrete_f(0.0, x)
    return jnp.sum(w * g)


for _s, _jvp in (("enum", False), ("mvd", True), ("reinforce", False)):
    case(
        f"reparam_into_{_s}",
        reparam_into_discrete_program(_s),
        reparam_into_discrete_exact,
        [0.2, -0.3],
        jvp=_jvp,
    )


# --- user-written IWAE with ppl.particles -----------------------------------------------
K_IWAE = 3
X_GAUSS = 1.1


def gauss_model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(z, 0.8), obs=x)


def gauss_guide(theta):
    numpyro.sample("z", dist.Normal(theta[0], jnp.exp(theta[1])))  # reparam by default


def iwae(model, guide, data, num_particles):
    def program(theta):
        def log_weight():
            q = ppl.simulate(guide, theta)
            return ppl.density(model, q.values, data) - q.log_prob

        lw = ppl.particles(log_weight, num_particles)()
        return logsumexp(lw) - math.log(num_particles)

    return program


def iwae_gauss_exact(theta, num_nodes=24):
    t, w = gauss_hermite(num_nodes)
    mu, s = theta[0], jnp.exp(theta[1])
    z = mu + s * t
    lw = normal_logpdf(z, 0.0, 1.0) + normal_logpdf(X_GAUSS, z, 0.8) - normal_logpdf(z, mu, s)
    grid = jnp.stack(jnp.meshgrid(*([jnp.arange(num_nodes)] * K_IWAE), indexing="ij"), -1)
    grid = grid.reshape(-1, K_IWAE)
    weight = jnp.prod(w[grid], axis=-1)
    return jnp.sum(weight * (logsumexp(lw[grid], axis=-1) - math.log(K_IWAE)))


case(
    "iwae_reparam_particles",
    iwae(gauss_model, gauss_guide, X_GAUSS, K_IWAE),
    iwae_gauss_exact,
    [0.3, -0.4],
    jvp=True,
)

PZ = jnp.array([0.5, 0.3, 0.2])
MEANS = jnp.array([-1.0, 0.5, 2.0])
X_CAT = 0.8


def cat_model(x):
    z = numpyro.sample("z", dist.Categorical(probs=PZ))
    numpyro.sample("x", dist.Normal(MEANS[z], 1.0), obs=x)


def cat_guide(strategy):
    def guide(theta):
        numpyro.sample("z", dist.Categorical(logits=theta), infer={"grad": strategy})

    return guide


def iwae_cat_exact(theta, num_particles=K_IWAE):
    logq = jax.nn.log_softmax(theta)
    lw = jnp.log(PZ) + normal_logpdf(X_CAT, MEANS, 1.0) - logq
    # all 3^K joint values of the K particles' latents
    zs = jnp.array(list(itertools.product(range(3), repeat=num_particles)))
    prob = jnp.exp(jnp.sum(logq[zs], axis=1))
    return jnp.sum(prob * (logsumexp(lw[zs], axis=1) - math.log(num_particles)))


CAT_GUIDE_THETA = [0.4, -0.3, 0.0]
case(
    "iwae_reinforce_loo_particles",
    iwae(cat_model, cat_guide(ppl.reinforce(baseline="loo")), X_CAT, K_IWAE),
    iwae_cat_exact,
    CAT_GUIDE_THETA,
    jvp=True,
    slow=True,  # its unbiasedness is also checked, unmarked, by the variance test
)
case(
    "iwae_mvd_particles",
    iwae(cat_model, cat_guide("mvd"), X_CAT, K_IWAE),
    iwae_cat_exact,
    CAT_GUIDE_THETA,
    slow=True,
)
case(
    "iwae_enum_particles",
    iwae(cat_model, cat_guide("enum"), X_CAT, K_IWAE),
    iwae_cat_exact,
    CAT_GUIDE_THETA,
    slow=True,
)


# --------------------------------------------------------------------------------------
# the battery
# --------------------------------------------------------------------------------------
def case_key(name):
    return jax.random.PRNGKey(zlib.crc32(name.encode()))


def direction(name, size):
    return jax.random.normal(jax.random.fold_in(case_key(name), 1), (size,))


def battery_estimator(c: Case):
    """key -> (value, grad[, jvp tangent]) of ppl's surrogate for case ``c``."""
    E = ppl.expectation(c.program)
    theta = jnp.asarray(c.theta, jnp.float32)
    v = direction(c.name, theta.shape[0])

    def estimator(key):
        value, grad = jax.value_and_grad(lambda th: E(key, th))(theta)
        if not c.jvp:
            return value, grad
        _, tangent = jax.jvp(lambda th: E(key, th), (theta,), (v,))
        return value, grad, tangent

    return estimator


def battery_exact(c: Case):
    theta = jnp.asarray(c.theta, jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(c.exact))(theta)
    if not c.jvp:
        return value, grad
    return value, grad, jnp.dot(grad, direction(c.name, theta.shape[0]))


def params(cases):
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in cases]


@pytest.mark.parametrize("c", params(CASES))
def test_value_grad_jvp_unbiased(c: Case):
    """Value, gradient (and tangent) of the surrogate are unbiased within 4 SE.

    Output layout in failure messages: [0] value, [1 : 1 + dim] gradient, [-1] tangent.
    """
    start = time.perf_counter()
    report = check_unbiased(
        battery_estimator(c), battery_exact(c), case_key(c.name), num_samples=c.num_samples
    )
    assert report.ok
    print(f"{c.name}: max |z| {report.max_abs_z():.2f}, {time.perf_counter() - start:.1f}s")


def test_registry_covers_every_strategy_alone_and_mixed():
    names = {c.name for c in CASES}
    for strategy in ("reparam", "implicit", "reinforce", "enum", "mvd"):
        assert any(n.startswith(strategy + "_") for n in names), strategy
    for name in (
        "enum_bernoulli_logits_zero",
        "mvd_bernoulli_logits_zero",
        "reinforce_bernoulli_logits_zero",
        "reinforce_then_enum",
        "enum_then_enum_bulk_strategy",
        "mvd_plate_nonadditive",
        "enum_plate_nonadditive",
        "mvd_then_enum",
        "reparam_into_mvd",
        "iwae_reparam_particles",
        "iwae_reinforce_loo_particles",
    ):
        assert name in names, name
    # at least one case of every strategy runs in the quick (not slow) battery
    quick = [c.name for c in CASES if not c.slow]
    for strategy in ("reparam", "implicit", "reinforce", "enum", "mvd"):
        assert any(strategy in n for n in quick), strategy


# --------------------------------------------------------------------------------------
# exact references: quadrature converged, and the battery has power to detect bias
# --------------------------------------------------------------------------------------
def test_quadrature_references_converged():
    """The Gauss-Hermite references agree with a coarser rule far below the SEs used."""
    for exact, theta, coarse, fine in (
        (reparam_into_discrete_exact, [0.2, -0.3], 40, 80),
        (iwae_gauss_exact, [0.3, -0.4], 16, 24),
    ):
        theta = jnp.asarray(theta)
        a = jax.jit(jax.value_and_grad(functools.partial(exact, num_nodes=coarse)))(theta)
        b = jax.jit(jax.value_and_grad(functools.partial(exact, num_nodes=fine)))(theta)
        np.testing.assert_allclose(np.hstack(a), np.hstack(b), atol=1e-5)


def test_battery_detects_a_missing_score_term():
    """Power check: dropping the REINFORCE score term (a biased estimator) must fail."""

    def biased(theta):
        logit = jax.lax.stop_gradient(theta[0])  # the distribution no longer sees theta
        z = sample("z", dist.Bernoulli(logits=logit), "reinforce")
        return bernoulli_f(z, theta[0])

    c = Case("biased", biased, bernoulli_exact, (0.7,))
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(battery_estimator(c), battery_exact(c), case_key("biased"), 4000)


def test_battery_detects_numpyro_score_at_logits_zero():
    """Power check for the logits = 0 cases: a score-function estimator built on NumPyro's
    own ``Bernoulli(logits=0).log_prob`` gradient (wrong there under jax 0.10) is caught."""
    numpyro_grad = jax.grad(lambda t: dist.Bernoulli(logits=t).log_prob(1.0))(0.0)
    if abs(float(numpyro_grad) - 0.5) < 1e-6:
        pytest.skip("this NumPyro differentiates Bernoulli(logits=0).log_prob correctly")
    theta = jnp.zeros(1)

    def naive(key):
        def surrogate(th):
            z = jax.random.bernoulli(key, jax.nn.sigmoid(th[0])).astype(jnp.float32)
            lp = dist.Bernoulli(logits=th[0]).log_prob(z)
            return bernoulli_f(z, th[0]) * jnp.exp(lp - jax.lax.stop_gradient(lp))

        return jax.value_and_grad(surrogate)(theta)

    exact = jax.value_and_grad(bernoulli_exact)(theta)
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(naive, exact, case_key("numpyro_logits_zero"), 8000)


# --------------------------------------------------------------------------------------
# the additive (ELBO-like) plate fast path
# --------------------------------------------------------------------------------------
N_DATA = 4
DATA = jnp.array([-1.2, 0.3, 2.1, 0.9])
PI3 = jnp.array([0.3, 0.5, 0.2])


def mixture_model(mu, data):
    with numpyro.plate("data", N_DATA):
        z = numpyro.sample("z", dist.Categorical(probs=PI3))
        numpyro.sample("x", dist.Normal(mu[z], 1.0), obs=data)


def mixture_guide(phi, strategy):
    with numpyro.plate("data", N_DATA):
        numpyro.sample("z", dist.Categorical(logits=phi), infer={"grad": strategy})


def mixture_elbo_program(strategy):
    def program(theta):
        phi, mu = theta[: 3 * N_DATA].reshape(N_DATA, 3), theta[3 * N_DATA :]
        q = ppl.simulate(mixture_guide, phi, strategy)
        return ppl.density(mixture_model, q.values, mu, DATA) - q.log_prob

    return program


def mixture_elbo_exact(theta):
    phi, mu = theta[: 3 * N_DATA].reshape(N_DATA, 3), theta[3 * N_DATA :]
    logq = jax.nn.log_softmax(phi, axis=-1)  # (N, 3)
    logp = jnp.log(PI3) + normal_logpdf(DATA[:, None], mu[None, :], 1.0)  # (N, 3)
    return jnp.sum(jnp.exp(logq) * (logp - logq))


MIXTURE_THETA = np.concatenate(
    [np.linspace(-0.6, 0.6, 3 * N_DATA), np.array([-1.0, 0.5, 1.5])]
).astype(np.float32)


@pytest.mark.parametrize("strategy", ["enum", pytest.param("mvd", marks=pytest.mark.slow)])
def test_additive_fast_path(strategy):
    """additive=True: O(N) per-element path, same estimates as the plain path, unbiased.

    With ``rao_blackwellize=False`` the fast path must reproduce the plain (additive=False)
    estimator for the same key: identical value, gradient equal up to float32 summation
    order. The default (Rao-Blackwellized) estimator drops the zero-mean direct gradient of
    the site's own log q, so it keeps the value but not the gradient. The default and the
    plain estimator must be unbiased.
    """
    program = mixture_elbo_program(strategy)
    theta = jnp.asarray(MIXTURE_THETA)
    variants = {
        "rb": Expectation(program, additive=True),
        "fast": Expectation(program, additive=True, rao_blackwellize=False),
        "plain": ppl.expectation(program, additive=False),
    }
    key = case_key(f"additive_{strategy}")
    # the fast path is actually taken for the plate site, and only when declared additive
    for name, E in variants.items():
        fast_flags = [s.fast for s in E.discover(key, theta).sites if s.name == "z"]
        assert fast_flags == [name != "plain"], (name, fast_flags)

    def value_and_grad(E, k):
        return jax.value_and_grad(lambda th: E(k, th))(theta)

    def same_key(k):
        return (
            value_and_grad(variants["fast"], k),
            value_and_grad(variants["plain"], k),
            variants["rb"](k, theta),
        )

    keys = jax.random.split(jax.random.fold_in(key, 1), 16)
    (v_fast, g_fast), (v_plain, g_plain), v_rb = jax.jit(jax.vmap(same_key))(keys)
    np.testing.assert_array_equal(np.asarray(v_fast), np.asarray(v_plain))
    np.testing.assert_array_equal(np.asarray(v_rb), np.asarray(v_plain))
    # same estimator, different summation order: agreement up to float32 rounding
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_plain), rtol=1e-5, atol=2e-6)
    assert np.all(np.std(np.asarray(g_plain), axis=0)[: 3 * N_DATA] > 0)  # random, not trivial

    def estimator(k):  # the two user-facing defaults (the fast one equals "plain")
        return value_and_grad(variants["rb"], k), value_and_grad(variants["plain"], k)

    exact = jax.jit(jax.value_and_grad(mixture_elbo_exact))(theta)
    report = check_unbiased(estimator, (exact, exact), key, 8000)
    assert report.ok


# --------------------------------------------------------------------------------------
# ppl.objectives.elbo as an SVI loss, with a discrete latent in the guide
# --------------------------------------------------------------------------------------
SVI_DATA = jnp.array([-0.7, 1.4, 0.2])
PRIOR_C_LOGIT = 0.3
PRIOR_Z_LOGITS = jnp.array([0.2, -0.1, 0.0])


def svi_model(data):
    loc = numpyro.param("loc", jnp.zeros(3))
    c = numpyro.sample("c", dist.Bernoulli(logits=PRIOR_C_LOGIT))
    with numpyro.plate("n", 3):
        z = numpyro.sample("z", dist.Categorical(logits=PRIOR_Z_LOGITS))
        numpyro.sample("x", dist.Normal(loc[z] + 0.5 * c, 1.0), obs=data)


def svi_guide(strategy):
    def guide(data):
        qc = numpyro.param("qc", 0.0)
        qz = numpyro.param("qz", jnp.zeros((3, 3)))
        numpyro.sample("c", dist.Bernoulli(logits=qc), infer={"grad": strategy})
        with numpyro.plate("n", 3):
            numpyro.sample("z", dist.Categorical(logits=qz), infer={"grad": strategy})

    return guide


def svi_exact_loss(p):
    logpc = jnp.log(bernoulli_probs(PRIOR_C_LOGIT))
    logqc = jnp.log(bernoulli_probs(p["qc"]))
    logpz = jax.nn.log_softmax(PRIOR_Z_LOGITS)
    logqz = jax.nn.log_softmax(p["qz"], axis=-1)  # (n, 3)
    elbo = 0.0
    for c in (0, 1):
        loglik = normal_logpdf(SVI_DATA[:, None], p["loc"][None, :] + 0.5 * c, 1.0)
        local = jnp.sum(jnp.exp(logqz) * (logpz + loglik - logqz))
        elbo += jnp.exp(logqc[c]) * (logpc[c] - logqc[c] + local)
    return -elbo


SVI_PARAMS = {
    "loc": jnp.array([-0.5, 0.3, 1.0]),
    "qc": jnp.array(0.0),  # zero logits: the usual initialization
    "qz": jnp.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.5], [-0.3, 0.2, 0.4]]),
}


@pytest.mark.parametrize(
    "strategy, num_samples",
    [("enum", 1000), pytest.param("mvd", 8000, marks=pytest.mark.slow), ("reinforce", 16000)],
)
def test_elbo_objective_as_svi_loss(strategy, num_samples):
    loss = ppl.objectives.elbo()
    guide = svi_guide(strategy)

    def estimator(key):
        return jax.value_and_grad(lambda p: loss.loss(key, p, svi_model, guide, SVI_DATA))(
            SVI_PARAMS
        )

    exact = jax.jit(jax.value_and_grad(svi_exact_loss))(SVI_PARAMS)
    report = check_unbiased(estimator, exact, case_key(f"svi_{strategy}"), num_samples)
    assert report.ok


# --------------------------------------------------------------------------------------
# variance: the leave-one-out baseline helps REINFORCE inside particles
# --------------------------------------------------------------------------------------
def test_loo_baseline_reduces_variance():
    theta = jnp.asarray(CAT_GUIDE_THETA)
    exact = jax.jit(jax.value_and_grad(iwae_cat_exact))(theta)
    variances = {}
    for baseline in ("none", "loo"):
        E = ppl.expectation(iwae(cat_model, cat_guide(ppl.reinforce(baseline)), X_CAT, K_IWAE))

        def estimator(key, E=E):
            return jax.value_and_grad(lambda th: E(key, th))(theta)

        report = check_unbiased(estimator, exact, case_key(f"variance_{baseline}"), 8000)
        # per-sample variance of the gradient coordinates (value excluded)
        variances[baseline] = float(np.sum(report.stderr[1:] ** 2) * report.num_samples)
    ratio = variances["none"] / variances["loo"]
    print(f"gradient variance none / loo = {ratio:.2f}")
    assert ratio > 10.0, variances  # measured ~57 (8000 samples each)
