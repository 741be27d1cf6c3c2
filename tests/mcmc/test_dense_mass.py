"""NumPyro's ``dense_mass`` in ppl's HMC and NUTS: a dense (or NumPyro's structured) inverse
mass matrix M⁻¹ with BlackJAX's conventions (p = L⁻ᵀε for M⁻¹ = L Lᵀ, velocity M⁻¹p,
kinetic energy ½pᵀM⁻¹p), adapted by NumPyro's ``warmup_adapter`` (Welford covariance,
Stan's regularization).

The statistical target is a 5-d Gaussian with correlation 0.99 between every pair and
scales 0.1 … 10: after the diagonal is whitened its condition number is still
(1 + 4·0.99)/0.01 ≈ 500, which a dense metric removes. Means and covariance entries are
checked within 4 Monte-Carlo standard errors (from the ESS NumPyro's
``effective_sample_size`` reports for each statistic).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.hmc_util import build_adaptation_schedule

from ppl import mcmc
from ppl.mcmc.metric import euclidean
from tests.mcmc.runs import run_mcmc

D = 5
SCALES = np.array([0.1, 0.3, 1.0, 3.0, 10.0])
CORR = np.full((D, D), 0.99) + 0.01 * np.eye(D)
COV = SCALES[:, None] * CORR * SCALES[None, :]
TRIL = np.linalg.cholesky(COV)
MEAN = np.array([1.0, -2.0, 3.0, 0.0, 5.0])
NUM_WARMUP = 1000


def gaussian():
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(MEAN), scale_tril=jnp.asarray(TRIL)))


def spd(key, d):
    a = jax.random.normal(key, (d, d))
    return a @ a.T / d + 0.5 * jnp.eye(d)


# --- the metric itself ---------------------------------------------------------------


def momentum_matrix(metric, d):
    """The linear map ε -> p of ``metric.momentum``: p ~ N(0, S Sᵀ)."""
    return np.asarray(jax.jacfwd(metric.momentum)(jnp.zeros(d)), np.float64)


def test_dense_metric_is_blackjaxs_gaussian_euclidean():
    """Momentum covariance S Sᵀ = M (the inverse of M⁻¹), velocity M⁻¹p, kinetic ½pᵀM⁻¹p,
    and the momentum draw is BlackJAX's from the same key."""
    from blackjax.mcmc.metrics import gaussian_euclidean

    imm = spd(jax.random.key(0), 4)
    metric = euclidean(imm, jnp.zeros(4))
    s = momentum_matrix(metric, 4)
    np.testing.assert_allclose(s @ s.T, np.linalg.inv(np.asarray(imm, np.float64)), rtol=2e-4)
    p = jax.random.normal(jax.random.key(1), (4,))
    np.testing.assert_allclose(metric.velocity(p), imm @ p, rtol=1e-5)
    np.testing.assert_allclose(metric.kinetic(p), 0.5 * p @ imm @ p, rtol=1e-5)
    key = jax.random.key(2)
    theirs = gaussian_euclidean(imm).sample_momentum(key, jnp.zeros(4))
    ours = metric.momentum(jax.random.normal(key, (4,)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_structured_metric_is_the_permuted_block_matrix():
    """NumPyro's structured form {("c", "a"): dense, ("b",): diagonal} over a dict position
    is the block-diagonal matrix after its permutation of the flattened (sorted) sites."""
    position = {"a": jnp.zeros(2), "b": jnp.zeros(()), "c": jnp.zeros(4)}
    dense = spd(jax.random.key(3), 6)
    blocks = {("c", "a"): dense, ("b",): jnp.array([2.5])}
    full = np.zeros((7, 7))
    # c then a, in the flat order a(0, 1) b(2) c(3 … 6): a permutation that is not its
    # own inverse, so that applying it instead of its inverse shows
    idx = np.array([3, 4, 5, 6, 0, 1])
    full[np.ix_(idx, idx)] = dense
    full[2, 2] = 2.5
    metric = euclidean(blocks, position)
    p = jax.random.normal(jax.random.key(4), (7,))
    np.testing.assert_allclose(metric.velocity(p), full @ p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metric.kinetic(p), 0.5 * p @ full @ p, rtol=1e-5)
    s = momentum_matrix(metric, 7)
    np.testing.assert_allclose(s @ s.T, np.linalg.inv(full), rtol=2e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"in no block"):
        euclidean({("a",): jnp.ones(2)}, position)


# --- one transition against BlackJAX -------------------------------------------------


# the last 4 coordinates of the correlated Gaussian, scales 0.3 … 10 (so the comparisons run
# in float64: in float32 the condition number of 500 amplifies the rounding difference of
# BlackJAX's velocity ∇K = ½(M⁻¹ + M⁻ᵀ)p and ppl's M⁻¹p to ~1e-3 over a long trajectory)
PRECISION = np.linalg.inv(COV[1:, 1:])
NEAR_IMM = COV[1:, 1:] * 0.7  # a near, not exact, metric


def correlated_logdensity(z):
    x = jnp.concatenate([z["a"], z["b"][None]])
    return -0.5 * x @ jnp.asarray(PRECISION) @ x


def _flat_position(state) -> jax.Array:
    return jax.flatten_util.ravel_pytree(state.position)[0]


def chain_states(kernel, n=200):
    start = {"a": jnp.array([0.1, -0.5, 2.0]), "b": jnp.array(0.3)}
    run = lambda key: jax.lax.scan(  # noqa: E731
        lambda s, k: (kernel.step(k, s)[0],) * 2, kernel.init(start), jax.random.split(key, n)
    )[1]
    return jax.jit(run)(jax.random.key(0)).position


@jax.enable_x64(True)
def test_dense_nuts_transition_is_blackjaxs():
    """200 states along a chain, one dense-metric transition each from the same key: the
    same numbers of leapfrog steps and divergence flags as BlackJAX's NUTS, the same
    proposal and acceptance statistic."""
    from blackjax.mcmc import hmc as bj_hmc
    from blackjax.mcmc import nuts as bj_nuts

    step_size, imm = 0.8, jnp.asarray(NEAR_IMM)
    ours = mcmc.nuts(correlated_logdensity, step_size, imm, max_num_doublings=6)
    theirs = bj_nuts.build_kernel()

    def both(z, key):
        state = ours.init(z)
        new, info = ours.step(key, state)
        bj_new, bj_info = theirs(
            key, bj_hmc.HMCState(*state), correlated_logdensity, step_size, imm, 6
        )
        return (
            (_flat_position(new), info.num_steps, info.acceptance_rate, info.is_divergent),
            (
                _flat_position(bj_new),
                bj_info.num_integration_steps,
                bj_info.acceptance_rate,
                bj_info.is_divergent,
            ),
        )

    positions = chain_states(ours)
    keys = jax.random.split(jax.random.key(1), 200)
    (x, n, acc, div), (bx, bn, bacc, bdiv) = jax.jit(jax.vmap(both))(positions, keys)
    np.testing.assert_array_equal(n, bn)
    np.testing.assert_array_equal(div, bdiv)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, bx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(acc, bacc, rtol=1e-10, atol=1e-12)
    assert len(np.unique(n)) >= 3  # trees of several lengths


@jax.enable_x64(True)
def test_dense_hmc_transition_is_blackjaxs():
    """HMC (no jitter) with a dense metric: from the same key, BlackJAX's HMC proposal,
    acceptance probability and decision."""
    from blackjax.mcmc import hmc as bj_hmc

    step_size, num_steps, imm = 0.5, 7, jnp.asarray(NEAR_IMM)
    ours = mcmc.hmc(correlated_logdensity, step_size, num_steps, imm)
    theirs = bj_hmc.build_kernel()

    def both(z, key):
        state = ours.init(z)
        new, info = ours.step(key, state)
        bj_new, bj_info = theirs(
            key, bj_hmc.HMCState(*state), correlated_logdensity, step_size, imm, num_steps
        )
        return (_flat_position(new), info.acceptance_rate, info.is_accepted), (
            _flat_position(bj_new),
            bj_info.acceptance_rate,
            bj_info.is_accepted,
        )

    positions = chain_states(ours)
    keys = jax.random.split(jax.random.key(1), 200)
    (x, acc, ok), (bx, bacc, bok) = jax.jit(jax.vmap(both))(positions, keys)
    np.testing.assert_array_equal(ok, bok)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, bx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(acc, bacc, rtol=1e-10, atol=1e-12)
    assert 0 < ok.mean() < 1


# --- NumPyro's keyword -----------------------------------------------------------------


def two_sites():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))
    numpyro.sample("y", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "dense_mass, match",
    [
        ("x", "True, False or a list"),
        ([["x"]], "tuples of site names"),
        ([("x",), ("x", "y")], r"more than one block"),
    ],
)
def test_malformed_dense_mass_is_refused(dense_mass, match):
    with pytest.raises(ValueError, match=match):
        mcmc.NUTS(two_sites, dense_mass=dense_mass)


