"""Variance pins: each variance-reducing estimator has the variance it should have.

An unbiasedness test cannot see a bug that only changes the variance (a decoupled pair of
coupled draws, a baseline with the wrong sign, a leave-one-out mean over the wrong count,
a Rao-Blackwellized score multiplying a term it should not): the estimator stays
unbiased. Each test here computes the exact per-coordinate variance of ppl's estimator
independently (a closed form derived in the docstring, or an enumeration / quadrature
written here in plain numpy/JAX, never through ppl), measures the sample variance s² of
ppl's estimator over n keys, and requires |s² − V| < 4 SE(s²), with the standard error
of a sample variance SE(s²) = sqrt((m4 − s⁴) / n) (m4 the sample fourth central moment).

Each test also has a power check computed from the same reference: the variance of the
estimator with the named bug, V_bug, is at least ``POWER`` standard errors (of the bug's
own sample variance, from its exact fourth moment) away from V, so the bug fails the
pin at >= 8 SE. The bugs were also planted in ppl itself (tests/MUTATIONS.md).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import ppl
from models.coin import DATA, JOINT_Z0, JOINT_Z1
from models.coin import model as coin_model
from ppl.validate import estimator_stats

KEY = jax.random.PRNGKey(11)
N_SIGMA = 4.0  # the pin's tolerance in standard errors of the sample variance
POWER = 10.0  # each named bug's expected distance from the pin, in its own SEs (>= 8 + margin)


def variance_z(samples, exact_var):
    """Per coordinate: z = (s² − V) / SE(s²), s² and SE(s²) = sqrt((m4 − s⁴) / n)."""
    x = np.asarray(samples, np.float64)
    d = x - x.mean(0)
    s2, m4 = (d**2).mean(0), (d**4).mean(0)
    se = np.sqrt((m4 - s2**2) / x.shape[0])
    return (s2 - np.asarray(exact_var)) / se, s2, se


def assert_pinned(samples, exact_var, names):
    z, s2, se = variance_z(samples, exact_var)
    lines = [
        f"{n}: sample variance {a:.5g}, exact {v:.5g}, SE {e:.2g}, z {zz:+.1f}"
        for n, a, v, e, zz in zip(names, s2, np.asarray(exact_var), se, z, strict=True)
    ]
    print("\n".join(lines))
    assert np.all(np.abs(z) < N_SIGMA), "\n".join(lines)


def discrete_moments(probs, values):
    """Exact mean, variance and fourth central moment of a discrete distribution over
    rows of ``values`` (one column per coordinate)."""
    p = np.asarray(probs, np.float64)[:, None]
    v = np.asarray(values, np.float64)
    mean = np.sum(p * v, 0)
    d = v - mean
    return mean, np.sum(p * d**2, 0), np.sum(p * d**4, 0)


def power_z(var, var_bug, m4_bug, n):
    """Expected |s²_bug − V| in the bug's own standard errors for n samples."""
    return np.abs(var_bug - var) / np.sqrt((m4_bug - var_bug**2) / n)


# --------------------------------------------------------------------------------------
# coupled measure-valued derivative of a Normal
# --------------------------------------------------------------------------------------
MU, LOG_SIGMA = 0.3, -0.2


def mvd_program(theta):
    z = numpyro.sample("z", dist.Normal(theta[0], jnp.exp(theta[1])), infer={"grad": "mvd"})
    return z**2 + z


