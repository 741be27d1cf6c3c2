"""Kernel fuzzing (issue 9, part 2): random small discrete models (NumPyro programs) ×
random ``ppl.mcmc`` compositions (MH leaves with uniform / local / independence
proposals, enumerated Gibbs directly or through ``block``, ``cycle`` / ``mixture`` /
``repeat``), each checked exactly by ``ppl.validate.check_kernel_invariance`` (πP = π to
float32 rounding, and detailed balance where the composition is reversible).

The fuzzer's power is checked too: the same random compositions followed by a mutant
(independence MH without its Hastings correction) must be rejected whenever the mutant
alone is not invariant. Failures shrink and print the model and kernel as source.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from numpyro.infer.util import log_density

from ppl import mcmc
from ppl.mcmc.base import Kernel, State, mh_accept, mh_mixture
from ppl.validate import check_kernel_invariance, target_probs, transition_matrix
from ppl.validate.kernel_fuzz import check_case, kernel_cases

KEY = jax.random.key(0)
SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=2, derandomize=True, **SETTINGS)
@given(kernel_cases(max_sites=3, max_leaves=3))
def test_random_compositions_are_invariant(case):
    note(case.source())
    report = check_case(case, KEY)
    assert report.stationarity_error < 1e-5


@pytest.mark.slow
@settings(max_examples=40, derandomize=True, **SETTINGS)
@given(kernel_cases(max_sites=3, max_leaves=5))
def test_random_compositions_are_invariant_long(case):
    note(case.source())
    check_case(case, KEY)


def _uncorrected_independence(logp, site, probs):
    """Independence MH on one scalar site that forgets the q(x)/q(y) correction."""
    q = dist.Categorical(probs=probs)

    def init(x):
        return State(x, logp(x))

    def moved(x, y):
        new = {**x, site: y}
        return State(new, logp(new))

    def step(key, state):
        y = q.sample(key)
        new = moved(state.position, y)
        return mh_accept(key, new.logdensity - state.logdensity, new, state)

    def transition_probs(state):
        ys = q.enumerate_support(expand=False)

        def one(y):
            new = moved(state.position, y)
            states, p = mh_mixture(new.logdensity - state.logdensity, new, state)
            return states, p * jnp.exp(q.log_prob(y))

        states, p = jax.vmap(one)(ys)
        flat = jax.tree.map(lambda s: s.reshape((-1,) + s.shape[2:]), states)
        return flat, p.ravel()

    return Kernel(init, step, transition_probs)


def _mutant_case(case, data):
    """The case's composition followed by an uncorrected independence MH on a random scalar
    site, and whether that mutant alone breaks invariance for this model (ground truth)."""
    model = case.model
    site = data.draw(st.sampled_from([s for s in model.sites if s.length == 0]))
    w = np.array(data.draw(st.lists(st.integers(1, 6), min_size=site.size, max_size=site.size)))
    mutant = _uncorrected_independence(model.logdensity, site.name, jnp.array(w / w.sum()))
    states = model.states()
    pi = target_probs(model.logdensity, states)
    P, _ = transition_matrix(mutant, states)
    residual = np.max(np.abs(pi @ P - pi))
    assume(residual > 1e-4 or residual < 1e-6)  # clear-cut ground truth
    broken = residual > 1e-4
    note(f"{case.source()}\nthen the mutant on {site.name!r} with q = {w / w.sum()}")
    return mcmc.cycle(case.kernel.build(model.logdensity, model), mutant), broken


def _check_mutant(case, data):
    kernel, broken = _mutant_case(case, data)
    event(f"mutant breaks invariance: {broken}")
    states = case.model.states()
    if broken:
        with pytest.raises(AssertionError, match="not invariant"):
            check_kernel_invariance(kernel, case.model.logdensity, states, reversible=False)
    else:
        check_kernel_invariance(kernel, case.model.logdensity, states, reversible=False)
    return broken


SCALAR_CASES = kernel_cases(max_sites=3, max_leaves=3).filter(
    lambda c: any(s.length == 0 for s in c.model.sites)
)


@pytest.mark.slow  # (the fast suite's budget)
@settings(max_examples=3, derandomize=True, **SETTINGS)
@given(SCALAR_CASES, st.data())
def test_a_mutant_after_any_composition_is_caught(case, data):
    _check_mutant(case, data)


@pytest.mark.slow
@settings(max_examples=20, derandomize=True, **SETTINGS)
@given(SCALAR_CASES, st.data())
def test_a_mutant_after_any_composition_is_caught_long(case, data):
    _check_mutant(case, data)


@pytest.mark.slow
@settings(max_examples=2, derandomize=True, **SETTINGS)
@given(kernel_cases(max_sites=3, max_leaves=3))
def test_printed_source_is_the_tested_case(case):
    """The reproducer runs as is: its model has the fuzzed log density and its kernel the
    fuzzed transition matrix."""
    namespace = {"jnp": jnp, "numpyro": numpyro, "dist": dist, "log_density": log_density}
    namespace.update({name: getattr(mcmc, name) for name in mcmc.__all__})
    exec(case.source(), namespace)
    model, states = case.model, case.model.states()
    printed = jax.vmap(namespace["logp"])(states)
    np.testing.assert_allclose(printed, jax.vmap(model.logdensity)(states), rtol=1e-6)
    P_printed, _ = transition_matrix(namespace["kernel"], states)
    P, _ = transition_matrix(case.kernel.build(model.logdensity, model), states)
    np.testing.assert_allclose(P_printed, P, atol=1e-6)