def test_structured_mass_checks():
    """An unknown site, a dict inverse mass matrix over some of the sites without a
    structured dense_mass and a matrix that is not positive definite are named before
    anything runs."""
    from numpyro.infer import MCMC

    run = lambda k: MCMC(k, num_warmup=2, num_samples=2, progress_bar=False).run(  # noqa: E731
        jax.random.key(0)
    )
    with pytest.raises(ValueError, match=r"\['z'\] that are not latent sites"):
        run(mcmc.NUTS(two_sites, dense_mass=[("x", "z")]))
    # (one block over all the sites is NumPyro's report of a full matrix, and is accepted:
    # test_numpyro_swap.py::test_numpyros_reported_inverse_mass_matrix_carries_over)
    with pytest.raises(ValueError, match="needs dense_mass given as the list"):
        run(mcmc.HMC(two_sites, dense_mass=True, inverse_mass_matrix={("x",): jnp.eye(2)}))
    with pytest.raises(ValueError, match="not positive definite"):
        mcmc.NUTS(two_sites, dense_mass=True, inverse_mass_matrix=jnp.array([[1.0, 2], [2, 1]]))
    assert mcmc.NUTS(two_sites, dense_mass=[])._mass_structure is False  # NumPyro: [] is diagonal


# --- the correlated Gaussian -----------------------------------------------------------