def test_coupled_mvd_normal_variance():
    """f(z) = z² + z, z ~ N(μ, σ), θ = (μ, log σ); a = 2μ + 1, R Rayleigh, M Maxwell,
    s a random sign, ε ~ N(0, 1), all independent:

    - value f(μ + σε) = const + aσε + σ²ε²: Var = a²σ² + 2σ⁴.
    - d/dμ, coupled: [f(μ + σR) − f(μ − σR)] / (σ√(2π)) = 2aR/√(2π):
      Var = 4a² Var(R) / (2π), Var(R) = 2 − π/2.
    - d/dlog σ = σ · [f(μ + σsM) − f(μ + σε)] / σ = aσ(sM − ε) + σ²(M² − ε²):
      Var = 4a²σ² + 8σ⁴ (E M² = 3, Var M² = 6 as M² ~ χ²₃; Var ε² = 2; odd moments 0).

    Bug, decoupled draws (R₁, R₂ independent): d/dμ = [aσ(R₁ + R₂) + σ²(R₁² − R₂²)] /
    (σ√(2π)): Var = [2a² Var(R) + 8σ²] / (2π) (R² ~ 2·Exp(1): Var R² = 4).
    """
    a, s = 2 * MU + 1, math.exp(LOG_SIGMA)
    var_r = 2 - math.pi / 2
    exact = [a**2 * s**2 + 2 * s**4, 4 * a**2 * var_r / (2 * math.pi), 4 * a**2 * s**2 + 8 * s**4]
    E = ppl.expectation(mvd_program)
    theta = jnp.array([MU, LOG_SIGMA])
    n = 6000
    _, _, samples = estimator_stats(lambda k: E.value_and_grad(k, theta), KEY, n)
    assert_pinned(samples, exact, ["value", "d/dmu", "d/dlog sigma"])
    # power: the decoupled estimator's variance (closed form above; its fourth moment by a
    # direct numpy simulation of the two Rayleigh draws)
    r = np.sqrt(-2 * np.log(np.random.default_rng(0).uniform(size=(2, 400_000))))
    bug = (a * s * (r[0] + r[1]) + s**2 * (r[0] ** 2 - r[1] ** 2)) / (s * math.sqrt(2 * math.pi))
    var_bug = (2 * a**2 * var_r + 8 * s**2) / (2 * math.pi)
    assert abs(bug.var() / var_bug - 1) < 0.01  # the closed form, checked
    m4_bug = np.mean((bug - bug.mean()) ** 4)
    assert power_z(exact[1], var_bug, m4_bug, n) > POWER


# --------------------------------------------------------------------------------------
# leave-one-out (VIMCO) baseline inside particles
# --------------------------------------------------------------------------------------
PZ = np.array([0.5, 0.3, 0.2])
MEANS = np.array([-1.0, 0.5, 2.0])
X_CAT = 0.8
K = 3
CAT_THETA = jnp.array([0.4, -0.3, 0.0])


def cat_model(x):
    z = numpyro.sample("z", dist.Categorical(probs=jnp.asarray(PZ)))
    numpyro.sample("x", dist.Normal(jnp.asarray(MEANS)[z], 1.0), obs=x)


def cat_guide(theta):
    numpyro.sample("z", dist.Categorical(logits=theta), infer={"grad": ppl.reinforce("loo")})


def iwae_program(theta):
    def log_weight():
        q = ppl.simulate(cat_guide, theta)
        return ppl.density(cat_model, q.values, X_CAT) - q.log_prob

    lw = ppl.particles(log_weight, K)()
    return jax.nn.logsumexp(lw) - math.log(K)


def vimco_reference(theta, divisor):
    """Every joint value of the K particles' latents: its probability and the estimator
    (value, gradient) there, written directly:

        g = sum_k ∇log q(z_k) (L − L₋ₖ) − sum_k w̃_k ∇log q(z_k),

    L = log mean exp(lw), L₋ₖ the same with lw_k replaced by sum_{j≠k} lw_j / divisor
    (divisor K − 1: the leave-one-out mean; K: the off-by-one bug), w̃ = softmax(lw),
    ∇log q(v) = e_v − softmax(θ), lw = log p(z) + log N(x; m_z, 1) − log q(z)."""
    logq = jax.nn.log_softmax(theta)
    loglik = jnp.log(PZ) - 0.5 * (X_CAT - MEANS) ** 2 - 0.5 * math.log(2 * math.pi)
    zs = jnp.array(list(itertools.product(range(3), repeat=K)))  # (27, K)

    def one(z):
        lw = loglik[z] - logq[z]
        value = jax.nn.logsumexp(lw) - math.log(K)
        score = jax.nn.one_hot(z, 3) - jax.nn.softmax(theta)  # (K, 3)
        others = (jnp.sum(lw) - lw) / divisor
        loo = jax.vmap(lambda k: jax.nn.logsumexp(lw.at[k].set(others[k])) - math.log(K))(
            jnp.arange(K)
        )
        grad = score.T @ (value - loo) - score.T @ jax.nn.softmax(lw)
        return jnp.concatenate([value[None], grad]), jnp.exp(jnp.sum(logq[z]))

    values, probs = jax.vmap(one)(zs)
    return np.asarray(probs), np.asarray(values)


