"""Every ``ppl.validate`` checker fails on garbage (issue 18, part 3).

A NaN compares False against every threshold, so a checker written as
``if error > tol: fail`` passes an estimator that returns NaN. Each checker here is fed a
planted NaN or ±inf (in an estimate, a transition probability, a test statistic, a
posterior draw or an exact reference) and must raise; each kernel checker is fed a kernel
that never moves (every proposal rejected, as a NaN log density does), which is
invariant for every target and so tests nothing. Each report's ``ok`` is True only when
the claim holds. Sizes are small: these are checks of the checkers, not of estimators.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl.validate.fuzz as fuzz
from ppl import mcmc
from ppl.validate import (
    InvarianceReport,
    SBCReport,
    UnbiasedReport,
    check_binned_invariance,
    check_geweke,
    check_invariance,
    check_kernel_invariance,
    check_sbc,
    check_stationarity,
    check_unbiased,
    estimator_stats,
    transition_matrix,
)
from tests.mcmc.linear_regression import linear_regression

KEY = jax.random.key(0)
FUZZ_KEY = jax.random.PRNGKey(0)  # the fuzzer compiles for raw uint32 keys
EXACT = jnp.array([0.5, -1.0, 2.0])


def noisy(planted=None, index=1):
    """An unbiased estimator of EXACT (unit Gaussian noise) with ``planted`` in one
    coordinate of every sample (or of none)."""

    def estimator(key):
        x = EXACT + jax.random.normal(key, (3,))
        return x if planted is None else x.at[index].set(planted)

    return estimator


# --- check_unbiased / estimator_stats --------------------------------------------------
def test_check_unbiased_passes_a_sound_estimator():
    report = check_unbiased(noisy(), EXACT, KEY, 400, require_variance=True)
    assert report.ok and report.max_abs_z() < 4


@pytest.mark.parametrize("planted", [np.nan, np.inf, -np.inf])
def test_check_unbiased_fails_on_nonfinite_estimates(planted):
    with pytest.raises(AssertionError, match=r"NaN or inf in 1 of 3 coordinates:\n  \[1\]"):
        check_unbiased(noisy(planted), EXACT, KEY, 400)


def test_check_unbiased_fails_on_one_nonfinite_sample():
    """A few NaN among 400 samples, and +inf/-inf samples whose mean would be NaN."""

    def one_nan(key):
        x = EXACT + jax.random.normal(key, (3,))
        return x.at[0].set(jnp.where(jax.random.uniform(key) < 0.01, jnp.nan, x[0]))

    with pytest.raises(AssertionError, match="NaN or inf"):
        check_unbiased(one_nan, EXACT, KEY, 400)

    def signed_inf(key):
        return EXACT.at[2].set(jnp.where(jax.random.bernoulli(key), jnp.inf, -jnp.inf))

    with pytest.raises(AssertionError, match="NaN or inf"):
        check_unbiased(signed_inf, EXACT, KEY, 400)


def test_check_unbiased_refuses_a_nonfinite_reference():
    with pytest.raises(ValueError, match=r"exact has non-finite entries at \[2\]"):
        check_unbiased(noisy(), EXACT.at[2].set(jnp.nan), KEY, 10)


def test_check_unbiased_zero_variance():
    """A constant estimator: fine where it equals the exact value (an exactly computed
    coordinate), a failure where it does not, and a failure where the caller declared
    that the estimator must be random (a hard-coded answer)."""
    constant = lambda key: EXACT  # noqa: E731
    assert check_unbiased(constant, EXACT, KEY, 50).ok
    with pytest.raises(AssertionError, match="biased beyond"):
        check_unbiased(constant, EXACT + 1e-3, KEY, 50)
    with pytest.raises(AssertionError, match=r"constant in coordinates \[0, 2\]"):
        check_unbiased(constant, EXACT, KEY, 50, require_variance=[True, False, True])
    with pytest.raises(AssertionError, match=r"constant in coordinates \[0, 1, 2\]"):
        check_unbiased(constant, EXACT, KEY, 50, require_variance=True)


def test_unbiased_report_ok_means_the_claim_holds():
    good = UnbiasedReport(np.zeros(2), np.ones(2), np.zeros(2), np.array([0.5, 3.9]), 10, 4.0)
    assert good.ok
    assert not good._replace(z=np.array([0.5, 4.1])).ok  # finite but biased
    assert not good._replace(mean=np.array([np.nan, 0.0]), z=np.array([np.nan, 0.0])).ok
    assert not good._replace(stderr=np.array([np.inf, 1.0])).ok


def test_estimator_stats_fails_on_nonfinite_samples():
    with pytest.raises(AssertionError, match=r"NaN or inf in 1 of 3 coordinates:\n  \[1\]"):
        estimator_stats(noisy(np.nan), KEY, 100)
    mean, _, _ = estimator_stats(noisy(np.inf), KEY, 100, allow_nonfinite=True)
    assert np.isinf(mean[1])


# --- exact invariance ------------------------------------------------------------------
PI = np.array([0.2, 0.3, 0.5])
P_GIBBS = np.tile(PI, (3, 1))  # independent draws from π: invariant and reversible


def test_check_invariance_fails_on_nonfinite_inputs():
    assert check_invariance(P_GIBBS, PI).ok
    P = P_GIBBS.copy()
    P[1, 2] = np.nan
    with pytest.raises(
        AssertionError, match=r"P: 1 of 9 entries are NaN or inf \(first at \(1, 2\)"
    ):
        check_invariance(P, PI)
    with pytest.raises(AssertionError, match="π: 1 of 3"):
        check_invariance(P_GIBBS, PI * np.array([1.0, np.inf, 1.0]))
    with pytest.raises(AssertionError, match="stderr: 3 of 9"):
        check_invariance(P_GIBBS, PI, np.where(np.eye(3) > 0, np.nan, 0.01))


def test_check_invariance_fails_on_a_kernel_that_never_moves():
    with pytest.raises(AssertionError, match="P is the identity"):
        check_invariance(np.eye(3), PI)
    assert check_invariance(np.eye(3), PI, require_moves=False).ok


def test_kernel_checkers_fail_on_a_nan_log_density():
    """MH on a NaN target: exact transition probabilities are NaN or the identity, and
    sampled steps never move; each way it fails."""
    states = jnp.arange(3)
    nan_logp = lambda x: jnp.log(jnp.array(PI))[x] * jnp.nan  # noqa: E731
    kernel = mcmc.mh(nan_logp, lambda x: dist.Categorical(probs=jnp.ones(3) / 3))
    with pytest.raises(AssertionError, match="cannot be checked"):
        check_kernel_invariance(kernel, lambda x: jnp.log(jnp.array(PI))[x], states)
    with pytest.raises(AssertionError, match="cannot be checked"):
        check_kernel_invariance(
            kernel, lambda x: jnp.log(jnp.array(PI))[x], states, key=KEY, num_samples=200
        )


def test_invariance_report_ok():
    assert InvarianceReport(0.0, 0.0, None, None).ok
    assert not InvarianceReport(0.0, 0.0, None, None, ("  (πP − π)[0]: residual 0.1",)).ok
    assert not InvarianceReport(np.nan, None, None, None).ok


def test_transition_matrix_estimate_of_a_nan_kernel():
    """The sampled matrix of a kernel with NaN log density is the identity (all rejected)."""
    nan_logp = lambda x: jnp.nan * x  # noqa: E731
    kernel = mcmc.mh(nan_logp, lambda x: dist.Categorical(probs=jnp.ones(3) / 3))
    P, se = transition_matrix(kernel, jnp.arange(3), KEY, 100)
    np.testing.assert_array_equal(P, np.eye(3))
    with pytest.raises(AssertionError, match="P is the identity"):
        check_invariance(P, PI, se)


# --- statistical invariance on a continuous target ---------------------------------------
def logp(x):
    return -0.5 * jnp.sum(x**2)


def sample(key, n):
    return jax.random.normal(key, (n, 2))


RW = mcmc.random_walk(logp, 1.0)
STUCK = mcmc.random_walk(lambda x: jnp.nan * jnp.sum(x), 1.0)  # rejects everything


def exploding(logdensity_fn):
    """A kernel whose step sends a chain to +inf with probability 1/2."""
    inner = mcmc.random_walk(logdensity_fn, 1.0)

    def step(key, state):
        new, info = inner.step(key, state)
        blow = jax.random.bernoulli(jax.random.fold_in(key, 1))
        return inner.init(jnp.where(blow, jnp.inf, new.position)), info

    return mcmc.Kernel(inner.init, step)


def test_stationarity_passes_and_reports_ok():
    report = check_stationarity(RW, sample, KEY, num_chains=2000, num_steps=2)
    assert report.ok and report.moved > 0.5


@pytest.mark.parametrize(
    "kernel, message", [(STUCK, "no chain moved"), (exploding(logp), "NaN or inf")]
)
def test_stationarity_fails_on_garbage(kernel, message):
    with pytest.raises(AssertionError, match=message):
        check_stationarity(kernel, sample, KEY, num_chains=500, num_steps=2)


def test_stationarity_fails_on_a_nan_statistic():
    with pytest.raises(AssertionError, match=r"f\(x_T\): 500 of 1000 entries"):
        check_stationarity(
            RW,
            sample,
            KEY,
            num_chains=500,
            num_steps=1,
            test_fn=lambda x: jnp.stack([x[0], jnp.nan]),
        )


@pytest.mark.parametrize(
    "kernel, message", [(STUCK, "no chain moved"), (exploding(logp), "NaN or inf")]
)
def test_binned_invariance_fails_on_garbage(kernel, message):
    with pytest.raises(AssertionError, match=message):
        check_binned_invariance(kernel, sample, KEY, num_chains=500)


# --- Geweke and SBC on a Normal–Normal model -------------------------------------------
X, logjoint, sample_data, sample_joint = linear_regression(jnp.linspace(-1.0, 1.0, 3))


@pytest.mark.parametrize(
    "make_kernel, data, message",
    [
        (lambda ld: mcmc.random_walk(lambda t: jnp.nan * ld(t), 0.5), sample_data, "no chain"),
        (lambda ld: mcmc.random_walk(ld, 0.5), lambda k, t: sample_data(k, t) / 0.0, "NaN or inf"),
    ],
    ids=["stuck", "nan_data"],
)
def test_geweke_fails_on_garbage(make_kernel, data, message):
    with pytest.raises(AssertionError, match=message):
        check_geweke(make_kernel, logjoint, sample_joint, data, KEY, num_chains=500, num_iters=2)


def sbc_joint(key):
    theta, y = sample_joint(key, 1)
    return theta[0], y[0]


def exact_posterior(key, y, num_draws=19):
    """Exact conjugate posterior draws (the Normal–Normal model is linear-Gaussian)."""
    A = jnp.stack([jnp.ones_like(X), X], 1)
    cov = jnp.linalg.inv(jnp.eye(2) + A.T @ A)
    mean = cov @ A.T @ y
    return mean + jax.random.normal(key, (num_draws, 2)) @ jnp.linalg.cholesky(cov).T


def test_sbc_fails_on_nonfinite_draws():
    def broken(key, y):
        return exact_posterior(key, y).at[3, 1].set(jnp.nan)

    with pytest.raises(AssertionError, match=r"posterior draws: f\[1\] is NaN or inf in 400"):
        check_sbc(sbc_joint, broken, KEY, num_simulations=400, num_bins=5)


def test_sbc_fails_when_the_draws_do_not_vary():
    """Zero posterior variance (one draw repeated, e.g. a stuck chain): ranks pile up at
    0 and L and the chi-square test fails."""

    def stuck(key, y):
        return jnp.broadcast_to(exact_posterior(key, y)[0], (19, 2))

    with pytest.raises(AssertionError, match="SBC failed"):
        check_sbc(sbc_joint, stuck, KEY, num_simulations=400, num_bins=5)


def test_sbc_report_ok():
    report = SBCReport(np.zeros((1, 1)), 9, np.zeros(1), np.array([0.5]), 1e-3)
    assert report.ok
    assert not report._replace(p_values=np.array([1e-4])).ok
    assert not report._replace(p_values=np.array([np.nan])).ok


# --- the program fuzzer's checker ------------------------------------------------------
def _one_spec():
    """A fixed small fuzz program (the first hypothesis example of one structure)."""
    from hypothesis import find, settings

    return find(
        fuzz.programs(objectives=("expectation",), max_sites=2, instances=1),
        lambda specs: True,
        settings=settings(database=None, max_examples=1),
    )


def test_check_programs_fails_on_a_nonfinite_gradient_coordinate(monkeypatch):
    specs = _one_spec()
    real = fuzz.estimator

    def broken(spec, num_samples, num_programs):
        run = real(spec, num_samples, num_programs)

        def planted_run(keys, thetas, cs):
            values, grads = run(keys, thetas, cs)
            return values, grads.at[..., 0].set(jnp.nan)

        return planted_run

    results = fuzz.check_programs(specs, FUZZ_KEY, 200)
    assert all(r.ok for r in results)
    monkeypatch.setattr(fuzz, "estimator", broken)
    with pytest.raises(AssertionError, match="d/dtheta\\[0\\]: mean"):
        fuzz.check_programs(specs, FUZZ_KEY, 200)


def test_check_programs_fails_on_a_nonfinite_reference(monkeypatch):
    specs = _one_spec()
    real = fuzz.exact_values_and_grads

    def broken(specs):
        values, grads = real(specs)
        return np.asarray(values) * np.nan, grads

    monkeypatch.setattr(fuzz, "exact_values_and_grads", broken)
    with pytest.raises(AssertionError, match="value: mean .* exact nan"):
        fuzz.check_programs(specs, FUZZ_KEY, 200)
