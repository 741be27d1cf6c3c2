"""Size of the traced program of an enumerated HMM's ELBO gradient, as a function of T.

We count the equations of ``jax.make_jaxpr(jax.grad(loss))``, **recursively**: an
equation that holds sub-jaxprs (``scan``, ``pjit``, ``cond``, ``custom_jvp_call``, ...)
counts as one plus the equations of each of them (``count_eqns``). Counting is exact and
deterministic, so the claims are equalities of integers, no tolerance needed.

* ``hmm_scan`` (``numpyro.contrib.control_flow.scan``): the same program for every T
  (711 equations at T = 10, 100 and 1000): ppl contracts the time axis with one
  ``lax.scan`` (``ppl.core.markov_chain``). NumPyro's own ``compute_markov_factors``
  (funsor's ``sequential_sum_product``, a parallel prefix product unrolled in Python)
  grew by 36 equations per doubling of T (851 at T = 10, 964 at T = 100).
* ``hmm_markov`` (a Python ``markov`` loop) is unrolled: linear in T (+770 equations
  per four steps exactly, recursive: 1080, 1850, 2620, 3390 at T = 4, 8, 12, 16), not
  quadratic.

Power: the T-independence check rejects the ``markov`` model.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr

import ppl
from models.enum_zoo import _series, hmm_markov, hmm_scan

_spec = importlib.util.spec_from_file_location(
    "enum_reference", Path(__file__).with_name("reference.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

PARAMS = {"trans_auto_loc": jnp.full((3, 3), 1 / 3), "locs_auto_loc": jnp.arange(3.0)}


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, Jaxpr):
                yield v


def count_eqns(jaxpr: Jaxpr) -> int:
    """Equations of ``jaxpr``, each sub-jaxpr's counted too."""
    return sum(1 + sum(count_eqns(j) for j in _sub_jaxprs(e)) for e in jaxpr.eqns)


@functools.cache
def grad_eqns(model, T: int) -> int:
    """Recursive equation count of the ppl ``elbo()`` gradient on ``model`` with T steps."""
    y = _series(T)
    guide = ref.continuous_guide(model)

    def loss(params):
        return ppl.objectives.elbo().loss(jax.random.PRNGKey(0), params, model, guide, y)

    return count_eqns(jax.make_jaxpr(jax.grad(loss))(PARAMS).jaxpr)


def assert_independent_of_t(model, *steps):
    counts = [grad_eqns(model, t) for t in steps]
    assert len(set(counts)) == 1, f"{model.__name__}: {counts} equations at T = {steps}"


def test_scan_jaxpr_is_independent_of_t():
    assert_independent_of_t(hmm_scan, 10, 100)


@pytest.mark.slow
def test_scan_jaxpr_at_t_1000_is_the_same():
    assert_independent_of_t(hmm_scan, 10, 1000)


@pytest.mark.slow
def test_markov_jaxpr_grows_linearly_in_t():
    """eqns(8) - eqns(6) == eqns(6) - eqns(4) up to a few equations (measured: 384 vs 386;
    the per-step count alternates 190-194 with markov's recycled dim names). A quadratic
    term a T^2 adds 8a to the difference: |8a| <= d / 20 bounds a below 2.5 equations,
    where a nested replay per site (the failure mode) costs a whole step, ~190."""
    a, b, c = (grad_eqns(hmm_markov, t) for t in (4, 6, 8))
    assert abs((c - b) - (b - a)) <= (b - a) / 20, (a, b, c)


def test_counting_detects_t_dependence_in_the_markov_model():
    """Power: the check that passes for ``scan`` fails for the unrolled ``markov`` loop."""
    with pytest.raises(AssertionError, match="hmm_markov"):
        assert_independent_of_t(hmm_markov, 2, 3)


def _shapes(jaxpr: Jaxpr):
    """Every intermediate's shape in ``jaxpr`` and its sub-jaxprs, but the stacked outputs
    of a ``scan`` (the per-step residuals autodiff keeps, which a hand-written forward
    algorithm's gradient keeps too)."""
    for e in jaxpr.eqns:
        if e.primitive.name != "scan":
            yield from (tuple(getattr(v.aval, "shape", ())) for v in e.outvars)
        for j in _sub_jaxprs(e):
            yield from _shapes(j)


def test_homogeneous_transition_is_not_stacked_over_time():
    """The scan HMM's transition Categorical(trans[x_prev]) is the same at every step: its
    log-probability table stays (S, S) and the forward algorithm adds it at each step, as a
    hand-written one does; nothing of shape (T, S, S) is built, in the ELBO or its gradient,
    besides the forward scan's own residuals (it was: the table broadcast to (T, S, S),
    added to the emissions, and its (T, S, S) gradient reduced over T). The emissions are
    (T, S): one per step."""
    T, S = 40, 3
    y = _series(T)
    guide = ref.continuous_guide(hmm_scan)

    def loss(params):
        return ppl.objectives.elbo().loss(jax.random.PRNGKey(0), params, hmm_scan, guide, y)

    shapes = set(_shapes(jax.make_jaxpr(jax.grad(loss))(PARAMS).jaxpr))
    stacked = {s for s in shapes if len(s) >= 3 and s[-2:] == (S, S) and T - 1 in s[:-2]}
    assert not stacked, f"transition tables stacked over time: {sorted(stacked)}"
    assert any(T - 1 in s and S in s for s in shapes)  # the per-step emissions are there


def test_long_markov_chain_contracts_beyond_the_recursion_limit():
    """funsor's optimizer walks a markov chain's contraction recursively, about one level
    per step: T = 1000 steps overflowed Python's default limit of 1000 (RecursionError in
    ppl's elbo; NumPyro's TraceEnum_ELBO was still compiling after 5 minutes). ppl raises
    the limit around the contraction; here the limit is lowered to 150 so that T = 60
    overflows it without that (measured), and the value is the forward algorithm's."""
    import sys

    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.funsor import markov

    T, trans, locs = 60, jnp.full((3, 3), 0.1) + 0.7 * jnp.eye(3), jnp.arange(3.0)
    y = _series(T)

    def model(y):
        x = 0
        for t in markov(range(T)):
            x = numpyro.sample(
                f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"}
            )
            numpyro.sample(f"y_{t}", dist.Normal(locs[x], 0.5), obs=y[t])

    def forward(y):
        emit = dist.Normal(locs, 0.5).log_prob(y[:, None])
        alpha = jnp.log(trans[0]) + emit[0]
        for t in range(1, T):
            alpha = jax.nn.logsumexp(alpha[:, None] + jnp.log(trans), 0) + emit[t]
        return jax.nn.logsumexp(alpha)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        value = ppl.objectives.elbo().loss(jax.random.PRNGKey(0), {}, model, lambda y: None, y)
    finally:
        sys.setrecursionlimit(old)
    assert sys.getrecursionlimit() == old
    assert jnp.allclose(-value, forward(y), rtol=1e-5), (-value, forward(y))