def test_leave_one_out_baseline_variance():
    """VIMCO-style leave-one-out baseline inside ppl.particles (IWAE, K = 3, a
    categorical guide): exact variance by enumerating the 27 joint values; the reference
    is checked against jax.grad of the exactly enumerated IWAE bound. Bug: the mean of the
    others over K instead of K − 1 (an off-by-one; still unbiased)."""
    probs, values = vimco_reference(CAT_THETA, K - 1)

    def exact_iwae(theta):
        logq = jax.nn.log_softmax(theta)
        lw = jnp.log(PZ) - 0.5 * (X_CAT - MEANS) ** 2 - 0.5 * math.log(2 * math.pi) - logq
        zs = jnp.array(list(itertools.product(range(3), repeat=K)))
        p = jnp.exp(jnp.sum(logq[zs], 1))
        return jnp.sum(p * (jax.nn.logsumexp(lw[zs], 1) - math.log(K)))

    mean, var, _ = discrete_moments(probs, values)
    value, grad = jax.value_and_grad(exact_iwae)(CAT_THETA)
    np.testing.assert_allclose(mean, np.concatenate([[value], grad]), rtol=1e-4, atol=1e-5)
    E = ppl.expectation(iwae_program)
    n = 3000
    _, _, samples = estimator_stats(lambda k: E.value_and_grad(k, CAT_THETA), KEY, n)
    assert_pinned(samples, var, ["value", "d/dtheta0", "d/dtheta1", "d/dtheta2"])
    _, var_bug, m4_bug = discrete_moments(*vimco_reference(CAT_THETA, K))
    assert np.max(power_z(var, var_bug, m4_bug, n)[1:]) > POWER


# --------------------------------------------------------------------------------------
# Rao-Blackwellized scores in a plate (ELBO)
# --------------------------------------------------------------------------------------
X3 = np.array([-1.0, 0.5, 2.0])
P3 = jnp.array([0.3, 0.6, 0.8])


def plate_model(x):
    with numpyro.plate("d", 3):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def plate_guide(x):
    p = numpyro.param("p", jnp.full(3, 0.5), constraint=dist.constraints.unit_interval)
    with numpyro.plate("d", 3):
        numpyro.sample("z", dist.Bernoulli(p), infer={"grad": "reinforce"})


def elbo_reference(p, kind):
    """Every joint value z ∈ {0,1}³: probability and the ELBO estimator (value, ∂/∂p)
    there. c_i = log ½ + log N(x_i; 2z_i, 1) − log q_i(z_i), s_i = ∂ log q_i(z_i)/∂p_i
    (1/p_i or −1/(1 − p_i)):

    - ``"rb"`` (Rao-Blackwellized, own score dropped): g_i = s_i c_i;
    - ``"plain"``: g_i = s_i Σ_j c_j − s_i (the direct gradient of −log q_i);
    - ``"all_terms"`` (bug: every element's terms included): g_i = s_i Σ_j c_j."""
    rows, probs = [], []
    p = np.asarray(p, np.float64)
    for z in itertools.product((0.0, 1.0), repeat=3):
        z = np.array(z)
        q = np.where(z == 1, p, 1 - p)
        c = math.log(0.5) - 0.5 * (X3 - 2 * z) ** 2 - 0.5 * math.log(2 * math.pi) - np.log(q)
        s = np.where(z == 1, 1 / p, -1 / (1 - p))
        g = {"rb": s * c, "plain": s * c.sum() - s, "all_terms": s * c.sum()}[kind]
        rows.append(np.concatenate([[c.sum()], g]))
        probs.append(np.prod(q))
    return np.array(probs), np.array(rows)


