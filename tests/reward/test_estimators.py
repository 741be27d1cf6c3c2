"""Each reward objective's gradient against enumeration on a finite response space.

Two exact quantities: (1) the expectation of the n-sample estimator itself (enumerating
all n-tuples of responses): every estimator's Monte Carlo mean must match it within 4
standard errors, which checks sampling, weighting and per-prompt normalization; (2) the
exact gradient of the divergence: the self-normalized estimators are only consistent, so
the exact expectation of the n-sample estimator is shown to approach it as n grows; PPO
(leave-one-out) and DPO are unbiased for their objectives at every n.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from tests.reward.finite import (
    LOGITS,
    P_REF,
    B,
    R,
    V,
    exact_divergence_grad,
    exact_posterior,
    expected_estimator,
    grad_log_q,
    is_coefficients,
    log_target,
    objective_grad,
    other_proposal,
    softmax,
)

KEY = jax.random.PRNGKey(1)
N = 3
Q = softmax(LOGITS)
UNIFORM = np.full((B, V), 1.0 / V)


def log_ref(b, y):
    return np.log(P_REF[b, y])


def check(loss, coef, slots, num_samples=4000, **kwargs):
    exact = expected_estimator(coef, slots)
    report = ppl.validate.check_unbiased(objective_grad(loss, **kwargs), exact, KEY, num_samples)
    return report


@pytest.mark.parametrize(
    "kind",
    [
        "brain",
        pytest.param("dpg", marks=pytest.mark.slow),
        pytest.param("gdcpp", marks=pytest.mark.slow),
    ],
)
def test_brain_family_matches_exact_expectation(kind):
    loss = {"brain": ppl.objectives.brain, "dpg": ppl.objectives.dpg, "gdcpp": ppl.objectives.gdcpp}
    report = check(loss[kind](N), is_coefficients(kind, log_ref), [P_REF] * N)
    assert report.max_abs_z() < 4


@pytest.mark.slow
@pytest.mark.parametrize("f", ["forward_kl", "reverse_kl", "js", "tv", "alpha"])
def test_fdiv_matches_exact_expectation(f):
    report = check(ppl.objectives.fdiv(f, N), is_coefficients(f, log_ref), [P_REF] * N)
    assert report.max_abs_z() < 4


@pytest.mark.slow
def test_brain_with_policy_program_and_mixture_proposals():
    lq = np.log(Q)
    check(
        ppl.objectives.brain(N, "policy"), is_coefficients("brain", lambda b, y: lq[b, y]), [Q] * N
    )
    lu = np.log(UNIFORM)
    check(
        ppl.objectives.brain(N, other_proposal),
        is_coefficients("brain", lambda b, y: lu[b, y]),
        [UNIFORM] * N,
    )
    # stratified mixture: 2 samples from the reference, 2 uniform, weighted by the mixture
    mix = np.log(0.5 * P_REF + 0.5 * UNIFORM)
    check(
        ppl.objectives.brain(4, ppl.reward.mixture("reference", other_proposal)),
        is_coefficients("brain", lambda b, y: mix[b, y]),
        [P_REF, P_REF, UNIFORM, UNIFORM],
    )


def ppo_coefficients(ys, b):
    n = ys.shape[1]
    r = log_target(b, ys) - np.log(Q[b, ys])
    loo = (r.sum(1, keepdims=True) - r) / (n - 1)
    return (r - loo) / n


def test_ppo_unbiased_for_the_kl_regularized_reward():
    """Leave-one-out score function: unbiased at n = 3 for grad (E_q[r]/beta - KL(q||p_ref))."""
    exact = np.zeros((B, V))
    for b in range(B):
        reward = log_target(b, np.arange(V)) - np.log(Q[b])
        exact[b] = (Q[b] * reward) @ grad_log_q(Q[b], np.arange(V))
    # the enumeration of the estimator's expectation agrees with the exact gradient ...
    np.testing.assert_allclose(expected_estimator(ppo_coefficients, [Q] * N), exact, atol=1e-10)
    # ... and so does the Monte Carlo mean
    report = ppl.validate.check_unbiased(objective_grad(ppl.objectives.ppo(N)), exact, KEY, 4000)
    assert report.max_abs_z() < 4


def dpo_coefficients(labels, beta=1.0):
    lq = np.log(Q)
    sig = lambda x: 1 / (1 + np.exp(-x))

    def coef(ys, b):
        m = (lq[b, ys[:, 0]] - log_ref(b, ys[:, 0])) - (lq[b, ys[:, 1]] - log_ref(b, ys[:, 1]))
        s = R[b, ys] / 0.7
        if labels == "bradley_terry":
            p1 = sig(s[:, 0] - s[:, 1])
        else:
            p1 = (s[:, 0] > s[:, 1]).astype(float)
            p1 = np.where(s[:, 0] == s[:, 1], np.nan, p1)
        c1 = beta * (p1 * (1 - sig(beta * m)) - (1 - p1) * (1 - sig(-beta * m)))
        c1 = np.nan_to_num(c1)  # ties: no pair
        return np.stack([c1, -c1], 1)

    return coef


@pytest.mark.parametrize(
    "labels", ["bradley_terry", pytest.param("argmax", marks=pytest.mark.slow)]
)
def test_dpo_unbiased_for_its_population_loss(labels):
    loss = ppl.objectives.dpo(beta=1.0, labels=labels)
    report = check(loss, dpo_coefficients(labels), [P_REF, P_REF])
    assert report.max_abs_z() < 4


def expected_library_estimate(kind, n):
    """Exact expectation of the n-sample estimator with the library's own coefficients
    (ppl.reward.f_coefficients), by enumeration of all n-tuples from the reference."""
    import itertools

    ys = np.array(list(itertools.product(range(V), repeat=n)))
    out = np.zeros((B, V))
    for b in range(B):
        lqp = np.log(P_REF[b, ys])
        la = ppl.reward.normalized_log_weights(jnp.asarray(log_target(b, ys).T), jnp.asarray(lqp.T))
        lb = jax.nn.log_softmax(jnp.asarray(np.log(Q[b, ys]).T - lqp.T), axis=0)
        c = -np.asarray(ppl.reward.f_coefficients(kind, la, lb)).T  # (T, n)
        prob = np.exp(lqp.sum(1))
        out[b] = prob @ np.einsum("tn,tnv->tv", c, grad_log_q(Q[b], ys))
    return out


@pytest.mark.parametrize("kind", ["forward_kl", "js"])
def test_self_normalized_estimators_are_consistent(kind):
    """The exact expectation of the n-sample estimator tends to the exact divergence
    gradient, with bias ~ 1/n (measured by enumeration, n = 1, 2, 4)."""
    exact = exact_divergence_grad(kind)
    if kind == "forward_kl":
        np.testing.assert_allclose(exact, exact_posterior() - Q, atol=1e-12)
    bias = [np.abs(expected_library_estimate(kind, n) - exact).max() for n in (1, 2, 4)]
    assert bias[0] > bias[1] > bias[2]
    assert 0.3 < bias[2] / bias[1] < 0.7  # ~ 1/n: halves from n = 2 to n = 4


def test_posterior_is_a_fixed_point_of_brain_but_not_of_dpg_or_gdcpp():
    """At q = posterior, BRAIn's per-sample gradient is exactly zero (alpha = beta); the
    exact expectation of DPG's and GDC++'s n-sample update is not (and is the same for
    both: GDC++'s baseline has mean zero)."""
    logits = np.log(exact_posterior())
    ref = lambda b, y: np.log(P_REF[b, y])
    g = {
        k: expected_estimator(is_coefficients(k, ref, logits), [P_REF] * N, logits)
        for k in ("brain", "dpg", "gdcpp")
    }
    np.testing.assert_allclose(g["brain"], 0.0, atol=1e-12)
    assert np.abs(g["dpg"]).max() > 0.01
    np.testing.assert_allclose(g["gdcpp"], g["dpg"], atol=1e-12)
