"""Involutive MCMC: exact invariance on a finite ring (enumerated transition matrix), the
Jacobian term on a non-volume-preserving involution (statistical checks; the same kernel
with the Jacobian omitted is caught), HMC written as leapfrog + momentum flip reproduces
``ppl.mcmc.hmc`` step for step, the involution check, and the NumPyro adapter."""

import math

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from ppl import mcmc
from ppl.mcmc.involutive import log_abs_det_jacobian
from ppl.validate import check_binned_invariance, check_kernel_invariance, check_stationarity
from tests.mcmc.broken_kernels import scale_move_no_jacobian
from tests.mcmc.gaussian_target import EXACT, logp, sample

# --- exact: a ±1 move on a ring of 6 states with a state-dependent direction proposal ----
W = jnp.array([0.05, 0.3, 0.1, 0.25, 0.2, 0.1])
STATES = jnp.arange(6)
P_UP = jnp.array([0.2, 0.5, 0.7, 0.4, 0.9, 0.3])  # q(v = 1 | x): asymmetric


def logp_ring(x):
    return jnp.log(W)[x]


def ring_aux(x):
    return dist.Bernoulli(P_UP[x])


def ring_involution(x, v):
    return (x + 2 * v - 1) % 6, 1 - v


def test_exact_invariance_on_a_ring():
    kernel = mcmc.involutive(logp_ring, ring_aux, ring_involution)
    report = check_kernel_invariance(kernel, logp_ring, STATES)
    assert report.stationarity_error < 1e-5 and report.balance_error < 1e-5


# --- continuous: a multiplicative scale move (Jacobian c^{±d}) -------------------------


def scale_aux(x):
    return dist.Bernoulli(0.5)


def scale_involution(x, v):
    """x ↦ x·c^{±1} with the sign from v, then flip v: an involution, |det J| = c^{±2}."""
    return x * 1.5 ** (2 * v - 1), 1 - v


def test_jacobian_of_the_scale_move():
    ld = log_abs_det_jacobian(lambda xv: scale_involution(*xv), (jnp.ones(2), jnp.array(1)))
    np.testing.assert_allclose(ld, 2 * math.log(1.5), rtol=1e-6)


SCALE = mcmc.involutive(logp, scale_aux, scale_involution)


def test_scale_move_keeps_the_target():
    check_stationarity(SCALE, sample, jax.random.key(0), num_steps=3, exact=EXACT)
    check_binned_invariance(SCALE, sample, jax.random.key(1), num_chains=10_000, num_steps=3)


def test_scale_move_without_jacobian_is_caught():
    broken = scale_move_no_jacobian(logp, 1.5)
    with pytest.raises(AssertionError, match="drifted"):
        check_stationarity(broken, sample, jax.random.key(2), num_steps=3, exact=EXACT)
    with pytest.raises(AssertionError, match="not invariant"):
        check_binned_invariance(broken, sample, jax.random.key(3), num_chains=10_000, num_steps=3)


# --- HMC as an involutive kernel ---------------------------------------------------------
def momentum(x):
    return dist.Normal(jnp.zeros_like(x), 1.0).to_event(1)


def test_hmc_as_involution_matches_hmc():
    """Same keys, same chain: the involutive form draws p ~ N(0, I) and accepts with
    π(x')N(−p')/(π(x)N(p))·|det J| = exp(H(x, p) − H(x', p')), |det J| = 1 by autodiff."""
    eps, n = 0.35, 5
    inv = mcmc.hmc_involution(logp, eps, n)
    x0, p0 = jnp.array([0.3, -1.0]), jnp.array([0.5, 0.2])
    assert abs(float(log_abs_det_jacobian(lambda xv: inv(*xv), (x0, p0)))) < 1e-5
    x2, p2 = inv(*inv(x0, p0))
    np.testing.assert_allclose(np.r_[x2, p2], np.r_[x0, p0], atol=1e-5)

    ref = mcmc.hmc(logp, eps, n)
    invk = mcmc.involutive(logp, momentum, inv)

    def chain(kernel):
        def body(s, k):
            s, info = kernel.step(k, s)
            return s, (s.position, info.acceptance_rate)

        _, out = jax.lax.scan(body, kernel.init(x0), jax.random.split(jax.random.key(7), 100))
        return out

    (xa, aa), (xb, ab) = jax.jit(lambda: (chain(ref), chain(invk)))()
    np.testing.assert_allclose(xa, xb, atol=1e-4)
    np.testing.assert_allclose(aa, ab, atol=1e-4)
    assert 0.3 < float(jnp.mean(aa)) < 1.0  # it moves, and sometimes rejects


def test_check_catches_a_non_involution():
    shift = mcmc.involutive(logp, momentum, lambda x, p: (x + 0.1 * p, p), check=True)
    with pytest.raises(Exception, match="involution check failed"):
        jax.block_until_ready(shift.step(jax.random.key(0), shift.init(jnp.zeros(2))))
    ok = mcmc.involutive(logp, scale_aux, scale_involution, check=True)
    jax.block_until_ready(ok.step(jax.random.key(0), ok.init(jnp.ones(2))))


# --- the NumPyro adapter: an auxiliary *program* with a discrete and a continuous site ----
Y = jnp.array([0.8, 1.9, 0.3, 1.2])


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def aux_program(z):
    numpyro.sample("b", dist.Bernoulli(0.5))
    numpyro.sample("u", dist.Normal(0.0, 0.7))


def mixed_involution(z, v):
    """b = 1: scale mu by e^u (|det J| = e^u); b = 0: shift mu by u. Then u ↦ −u."""
    mu = jnp.where(v["b"] == 1, z["mu"] * jnp.exp(v["u"]), z["mu"] + v["u"])
    return {**z, "mu": mu}, {"b": v["b"], "u": -v["u"]}


def test_numpyro_adapter_posterior():
    m = MCMC(
        mcmc.Involutive(model, aux_program, mixed_involution),
        num_warmup=200,
        num_samples=1000,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.key(0), Y)
    draws = np.asarray(m.get_samples(group_by_chain=True)["mu"], np.float64)
    mean, sd = float(Y.sum()) / (len(Y) + 1), 1 / math.sqrt(len(Y) + 1)
    z_mean = (draws.mean() - mean) / float(az.mcse(draws))
    z_sd = (draws.std(ddof=1) - sd) / float(az.mcse(draws, method="sd"))
    assert abs(z_mean) < 4 and abs(z_sd) < 4, (z_mean, z_sd)