def exact_plate_elbo(p):
    total = 0.0
    for z in (0.0, 1.0):
        q = jnp.where(z == 1, p, 1 - p)
        c = jnp.log(0.5) - 0.5 * (X3 - 2 * z) ** 2 - 0.5 * jnp.log(2 * jnp.pi) - jnp.log(q)
        total = total + jnp.sum(q * c)
    return total


def elbo_estimator(loss):
    def estimator(k):
        return jax.value_and_grad(lambda p: -loss.loss(k, {"p": p}, plate_model, plate_guide, X3))(
            P3
        )

    return estimator


def test_rao_blackwellized_score_variance():
    """Reinforce scores in a plate of 3, ELBO with and without Rao-Blackwellization:
    exact variances by enumerating the 8 joint values (reference checked against the
    gradient of the closed-form ELBO). Bug: the score of z_i multiplies every element's
    terms (a wrongly included term; unbiased)."""
    n = 4000
    names = ["value", "d/dp0", "d/dp1", "d/dp2"]
    exact_value, exact_grad = jax.value_and_grad(exact_plate_elbo)(P3)
    for kind, rb in (("rb", True), ("plain", False)):
        mean, var, _ = discrete_moments(*elbo_reference(P3, kind))
        np.testing.assert_allclose(mean, np.r_[exact_value, exact_grad], rtol=1e-5, atol=1e-6)
        loss = ppl.objectives.elbo(rao_blackwellize=rb)
        _, _, samples = estimator_stats(elbo_estimator(loss), KEY, n)
        assert_pinned(samples, var, [f"{kind} {x}" for x in names])
        if rb:
            _, var_bug, m4_bug = discrete_moments(*elbo_reference(P3, "all_terms"))
            assert np.max(power_z(var, var_bug, m4_bug, n)[1:]) > POWER


# --------------------------------------------------------------------------------------
# value and running baselines (a single Bernoulli site)
# --------------------------------------------------------------------------------------
P_COIN = 0.7
BASELINE = -2.5  # running state mean -1.0, weight 0.4: the same value


def coin_guide(baseline):
    def guide(data):
        p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
        b = ppl.running_baseline("b") if baseline == "running" else baseline
        numpyro.sample("z", dist.Bernoulli(p), infer={"grad": ppl.reinforce(baseline=b)})

    return guide


def coin_reference(b):
    """z ∈ {0, 1}: probability and the estimator (value, ∂/∂p) = (c, s(z)(c(z) − b)),
    c = log p(x, z) − log q(z), s(1) = 1/p, s(0) = −1/(1 − p) (own score dropped)."""
    p = P_COIN
    rows = []
    for joint, q, s in ((JOINT_Z1, p, 1 / p), (JOINT_Z0, 1 - p, -1 / (1 - p))):
        c = math.log(joint) - math.log(q)
        rows.append([c, s * (c - b)])
    return np.array([p, 1 - p]), np.array(rows)


def test_baseline_variance():
    """A fixed value baseline b and a running baseline whose state gives b (mean / weight
    = −1.0 / 0.4): exact variance of s(z)(c(z) − b) over z's two values. Bug: the
    baseline term with the wrong sign, s(z)(c(z) + b) (unbiased, as E s = 0)."""
    n = 3000
    loss = ppl.objectives.elbo()
    state = {"mean": jnp.asarray(-1.0), "weight": jnp.asarray(0.4)}
    mean, var, _ = discrete_moments(*coin_reference(BASELINE))
    exact_elbo = lambda p: (
        p * (math.log(JOINT_Z1) - jnp.log(p))
        + (1 - p)
        * (  # noqa: E731
            math.log(JOINT_Z0) - jnp.log(1 - p)
        )
    )
    np.testing.assert_allclose(mean, jax.value_and_grad(exact_elbo)(P_COIN), rtol=1e-5)
    for which, params in (("value", {}), ("running", {"b": state})):
        guide = coin_guide(which if which == "running" else BASELINE)

        def estimator(k, guide=guide, params=params):
            def objective(p):
                return -loss.loss(k, {"p": p, **params}, coin_model, guide, DATA)

            return jax.value_and_grad(objective)(jnp.asarray(P_COIN))

        _, _, samples = estimator_stats(estimator, KEY, n)
        assert_pinned(samples, var, [f"{which}: value", f"{which}: d/dp"])
    _, var_bug, m4_bug = discrete_moments(*coin_reference(-BASELINE))
    assert power_z(var, var_bug, m4_bug, n)[1] > POWER


