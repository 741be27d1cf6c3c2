"""``ppl.expectation``: a program that samples -> a differentiable, unbiased estimate.

For ``f`` returning a scalar, ``E = expectation(f)`` and ``E(key, *args)`` returns a
surrogate S whose value is an unbiased estimate of E[f(*args)] and whose derivatives
(``jax.grad``, ``jax.jvp``; w.r.t. args and the params ``f`` reads) are unbiased estimates
of the derivatives of that expectation:

    S = sum_c w_c [V_c box(L_c) + B_c]                                   (main runs)
      + sum_c sum_(s,i) w_c^up (theta - sg theta) sg(c * sum_a sign_a K_{c,s,i,a})  (local)
      + sum_c sum_k w_c^up (1 - box(l_k)) sg(K_{c,k})                   (leave-one-out)

c ranges over the combinations of jointly enumerated sites (w_c their probability),
V_c the program value, L_c the reinforce log probabilities, B_c user-baseline terms,
K the values of seeded replays with one element of one mvd / batched-enum site (or one
particle's output) changed. All main runs share one vmap, all replays another, so the
traced program stays linear in the number of sites.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.handlers import seed

from .runtime import RunState, Target, apply_strategies, box

MAX_JOINT_COMBINATIONS = 1 << 16


def _scalar(value, where):
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(
            f"{where}: the program must return a scalar, got shape {value.shape}; "
            "sum or average it first"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


class Expectation:
    """The expectation of a program; see :func:`expectation`."""

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"ppl.expectation needs a callable program, got {type(fn)}")
        self.fn = fn
        self.__doc__ = getattr(fn, "__doc__", None)

    # -- runs -----------------------------------------------------------------------
    def _run(self, state, key, args, kwargs):
        with seed(rng_seed=key), apply_strategies(state=state):
            value = self.fn(*args, **kwargs)
        return _scalar(value, getattr(self.fn, "__name__", "program"))

    def discover(self, key, *args, **kwargs) -> list:
        """The static list of random choices (strategies, sizes) in execution order."""
        state = RunState("discover")
        jax.eval_shape(lambda: self._run(state, key, args, kwargs))
        return state.sites

    # -- the estimate ---------------------------------------------------------------
    def __call__(self, key, *args, **kwargs):
        """Differentiable unbiased estimate of E[f(*args, **kwargs)] under ``key``."""
        sites = self.discover(key, *args, **kwargs)
        joint = [s for s in sites if s.kind == "joint_enum"]
        sizes = [s.support_size for s in joint]
        n_comb = int(np.prod(sizes)) if sizes else 1
        if n_comb > MAX_JOINT_COMBINATIONS:
            raise ValueError(
                f"joint enumeration of {[s.name for s in joint]} needs {n_comb} "
                "combinations; use 'mvd' or 'reinforce' for some of these sites"
            )
        combos = np.array(list(itertools.product(*[range(n) for n in sizes])), np.int32)
        combos = combos.reshape(n_comb, len(joint))
        no_target = Target(jnp.int32(-1), jnp.int32(0), jnp.int32(0))

        def main(combo):
            state = RunState("main", {s.order: combo[j] for j, s in enumerate(joint)}, no_target, sites)
            value = self._run(state, key, args, kwargs)
            return value, state

        def main_outputs(combo):
            value, st = main(combo)
            return value, st.score, st.extra, st.enum_lw, st.local, st.loo

        if n_comb == 1:
            outs = jax.tree.map(lambda x: x[None], main_outputs(jnp.asarray(combos[0])))
        else:
            outs = jax.vmap(main_outputs)(jnp.asarray(combos))
        value, score, extra, enum_lw, local, loo = outs
        weight = jnp.exp(enum_lw)
        estimate = jnp.sum(weight * (value * box(score) + extra))

        targets = _targets(sites)
        if len(targets) == 0:
            return estimate

        def replay(combo, target):
            tgt = Target(target[0], target[1], target[2])
            state = RunState("replay", {s.order: combo[j] for j, s in enumerate(joint)}, tgt, sites)
            value = self._run(state, key, args, kwargs)
            return lax.stop_gradient(jnp.exp(state.lw_down) * value)

        ts = jnp.asarray(targets)
        per_combo = jax.vmap(lambda c: jax.vmap(lambda t: replay(c, t))(ts))
        replays = per_combo(jnp.asarray(combos))  # (C, T)
        offset = 0
        for s in sites:
            if s.kind == "local":
                n = s.num_elements * s.num_alternatives
                block = replays[:, offset : offset + n].reshape(n_comb, s.num_alternatives, -1)
                offset += n
                theta, coef, lw_up = local[s.order]
                estimate = estimate + _local_term(s, block, theta, coef, jnp.exp(lw_up))
            elif s.kind == "particles" and s.loo:
                n = s.num_particles
                baseline = replays[:, offset : offset + n]
                offset += n
                loo_score, lw_up = loo[s.order]
                term = jnp.sum((1.0 - box(loo_score)) * baseline, axis=1)
                estimate = estimate + jnp.sum(jnp.exp(lw_up) * term)
        return estimate

    # -- conveniences ---------------------------------------------------------------
    def estimate(self, key, *args, **kwargs):
        """The value only (no gradient tracking)."""
        return lax.stop_gradient(self(key, *args, **kwargs))

    def grad(self, key, *args, argnums=0, **kwargs):
        """Unbiased estimate of the gradient w.r.t. ``args[argnums]``."""
        return jax.grad(lambda *a: self(key, *a, **kwargs), argnums=argnums)(*args)

    def value_and_grad(self, key, *args, argnums=0, **kwargs):
        """(estimate, gradient estimate) w.r.t. ``args[argnums]``."""
        return jax.value_and_grad(lambda *a: self(key, *a, **kwargs), argnums=argnums)(*args)


def _targets(sites) -> np.ndarray:
    """Rows (order, element, alternative) of every replay, grouped by site."""
    rows = []
    for s in sites:
        if s.kind == "local":
            for a in range(s.num_alternatives):
                rows.extend((s.order, e, a) for e in range(s.num_elements))
        elif s.kind == "particles" and s.loo:
            rows.extend((s.order, k, 0) for k in range(s.num_particles))
    return np.array(rows, np.int32).reshape(-1, 3)


def _local_term(site, replays, theta, coef, w_up):
    """sum_c w_up sum_(j,i) (theta - sg theta) sg(coef * sum_a sign_a K[c, a, i])."""
    diffs = []
    for j in range(site.num_params):
        acc = 0.0
        for a, (pj, sign) in enumerate(site.pairs):
            if pj == j:
                acc = acc + sign * replays[:, a, :]
        diffs.append(acc)
    diff = jnp.stack(diffs, axis=1)  # (C, P, N)
    inner = (theta - lax.stop_gradient(theta)) * lax.stop_gradient(coef * diff)
    return jnp.sum(w_up * jnp.sum(inner, axis=(1, 2)))


def expectation(fn: Callable) -> Expectation:
    """``E = ppl.expectation(f)``: ``E(key, *args)`` is a differentiable unbiased estimate.

    Example::

        def f(p):
            z = numpyro.sample("z", dist.Bernoulli(p), infer={"grad": "mvd"})
            return (z - 0.3) ** 2

        E = ppl.expectation(f)
        value, grad = E.value_and_grad(jax.random.PRNGKey(0), 0.4)
    """
    return Expectation(fn)