def check_moments(draws):
    """Means and covariance entries of ``draws`` (chain, draw, d) within 4 MCSE of the exact
    ones; the SE of each statistic from its own ESS. Returns the worst |z|."""
    draws = np.asarray(draws, np.float64)
    worst = 0.0
    stats = [(draws[..., i], MEAN[i], f"mean[{i}]") for i in range(D)]
    centred = draws - MEAN
    for i in range(D):
        for j in range(i, D):
            stats.append((centred[..., i] * centred[..., j], COV[i, j], f"cov[{i},{j}]"))
    for y, exact, name in stats:
        ess = float(effective_sample_size(y))
        se = y.std(ddof=1) / np.sqrt(ess)
        z = (y.mean() - exact) / se
        assert abs(z) < 4, (name, y.mean(), exact, se, ess)
        worst = max(worst, abs(z))
    return worst


def whitened_spectrum(imm):
    """Eigenvalues of Σ^(-1/2) M⁻¹ Σ^(-1/2): all 1 when M⁻¹ is the exact covariance Σ."""
    w = np.linalg.inv(np.linalg.cholesky(COV))
    return np.linalg.eigvalsh(w @ np.asarray(imm, np.float64) @ w.T)


def check_adapted_matrix(m, draws):
    """The adapted M⁻¹ of each chain is the last slow window's regularized Welford
    covariance, so after whitening by the exact Σ its eigenvalues are those of a sample
    covariance of n draws in d dimensions: within (1 ± 3√(d/n_eff))² (beyond the
    Marchenko-Pastur edges (1 ± √(d/n))²), n_eff = n × the chain's ESS per draw (≤ 1), the
    lower edge 0 when 3√(d/n_eff) ≥ 1."""
    window = build_adaptation_schedule(NUM_WARMUP)[-2]
    n = window.end - window.start + 1
    imm = np.asarray(m.last_state.adapt_state.inverse_mass_matrix, np.float64)
    assert imm.shape == (draws.shape[0], D, D)
    for c in range(draws.shape[0]):
        ess = min(float(effective_sample_size(draws[c : c + 1, :, i])) for i in range(D))
        n_eff = n * min(1.0, ess / draws.shape[1])
        r = 3 * np.sqrt(D / n_eff)
        ev = whitened_spectrum(imm[c])
        assert max(0.0, 1 - r) ** 2 < ev.min() and ev.max() < (1 + r) ** 2, (c, ev, r)


def dense_kernel(kind):
    if kind == "nuts":
        return mcmc.NUTS(gaussian, dense_mass=True)
    return mcmc.HMC(gaussian, num_steps=8, dense_mass=True)


# min ESS (of 2 × 1000 draws) a whitened Gaussian must reach: measured over 5 seeds
# (benchmarks/DENSE_MASS_RESULTS.md) NUTS 1914–2867, HMC(8) 382–733; the diagonal NUTS
# reaches 172–288 with ~4× the gradients
MIN_ESS = {"nuts": 1000, "hmc": 200}