# --------------------------------------------------------------------------------------
# doubly-reparameterized IWAE gradients
# --------------------------------------------------------------------------------------
X_GAUSS = 1.3
DREG_PARAMS = {"m": jnp.array(0.2), "s": jnp.array(0.9), "m0": jnp.array(0.1)}
DREG_K = 3


def gauss_model(x):
    z = numpyro.sample("z", dist.Normal(numpyro.param("m0", 0.0), 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def gauss_guide(x):
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), numpyro.param("s", 1.0)))


def dreg_reference(eps, m, s, m0, power=2, kind="iwae"):
    """A doubly-reparameterized estimator at guide noise ``eps`` (K,), written directly:
    z = m + s ε, lw = log N(z; m0, 1) + log N(x; z, 1) − log N(z; m, s), w̃ = softmax(lw),
    ∂lw/∂z (q's parameters held) = −(z − m0) + (x − z) + (z − m)/s²;
    (value, ∂/∂m, ∂/∂m0, ∂/∂s) = (log mean exp lw, Σ v ∂lw/∂z, Σ w̃ (z − m0),
    Σ v ∂lw/∂z ε) with v = w̃² for IWAE (``power=1``, v = w̃, is the bug) and v = w̃ − w̃²
    for reweighted wake-sleep (``kind="rws"``); ``kind="rws_plain"``: the plain wake-phi
    Σ w̃ ∇log q(z) at fixed z, ∇_m log q = (z − m)/s², ∇_s log q = (z − m)²/s³ − 1/s."""
    z = m + s * eps
    lw = (
        -0.5 * (z - m0) ** 2
        - 0.5 * (X_GAUSS - z) ** 2
        + 0.5 * eps**2
        + jnp.log(s)
        - 0.5 * jnp.log(2 * jnp.pi)
    )
    w = jax.nn.softmax(lw)
    dz = -(z - m0) + (X_GAUSS - z) + (z - m) / s**2
    value = jax.nn.logsumexp(lw) - jnp.log(eps.shape[0])
    theta = jnp.sum(w * (z - m0))
    if kind == "rws_plain":
        return jnp.stack([value, jnp.sum(w * eps / s), theta, jnp.sum(w * (eps**2 - 1) / s)])
    v = w - w**2 if kind == "rws" else w**power
    return jnp.stack([value, jnp.sum(v * dz), theta, jnp.sum(v * dz * eps)])


def quadrature_moments(fn, num_nodes):
    """E[fn(ε)], Var and fourth central moment per coordinate, ε ~ N(0, I_K), by a
    tensor Gauss-Hermite rule (num_nodes per axis)."""
    t, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    w = w / math.sqrt(2 * math.pi)
    grid = np.stack(np.meshgrid(*([t] * DREG_K), indexing="ij"), -1).reshape(-1, DREG_K)
    weight = np.prod(np.stack(np.meshgrid(*([w] * DREG_K), indexing="ij"), -1), -1).ravel()
    values = np.asarray(jax.vmap(fn)(jnp.asarray(grid)), np.float64)
    return discrete_moments(weight, values)


