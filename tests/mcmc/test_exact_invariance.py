"""Exact invariance of every finite-randomness kernel on small discrete targets.

The transition matrix is built by enumeration from each kernel's exact
``transition_probs`` (no sampling), and πP = π and detailed balance are checked to float32
rounding. Deliberately broken kernels (independence MH without the proposal correction, a
Gibbs update from a tempered conditional) are rejected, both from the exact matrix and
from a matrix estimated by vectorized steps (tolerance: multinomial standard errors).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from ppl import mcmc
from ppl.mcmc.base import Kernel, State, mh_accept, mh_mixture
from ppl.validate import (
    check_invariance,
    check_kernel_invariance,
    target_probs,
    transition_matrix,
)

# --- a target on {0, ..., 5} -------------------------------------------------------------
W = jnp.array([0.05, 0.3, 0.1, 0.25, 0.2, 0.1])
STATES = jnp.arange(6)


def logp(x):
    return jnp.log(W)[x]


Q = dist.Categorical(probs=jnp.array([0.3, 0.1, 0.2, 0.1, 0.2, 0.1]))


def local_proposal(x):
    """Asymmetric: q(y|x) ∝ exp(−|y − x|), normalized over {0..5} (depends on x)."""
    return dist.Categorical(logits=-jnp.abs(STATES - x).astype(jnp.float32))


# --- a target on {a ∈ 0..2} × {b ∈ {0,1}²}, as a dict position -------------------------
DICT_STATES = {
    "a": jnp.array([a for a, _, _ in itertools.product(range(3), range(2), range(2))]),
    "b": jnp.array([[b0, b1] for _, b0, b1 in itertools.product(range(3), range(2), range(2))]),
}


def logp_dict(x):
    a, b = x["a"], x["b"]
    return 0.7 * a * (b[0] + 2 * b[1]) - 0.9 * a - 1.1 * b[0] * b[1] + 0.3 * b[1]


def _broken_independence(logdensity_fn, q):
    """Independence MH that forgets the q(x)/q(y) correction."""

    def init(x):
        return State(x, logdensity_fn(x))

    def step(key, state):
        k1, k2 = jax.random.split(key)
        y = q.sample(k1)
        new = State(y, logdensity_fn(y))
        return mh_accept(k2, new.logdensity - state.logdensity, new, state)

    def transition_probs(state):
        ys = q.enumerate_support(expand=False)

        def one(y):
            new = State(y, logdensity_fn(y))
            states, probs = mh_mixture(new.logdensity - state.logdensity, new, state)
            return states, probs * jnp.exp(q.log_prob(y))

        states, probs = jax.vmap(one)(ys)
        return jax.tree.map(lambda s: s.reshape((-1,) + s.shape[2:]), states), probs.ravel()

    return Kernel(init, step, transition_probs)


INDEP = mcmc.independence(logp, Q)
LOCAL = mcmc.mh(logp, local_proposal)
GIBBS = mcmc.enum_gibbs(logp, STATES)

# (name, kernel, log density, states, reversible)
CASES = [
    ("independence", INDEP, logp, STATES, True),
    ("mh_local", LOCAL, logp, STATES, True),
    ("enum_gibbs", GIBBS, logp, STATES, True),
    ("cycle", mcmc.cycle(INDEP, LOCAL), logp, STATES, False),
    ("mixture", mcmc.mixture([INDEP, LOCAL, GIBBS], [0.2, 0.5, 0.3]), logp, STATES, True),
    ("repeat", mcmc.repeat(LOCAL, 3), logp, STATES, True),
    (
        "gibbs_site_a",
        mcmc.enum_gibbs(logp_dict, {"a": jnp.arange(3)}),
        logp_dict,
        DICT_STATES,
        True,
    ),
    (
        "gibbs_site_b",
        mcmc.enum_gibbs(logp_dict, {"b": jnp.arange(2)}),
        logp_dict,
        DICT_STATES,
        False,  # a systematic scan over b's two elements is invariant, not reversible
    ),
    (
        "gibbs_sweep",
        mcmc.enum_gibbs(logp_dict, {"a": jnp.arange(3), "b": jnp.arange(2)}),
        logp_dict,
        DICT_STATES,
        False,
    ),
    (
        "block_mh",
        mcmc.block(lambda ld: mcmc.mh(ld, lambda a: Q3), logp_dict, "a"),
        logp_dict,
        DICT_STATES,
        True,
    ),
]
Q3 = dist.Categorical(probs=jnp.array([0.5, 0.2, 0.3]))


@pytest.mark.parametrize("name, kernel, ld, states, reversible", CASES, ids=[c[0] for c in CASES])
def test_exact_invariance(name, kernel, ld, states, reversible):
    P, se = transition_matrix(kernel, states)
    assert se is None
    n = len(jax.tree.leaves(states)[0])
    assert P.shape == (n, n)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    assert np.count_nonzero(P > 1e-6) > n  # the kernel moves: not the identity
    report = check_invariance(P, target_probs(ld, states), reversible=reversible)
    assert report.stationarity_error < 1e-5
    if not reversible:  # the composition must really be non-reversible for the flag to matter
        with pytest.raises(AssertionError, match="detailed balance"):
            check_invariance(P, target_probs(ld, states), reversible=True)


def test_enum_gibbs_row_is_the_target():
    """One Gibbs update of the only coordinate draws from π, whatever the start."""
    P, _ = transition_matrix(GIBBS, STATES)
    np.testing.assert_allclose(P, np.tile(np.asarray(W), (6, 1)), atol=1e-6)


@pytest.mark.slow
def test_exact_steps_agree_with_transition_probs():
    """The sampled steps follow the exact rows (multinomial SE): step and
    transition_probs describe the same kernel."""
    for kernel in (mcmc.cycle(LOCAL, GIBBS),):
        P, _ = transition_matrix(kernel, STATES)
        P_mc, se = transition_matrix(kernel, STATES, jax.random.key(1), 10_000)
        z = np.abs(P_mc - P) / se
        assert z.max() < 4.5, z.max()


@pytest.mark.slow
def test_estimated_matrix_passes():
    report = check_kernel_invariance(
        mcmc.mixture([INDEP, LOCAL], [0.5, 0.5]),
        logp,
        STATES,
        key=jax.random.key(2),
        num_samples=10_000,
    )
    assert report.stationarity_z is not None and report.stationarity_z < 4


BROKEN = [
    ("independence_no_correction", _broken_independence(logp, Q), logp),
    ("tempered_gibbs", mcmc.enum_gibbs(lambda x: 0.5 * logp(x), STATES), logp),
]


@pytest.mark.parametrize("name, kernel, ld", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_kernel_caught_exact(name, kernel, ld):
    with pytest.raises(AssertionError, match="not invariant"):
        check_kernel_invariance(kernel, ld, STATES)


@pytest.mark.parametrize("name, kernel, ld", BROKEN[:1], ids=[b[0] for b in BROKEN[:1]])
def test_broken_kernel_caught_estimated(name, kernel, ld):
    with pytest.raises(AssertionError, match="not invariant"):
        check_kernel_invariance(kernel, ld, STATES, key=jax.random.key(3), num_samples=10_000)


def test_leaving_the_state_space_is_reported():
    kernel = mcmc.independence(logp, dist.Categorical(probs=jnp.ones(8) / 8))
    with pytest.raises(AssertionError, match="outside"):
        transition_matrix(kernel, STATES)
