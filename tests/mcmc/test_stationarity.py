"""Continuous kernels keep a Gaussian target invariant (statistical checks in standard
errors), and deliberately broken kernels are caught by both checkers.

Target: x ~ N(m, S) in 2-D with correlation. ``check_stationarity`` starts 10,000 chains at
exact draws and compares E f(x_T) (f = x, x²) with the exact moments and with the start
(paired); ``check_binned_invariance`` tests the bin-to-bin table of one step from π
(stationarity of the lumped chain and, for reversible kernels, its symmetry).
The unadjusted HMC kernel is checked against its own exact stationary law (the leapfrog
map of a Gaussian is linear) and shown to be caught as biased against π.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from ppl import mcmc
from ppl.mcmc.base import GradState, Kernel, mh_accept
from ppl.validate import check_binned_invariance, check_stationarity
from tests.mcmc.broken_kernels import ula
from tests.mcmc.gaussian_target import EXACT, M, logp, sample


def logp_dict(x):
    return logp(jnp.stack([x["a"], x["b"]]))


def sample_dict(key, n):
    x = sample(key, n)
    return {"a": x[:, 0], "b": x[:, 1]}


RW = mcmc.random_walk(logp, 1.0)
MALA = mcmc.mala(logp, 0.5)
HMC = mcmc.hmc(logp, 0.4, 5)

# (name, kernel, sampler, reversible)
CASES = [
    ("random_walk", RW, sample, True),
    # (independence and repeat are also exactly checked on finite targets: slow tier here)
    pytest.param(
        "independence",
        mcmc.independence(logp, dist.Normal(M, 2.0)),
        sample,
        True,
        marks=pytest.mark.slow,
    ),
    ("mala", MALA, sample, True),
    ("mala_preconditioned", mcmc.mala(logp, 0.5, jnp.array([0.6, 1.8])), sample, True),
    ("hmc", HMC, sample, True),
    # ε drawn per step from [0.2, 0.6]: a mixture of reversible kernels
    ("hmc_jittered", mcmc.hmc(logp, 0.4, 5, step_size_jitter=0.5), sample, True),
    # NumPyro's trajectory_length rule: n = ⌈1.3/ε'⌉ steps of 1.3/n, ε' jittered (n in 3..5)
    (
        "hmc_trajectory_length",
        mcmc.hmc(logp, 0.4, trajectory_length=1.3, step_size_jitter=0.3),
        sample,
        True,
    ),
    # BlackJAX's NUTS (a stale log density carried between steps is caught at z = 7.6)
    ("nuts_preconditioned", mcmc.nuts(logp, 0.6, jnp.array([0.6, 1.8])), sample, True),
    # ChEES-HMC's transition: ⌈u·T/ε⌉ leapfrog steps, u ~ U(0, 1] from the key (a mixture
    # of reversible HMC kernels); a jitter shrunk 4x where x₀ < 1 is caught at z = −49
    ("chees_preconditioned", mcmc.chees(logp, 0.5, 2.0, jnp.array([0.6, 1.8])), sample, True),
    ("cycle", mcmc.cycle(RW, MALA), sample, False),
    ("mixture", mcmc.mixture([MALA, HMC], [0.3, 0.7]), sample, True),
    pytest.param("repeat", mcmc.repeat(MALA, 3), sample, True, marks=pytest.mark.slow),
    (
        "blocks",
        mcmc.cycle(
            mcmc.block(lambda ld: mcmc.mala(ld, 0.5), logp_dict, "a"),
            mcmc.block(lambda ld: mcmc.hmc(ld, 0.5, 3), logp_dict, ["b"]),
        ),
        sample_dict,
        False,
    ),
]
IDS = [getattr(c, "values", c)[0] for c in CASES]


@pytest.mark.parametrize("name, kernel, sampler, reversible", CASES, ids=IDS)
def test_stays_at_stationarity(name, kernel, sampler, reversible):
    """Both checks on 10,000 chains x 5 steps (one compilation per kernel)."""
    report = check_stationarity(kernel, sampler, jax.random.key(0), num_steps=5, exact=EXACT)
    # the chains moved: the end state is not the start state
    assert not np.allclose(report.start, report.end, rtol=0, atol=1e-7)
    check_binned_invariance(
        kernel, sampler, jax.random.key(1), num_chains=10_000, num_steps=5, reversible=reversible
    )


def test_unadjusted_hmc_stationary_law():
    """Unadjusted HMC on N(0, s²) per coordinate: x' = A x + B p (leapfrog is linear), so
    its stationary variance is B²/(1 − A²) ≠ s². It keeps that law and is caught against π."""
    s = jnp.array([1.0, 2.0])
    eps, n = 0.8, 2
    ld = lambda x: -0.5 * jnp.sum((x / s) ** 2)
    integrate = mcmc.leapfrog(ld, eps, n)
    zero = jnp.zeros(2)
    A = integrate(jnp.ones(2), zero, jax.grad(ld)(jnp.ones(2)))[0]
    B = integrate(zero, jnp.ones(2), zero)[0]
    v = B**2 / (1 - A**2)
    assert np.max(np.abs(v / s**2 - 1)) > 0.15  # the bias is real at this step size
    kernel = mcmc.hmc(ld, eps, n, adjusted=False)
    own = lambda k, m: jax.random.normal(k, (m, 2)) * jnp.sqrt(v)
    exact_own = np.concatenate([np.zeros(2), v])
    check_stationarity(kernel, own, jax.random.key(2), num_steps=5, exact=exact_own)
    target = lambda k, m: jax.random.normal(k, (m, 2)) * s
    with pytest.raises(AssertionError, match="drifted"):
        check_stationarity(
            kernel, target, jax.random.key(3), num_steps=5, exact=np.r_[0.0, 0.0, s**2]
        )


def _hmc_no_kinetic(logdensity_fn, step_size, num_steps):
    """HMC whose acceptance ratio forgets the kinetic energy: min(1, π(x')/π(x))."""
    integrate = mcmc.leapfrog(logdensity_fn, step_size, num_steps)

    def init(x):
        return GradState(x, logdensity_fn(x), jax.grad(logdensity_fn)(x))

    def step(key, state):
        k1, k2 = jax.random.split(key)
        p = jax.random.normal(k1, state.position.shape)
        y, _, ld, g = integrate(state.position, p, state.logdensity_grad)
        new = GradState(y, ld, g)
        return mh_accept(k2, ld - state.logdensity, new, state)

    return Kernel(init, step)


BROKEN = [("ula", ula(logp, 0.5)), ("hmc_no_kinetic", _hmc_no_kinetic(logp, 0.4, 5))]


@pytest.mark.parametrize("name, kernel", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_caught(name, kernel):
    """Each checker alone rejects the broken kernel."""
    with pytest.raises(AssertionError, match="drifted"):
        check_stationarity(kernel, sample, jax.random.key(4), num_steps=5, exact=EXACT)
    with pytest.raises(AssertionError, match="not invariant"):
        check_binned_invariance(kernel, sample, jax.random.key(5), num_chains=10_000, num_steps=5)