def test_dreg_iwae_mean_and_variance():
    """DReG (IWAE, K = 3) on the conjugate Normal model: its exact mean and variance per
    coordinate by Gauss-Hermite quadrature of the estimator written directly (converged:
    20 vs 28 nodes per axis), the mean checked against the gradient of the quadrature
    IWAE bound (the DReG identity). An independent reference for ppl's DReG, rather than
    ppl's own IWAE. Bug: w̃ for w̃² in the guide terms (biased: caught by the mean)."""
    m, s, m0 = (DREG_PARAMS[k] for k in ("m", "s", "m0"))
    ref = lambda e: dreg_reference(e, m, s, m0)  # noqa: E731
    mean, var, _ = quadrature_moments(ref, 28)
    coarse = quadrature_moments(ref, 20)
    np.testing.assert_allclose(coarse[0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(coarse[1], var, rtol=1e-4, atol=1e-6)

    t, w = np.polynomial.hermite_e.hermegauss(20)
    grid = jnp.asarray(np.stack(np.meshgrid(*([t] * DREG_K), indexing="ij"), -1).reshape(-1, 3))
    weight = np.prod(np.stack(np.meshgrid(*([w] * DREG_K), indexing="ij"), -1), -1).ravel()
    weight = jnp.asarray(weight / math.sqrt(2 * math.pi) ** DREG_K)

    def iwae_bound(m, s, m0):  # E over ε of log mean exp lw(m + s ε), by quadrature
        return jnp.sum(weight * jax.vmap(lambda e: dreg_reference(e, m, s, m0)[0])(grid))

    # the DReG identity: E[estimator] = ∇ IWAE bound (autodiff of the quadrature rule)
    grad = jax.grad(iwae_bound, argnums=(0, 2, 1))(m, s, m0)  # order: m, m0, s
    np.testing.assert_allclose(mean[1:], np.array(grad), rtol=1e-4, atol=1e-5)
    loss = ppl.objectives.iwae(DREG_K, dreg=True)
    n = 6000

    def estimator(k):
        return jax.value_and_grad(lambda p: -loss.loss(k, p, gauss_model, gauss_guide, X_GAUSS))(
            DREG_PARAMS
        )

    est_mean, est_se, samples = estimator_stats(estimator, KEY, n)
    z_mean = (est_mean - mean) / est_se
    print("mean z:", np.round(z_mean, 2))
    assert np.all(np.abs(z_mean) < N_SIGMA), (est_mean, mean, est_se)
    assert_pinned(samples, var, ["value", "d/dm", "d/dm0", "d/ds"])
    bug_mean, bug_var, _ = quadrature_moments(lambda e: dreg_reference(e, m, s, m0, 1), 20)
    bug_z = np.abs(bug_mean - mean) / np.sqrt(bug_var / n)
    assert max(bug_z[1], bug_z[3]) > POWER, bug_z


def test_rws_dreg_mean_and_variance():
    """Reweighted wake-sleep with DReG's wake-phi (K = 3) on the same conjugate model: exact
    mean and variance by quadrature of the estimator written directly; its mean equals the
    quadrature mean of the plain wake-phi Σ w̃ ∇log q(z) (the DReG identity for RWS). An
    independent reference for ppl's rws(dreg=True) and for ppl's plain rws, rather than
    each other."""
    m, s, m0 = (DREG_PARAMS[k] for k in ("m", "s", "m0"))
    mean, var, _ = quadrature_moments(lambda e: dreg_reference(e, m, s, m0, kind="rws"), 24)
    plain, plain_var, _ = quadrature_moments(
        lambda e: dreg_reference(e, m, s, m0, kind="rws_plain"), 24
    )
    np.testing.assert_allclose(plain, mean, rtol=1e-4, atol=1e-5)
    n = 4000
    for dreg, exact_mean, exact_var in ((True, mean, var), (False, plain, plain_var)):
        loss = ppl.objectives.rws(DREG_K, dreg=dreg)

        def estimator(k, loss=loss):
            def objective(p):
                return -loss.loss(k, p, gauss_model, gauss_guide, X_GAUSS)

            return jax.value_and_grad(objective)(DREG_PARAMS)

        est_mean, est_se, samples = estimator_stats(estimator, KEY, n)
        z_mean = (est_mean - exact_mean) / est_se
        print(f"rws(dreg={dreg}) mean z:", np.round(z_mean, 2))
        assert np.all(np.abs(z_mean) < N_SIGMA), (est_mean, exact_mean, est_se)
        assert_pinned(samples, exact_var, [f"dreg={dreg} {c}" for c in ("value", "m", "m0", "s")])