@pytest.mark.parametrize("kind", ["nuts", pytest.param("hmc", marks=pytest.mark.slow)])
def test_dense_mass_samples_a_correlated_gaussian(kind):
    """2 vectorized chains, 1000 warm-up + 1000 draws: the moments are right, the adapted
    M⁻¹ is the posterior covariance (whitened eigenvalues near 1), the draws mix as on a
    whitened Gaussian (min ESS; NUTS's trees short), ``extra_fields`` name the matrix."""
    fields = ("num_steps", "adapt_state.inverse_mass_matrix", "adapt_state.step_size")
    m = run_mcmc(dense_kernel(kind), num_warmup=NUM_WARMUP, num_samples=1000, extra_fields=fields)
    draws = np.asarray(m.get_samples(group_by_chain=True)["x"])
    check_moments(draws)
    ess = float(np.min(effective_sample_size(np.asarray(draws, np.float64))))
    assert ess > MIN_ESS[kind], ess
    check_adapted_matrix(m, draws)
    extra = m.get_extra_fields(group_by_chain=True)
    assert extra["adapt_state.inverse_mass_matrix"].shape == (2, 1000, D, D)
    if kind == "nuts":
        assert float(np.mean(extra["num_steps"])) < 10, np.mean(extra["num_steps"])


@pytest.mark.slow  # fast-suite budget: the continuation is also covered for diagonal kernels
def test_post_warmup_state_continues_with_the_adapted_dense_matrix():
    """A continuation (``post_warmup_state``) keeps the adapted matrix and step size."""
    m = run_mcmc(mcmc.NUTS(gaussian, dense_mass=True), num_warmup=300, num_samples=50)
    adapted = np.asarray(m.last_state.adapt_state.inverse_mass_matrix)
    step = np.asarray(m.last_state.adapt_state.step_size)
    m.post_warmup_state = m.last_state
    m.run(jax.random.key(1))
    np.testing.assert_array_equal(m.last_state.adapt_state.inverse_mass_matrix, adapted)
    np.testing.assert_array_equal(m.last_state.adapt_state.step_size, step)


def correlated_and_independent():
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(MEAN[:2]), scale_tril=TRIL[:2, :2]))
    numpyro.sample("y", dist.Normal(0.0, jnp.array([0.01, 100.0])))


def test_structured_dense_mass_is_numpyros():
    """``dense_mass=[("x",)]``: NumPyro's dict {("x",): (2, 2) dense, ("y",): (2,) diagonal},
    each block adapted to its sites' covariance (whitened eigenvalues near 1)."""
    m = run_mcmc(
        mcmc.NUTS(correlated_and_independent, dense_mass=[("x",)]),
        num_warmup=NUM_WARMUP,
        num_samples=500,
    )
    imm = m.last_state.adapt_state.inverse_mass_matrix
    assert set(imm) == {("x",), ("y",)}
    assert imm[("x",)].shape == (2, 2, 2) and imm[("y",)].shape == (2, 2)
    w = np.linalg.inv(np.linalg.cholesky(COV[:2, :2]))
    for c in range(2):
        ev = np.linalg.eigvalsh(w @ np.asarray(imm[("x",)][c], np.float64) @ w.T)
        assert 0.5 < ev.min() and ev.max() < 1.6, ev
        ratio = np.asarray(imm[("y",)][c]) / np.array([0.01, 100.0]) ** 2
        assert np.all((0.5 < ratio) & (ratio < 1.6)), ratio
    x = np.asarray(m.get_samples()["x"], np.float64)
    assert abs(np.corrcoef(x.T)[0, 1] - 0.99) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_nuts_beats_diagonal_per_gradient(seed):
    """Min ESS per gradient evaluation: dense NUTS ≥ 10× diagonal NUTS on the correlated
    Gaussian (measured over 5 seeds, benchmarks/DENSE_MASS_RESULTS.md: dense 177–219e-3,
    diagonal 4.2–7.0e-3, ≈ 40×), and the diagonal run is right too (moments within 4 MCSE)."""
    per_grad = {}
    for dense in (True, False):
        m = run_mcmc(
            mcmc.NUTS(gaussian, dense_mass=dense),
            num_warmup=NUM_WARMUP,
            num_samples=1000,
            seed=seed,
            extra_fields=("num_steps",),
        )
        draws = np.asarray(m.get_samples(group_by_chain=True)["x"], np.float64)
        check_moments(draws)
        grads = float(np.sum(m.get_extra_fields()["num_steps"]))
        per_grad[dense] = float(np.min(effective_sample_size(draws))) / grads
    assert per_grad[True] > 10 * per_grad[False], per_grad
