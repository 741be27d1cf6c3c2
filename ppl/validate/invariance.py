"""Invariance checks for MCMC kernels.

Exact, on finite state spaces: the transition matrix P is built by enumeration (from a
kernel's exact ``transition_probs``, or estimated from many vectorized steps with a
multinomial standard error) and πP = π and detailed balance diag(π)P = (diag(π)P)ᵀ are
checked. Statistical, on continuous spaces: chains started from exact draws of π must
stay at π (moments and a binned transition table, paired tests in standard errors).
Every check raises ``AssertionError`` with a readable report when it fails, including
when a transition probability or test statistic is NaN or ±inf, and when the kernel never
moves (a kernel that rejects every proposal, e.g. because its log density is NaN, is
trivially invariant: nothing would have been tested).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class InvarianceReport(NamedTuple):
    """Result of :func:`check_invariance`: the worst stationarity and balance residuals
    (absolute, and in standard errors when P was estimated), and the problems found;
    ``ok`` is True exactly when there are none (the kernel is invariant)."""

    stationarity_error: float
    balance_error: float | None
    stationarity_z: float | None
    balance_z: float | None
    problems: tuple = ()

    @property
    def ok(self) -> bool:
        return not self.problems and bool(np.isfinite(self.stationarity_error))


def _nonfinite(label: str, x) -> list[str]:
    """A problem line if ``x`` has NaN or ±inf entries (none otherwise)."""
    x = np.asarray(x, np.float64)
    bad = ~np.isfinite(x)
    if not np.any(bad):
        return []
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return [f"  {label}: {int(bad.sum())} of {x.size} entries are NaN or inf (first at {first})"]


def _moved_fraction(x0, x1) -> float:
    """Fraction of chains whose position changed in any coordinate."""
    changed = [
        np.any(
            np.asarray(a).reshape(np.shape(a)[0], -1) != np.asarray(b).reshape(np.shape(b)[0], -1),
            1,
        )
        for a, b in zip(jax.tree.leaves(x0), jax.tree.leaves(x1), strict=True)
    ]
    return float(np.mean(np.any(np.stack(changed), 0)))


_STUCK = (
    "  no chain moved: the kernel rejected every proposal (a NaN log density does this), "
    "so invariance holds trivially and nothing was tested"
)


def target_probs(logdensity_fn: Callable, states: Any) -> np.ndarray:
    """π over an enumerated state space: softmax of ``logdensity_fn`` at each state.

    Example: ``target_probs(lambda z: jnp.log(w)[z], jnp.arange(len(w)))``.
    """
    logp = np.asarray(jax.vmap(logdensity_fn)(states), np.float64)
    p = np.exp(logp - logp.max())
    return p / p.sum()


def _match(outcomes, states) -> jax.Array:
    """(num_outcomes, num_states) 0/1 matrix: outcome o equals state s in every leaf."""

    def eq(a, b):
        a = a.reshape(a.shape[0], 1, -1)
        b = b.reshape(1, b.shape[0], -1)
        return jnp.all(a == b, axis=-1)

    leaves = jax.tree.map(eq, outcomes, states)
    return jnp.all(jnp.stack(jax.tree.leaves(leaves)), axis=0)


def transition_matrix(
    kernel,
    states: Any,
    key: jax.Array | None = None,
    num_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The transition matrix P[i, j] = P(x' = states[j] | x = states[i]) of a kernel.

    ``states`` is an array (or pytree) with the enumerated states along axis 0. Without
    ``key``, P is exact from ``kernel.transition_probs`` and the standard error is
    ``None``; with ``key`` and ``num_samples``, each row is estimated from that many
    vectorized steps, with the multinomial standard error sqrt((P(1−P) + 1/n)/n).
    Raises ``AssertionError`` if the kernel leaves the enumerated state space.

    Example::

        P, _ = transition_matrix(enum_gibbs(logp, jnp.arange(3)), jnp.arange(3))
    """
    n = jax.tree.leaves(states)[0].shape[0]
    if key is None:
        if kernel.transition_probs is None:
            raise ValueError("this kernel has no exact transition_probs; pass key and num_samples")

        def row(state):
            outcomes, probs = kernel.transition_probs(kernel.init(state))
            m = _match(outcomes.position, states)
            return probs @ m.astype(probs.dtype), jnp.all(jnp.sum(m, 1) == 1)

        P, inside = jax.jit(jax.vmap(row))(states)
        if not np.all(inside):
            raise AssertionError("the kernel moved outside the enumerated states")
        return np.asarray(P, np.float64), None
    if num_samples is None:
        raise ValueError("an estimated transition matrix needs num_samples")

    def row_mc(state, k):
        s0 = kernel.init(state)
        ends = jax.vmap(lambda kk: kernel.step(kk, s0)[0].position)(
            jax.random.split(k, num_samples)
        )
        m = _match(ends, states)
        return jnp.sum(m, 0), jnp.all(jnp.sum(m, 1) == 1)

    counts, inside = jax.jit(jax.vmap(row_mc))(states, jax.random.split(key, n))
    if not np.all(inside):
        raise AssertionError("the kernel moved outside the enumerated states")
    P = np.asarray(counts, np.float64) / num_samples
    return P, np.sqrt((P * (1 - P) + 1.0 / num_samples) / num_samples)


def _worst(res, se, n_sigma, atol, label, fmt):
    tol = atol + (0.0 if se is None else n_sigma * se)
    bad = np.abs(res) > tol
    z = None if se is None else np.abs(res) / np.maximum(se, 1e-300)
    lines = []
    for idx in np.argwhere(bad)[:8]:
        idx = tuple(int(i) for i in idx)
        extra = "" if se is None else f" = {z[idx]:.1f} SE"
        lines.append(f"  {label}{fmt(idx)}: residual {res[idx]:+.3e}{extra}")
    return lines, (None if z is None else float(np.max(z)))


def check_invariance(
    P: np.ndarray,
    pi: np.ndarray,
    stderr: np.ndarray | None = None,
    reversible: bool = True,
    n_sigma: float = 4.0,
    atol: float = 1e-5,
    require_moves: bool = True,
) -> InvarianceReport:
    """Check πP = π (and, if ``reversible``, π_i P_ij = π_j P_ji) for a transition matrix.

    With exact P the residuals must be below ``atol``; with an estimated P and its
    ``stderr``, below ``atol + n_sigma`` standard errors. Raises ``AssertionError``
    listing the worst states/pairs; also when P, π or the standard errors have NaN or inf
    entries, and (``require_moves``) when P is the identity within ``atol`` (a kernel that
    never moves is invariant for every π). Example::

        P, se = transition_matrix(kernel, states)
        check_invariance(P, target_probs(logp, states), se)
    """
    P, pi = np.asarray(P, np.float64), np.asarray(pi, np.float64)
    se2 = None if stderr is None else np.asarray(stderr, np.float64) ** 2
    garbage = _nonfinite("P", P) + _nonfinite("π", pi)
    garbage += [] if se2 is None else _nonfinite("stderr", se2)
    if not garbage and require_moves and np.all(np.abs(P - np.eye(len(P))) <= atol):
        garbage.append(_STUCK.replace("no chain moved", "P is the identity"))
    if garbage:
        raise AssertionError("kernel invariance cannot be checked:\n" + "\n".join(garbage))
    rows = P.sum(1) - 1.0
    problems = []
    if np.any(np.abs(rows) > atol + (0 if se2 is None else n_sigma * np.sqrt(se2.sum(1)))):
        problems.append(f"  rows do not sum to 1 (worst {np.max(np.abs(rows)):.3e})")
    stat = pi @ P - pi
    stat_se = None if se2 is None else np.sqrt((pi**2) @ se2)
    lines, stat_z = _worst(stat, stat_se, n_sigma, atol, "(πP − π)", lambda i: f"[{i[0]}]")
    if lines:
        problems.append("πP ≠ π:")
        problems.extend(lines)
    bal_err = bal_z = None
    if reversible:
        flow = pi[:, None] * P
        bal = flow - flow.T
        bal_se = (
            None if se2 is None else np.sqrt(pi[:, None] ** 2 * se2 + (pi[:, None] ** 2 * se2).T)
        )
        lines, bal_z = _worst(
            bal, bal_se, n_sigma, atol, "π_i P_ij − π_j P_ji", lambda i: f" at {i}"
        )
        bal_err = float(np.max(np.abs(bal)))
        if lines:
            problems.append("detailed balance fails:")
            problems.extend(lines)
    report = InvarianceReport(float(np.max(np.abs(stat))), bal_err, stat_z, bal_z, tuple(problems))
    if problems:
        how = "exact P" if se2 is None else f"estimated P, {n_sigma} SE"
        raise AssertionError(f"kernel is not invariant ({how}):\n" + "\n".join(problems))
    return report


def check_kernel_invariance(
    kernel,
    logdensity_fn: Callable,
    states: Any,
    reversible: bool = True,
    key: jax.Array | None = None,
    num_samples: int | None = None,
) -> InvarianceReport:
    """:func:`transition_matrix` + :func:`check_invariance` against π ∝ exp(logdensity_fn).

    Example::

        check_kernel_invariance(independence(logp, dist.Categorical(q)), logp, jnp.arange(4))
    """
    P, se = transition_matrix(kernel, states, key, num_samples)
    return check_invariance(P, target_probs(logdensity_fn, states), se, reversible)


class StationarityReport(NamedTuple):
    """Mean test statistics at the start (exact draws) and after the steps, z-scores, the
    fraction of chains that moved and the problems found (``ok``: none)."""

    start: np.ndarray
    end: np.ndarray
    z_paired: np.ndarray
    z_exact: np.ndarray | None
    moved: float | None = None
    problems: tuple = ()

    @property
    def ok(self) -> bool:
        finite = np.all(np.isfinite(self.end)) and np.all(np.isfinite(self.z_paired))
        return not self.problems and bool(finite)


@functools.lru_cache(maxsize=64)
def _runner(kernel, num_steps):
    """A jitted, vmapped ``num_steps``-step chain for ``kernel`` (cached: checks that run
    the same kernel twice compile once)."""

    def chain(x, k):
        s = kernel.init(x)
        s, _ = jax.lax.scan(lambda s, kk: kernel.step(kk, s), s, jax.random.split(k, num_steps))
        return s.position

    return jax.jit(jax.vmap(chain))


def _run(kernel, positions, key, num_steps):
    n = jax.tree.leaves(positions)[0].shape[0]
    return _runner(kernel, num_steps)(positions, jax.random.split(key, n))


def _default_test_fn(x):
    flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(x)])
    return jnp.concatenate([flat, flat**2])


def check_stationarity(
    kernel,
    sample_target: Callable[[jax.Array, int], Any],
    key: jax.Array,
    num_chains: int = 10_000,
    num_steps: int = 5,
    test_fn: Callable | None = None,
    exact: np.ndarray | None = None,
    n_sigma: float = 4.0,
) -> StationarityReport:
    """Geweke-style "stays at stationarity" test for continuous kernels: start
    ``num_chains`` chains at exact draws x₀ ~ π (``sample_target(key, n)``, leading axis
    n), run ``num_steps`` steps, and require mean f(x_T) − f(x₀) = 0 within ``n_sigma``
    paired standard errors (and mean f(x_T) = ``exact`` E_π f when given). ``test_fn``
    defaults to every coordinate and its square. Fails also on NaN / inf test statistics
    and when no chain moved.

    Example::

        check_stationarity(mala(logp, 0.5), lambda k, n: jax.random.normal(k, (n, 2)), key)
    """
    test_fn = _default_test_fn if test_fn is None else test_fn
    k_init, k_run = jax.random.split(key)
    x0 = sample_target(k_init, num_chains)
    xT = _run(kernel, x0, k_run, num_steps)
    f0 = np.asarray(jax.vmap(test_fn)(x0), np.float64)
    fT = np.asarray(jax.vmap(test_fn)(xT), np.float64)
    moved = _moved_fraction(x0, xT)
    d = fT - f0
    se = d.std(0, ddof=1) / np.sqrt(num_chains)
    z = d.mean(0) / np.maximum(se, 1e-300)
    z_exact = None
    problems = _nonfinite("f(x_0)", f0) + _nonfinite("f(x_T)", fT)
    problems += [] if moved > 0 else [_STUCK]
    problems += [
        f"  f[{i}]: start {f0.mean(0)[i]:.4g} end {fT.mean(0)[i]:.4g} z {z[i]:+.1f}"
        for i in np.flatnonzero(~(np.abs(z) <= n_sigma))[:8]
    ]
    if exact is not None:
        exact = np.asarray(exact, np.float64)
        se_e = fT.std(0, ddof=1) / np.sqrt(num_chains)
        z_exact = (fT.mean(0) - exact) / np.maximum(se_e, 1e-300)
        problems += [
            f"  f[{i}]: end {fT.mean(0)[i]:.4g} exact {exact[i]:.4g} z {z_exact[i]:+.1f}"
            for i in np.flatnonzero(~(np.abs(z_exact) <= n_sigma))[:8]
        ]
    report = StationarityReport(f0.mean(0), fT.mean(0), z, z_exact, moved, tuple(problems))
    if problems:
        raise AssertionError(
            f"chains started at π drifted after {num_steps} steps ({num_chains} chains, "
            f"{n_sigma} SE):\n" + "\n".join(problems)
        )
    return report


def check_binned_invariance(
    kernel,
    sample_target: Callable[[jax.Array, int], Any],
    key: jax.Array,
    num_chains: int = 20_000,
    num_bins: int = 6,
    project: Callable | None = None,
    reversible: bool = True,
    num_steps: int = 1,
    n_sigma: float = 4.0,
) -> InvarianceReport:
    """The finite-state check on a discretized continuous target: bin a scalar projection
    of x (``project``, default the first coordinate) at quantiles of π, start at exact
    draws x₀ ~ π, step, and test the bin-to-bin table C: equal row and column sums
    (stationarity of the lumped chain) and, if ``reversible``, C = Cᵀ (detailed balance:
    (x₀, x₁) is exchangeable), each entry within ``n_sigma`` standard errors. Fails also
    on NaN / inf projections and when no chain moved.

    Example::

        check_binned_invariance(hmc(logp, 0.3, 5), lambda k, n: jax.random.normal(k, (n, 2)), key)
    """
    if project is None:
        project = lambda x: jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(x)])[0]
    k_edges, k_init, k_run = jax.random.split(key, 3)
    ref = np.asarray(jax.vmap(project)(sample_target(k_edges, num_chains)))
    edges = np.quantile(ref, np.linspace(0, 1, num_bins + 1)[1:-1])
    x0 = sample_target(k_init, num_chains)
    x1 = _run(kernel, x0, k_run, num_steps)
    p0, p1 = np.asarray(jax.vmap(project)(x0)), np.asarray(jax.vmap(project)(x1))
    garbage = _nonfinite("project(x_0)", p0) + _nonfinite("project(x_1)", p1)
    garbage += _nonfinite("bin edges", edges)
    garbage += [] if _moved_fraction(x0, x1) > 0 else [_STUCK]
    if garbage:
        raise AssertionError(
            f"kernel invariance cannot be checked ({num_chains} chains from π):\n"
            + "\n".join(garbage)
        )
    b0, b1 = np.searchsorted(edges, p0), np.searchsorted(edges, p1)
    C = np.zeros((num_bins, num_bins))
    np.add.at(C, (b0, b1), 1.0)
    N = float(num_chains)
    # stationarity: per-chain d_j = 1[b1 = j] − 1[b0 = j]; E d_j = 0
    m = (C.sum(0) - C.sum(1)) / N
    e2 = (C.sum(0) + C.sum(1) - 2 * np.diag(C)) / N
    se = np.sqrt(np.maximum(e2 - m**2, 0.0) / N)
    problems, stat_z = _worst(m, se, n_sigma, 0.0, "bin mass change", lambda i: f"[{i[0]}]")
    problems = (["πP ≠ π (bins):"] + problems) if problems else []
    bal_err = bal_z = None
    if reversible:
        # per-chain D_ij = 1[b0=i, b1=j] − 1[b0=j, b1=i]; E D_ij = 0
        mb = (C - C.T) / N
        seb = np.sqrt(np.maximum((C + C.T) / N - mb**2, 0.0) / N)
        lines, bal_z = _worst(mb, seb, n_sigma, 0.0, "C_ij − C_ji", lambda i: f" at {i}")
        bal_err = float(np.max(np.abs(mb)))
        if lines:
            problems += ["detailed balance fails (bins):"] + lines
    report = InvarianceReport(float(np.max(np.abs(m))), bal_err, stat_z, bal_z, tuple(problems))
    if problems:
        raise AssertionError(
            f"kernel is not invariant ({num_chains} chains from π, {num_bins} bins, "
            f"{n_sigma} SE):\n" + "\n".join(problems)
        )
    return report


def _geweke_test_fn(theta, y):
    t = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(theta)])
    d = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(y)])
    return jnp.concatenate([t, t**2, t * jnp.mean(d)])


def check_geweke(
    make_kernel: Callable[[Callable], Any],
    logjoint_fn: Callable,
    sample_joint: Callable[[jax.Array, int], tuple[Any, Any]],
    sample_data: Callable[[jax.Array, Any], Any],
    key: jax.Array,
    num_chains: int = 10_000,
    num_iters: int = 5,
    test_fn: Callable | None = None,
    n_sigma: float = 4.0,
) -> StationarityReport:
    """Geweke's "getting it right" test: the successive-conditional simulator
    θ ~ K_y(θ, ·) (the kernel for the posterior p(θ | y) ∝ p(θ, y)), then y ~ p(y | θ),
    started at exact joint draws, must keep the joint p(θ, y). ``num_chains`` independent
    simulators run ``num_iters`` rounds; mean f(θ, y) (default θ, θ², θ·ȳ) is compared with
    an independent exact joint sample and with the start, within ``n_sigma`` SE. Catches
    kernels and hand-written log densities/gradients that target the wrong posterior.
    Fails also on NaN / inf statistics and when θ never moved (a stuck kernel keeps the
    joint trivially).

    Example::

        check_geweke(lambda ld: mala(ld, 0.3), logjoint, sample_joint,
                     lambda k, theta: theta + jax.random.normal(k, (5,)), key)
    """
    test_fn = _geweke_test_fn if test_fn is None else test_fn

    def simulator(theta, y, k):
        def round_(carry, kk):
            theta, y = carry
            k_step, k_data = jax.random.split(kk)
            kernel = make_kernel(lambda t: logjoint_fn(t, y))
            s, _ = kernel.step(k_step, kernel.init(theta))
            return (s.position, sample_data(k_data, s.position)), None

        (theta, y), _ = jax.lax.scan(round_, (theta, y), jax.random.split(k, num_iters))
        return theta, y

    k_start, k_ref, k_run = jax.random.split(key, 3)
    theta0, y0 = sample_joint(k_start, num_chains)
    thetaT, yT = jax.jit(jax.vmap(simulator))(theta0, y0, jax.random.split(k_run, num_chains))
    f0 = np.asarray(jax.vmap(test_fn)(theta0, y0), np.float64)
    fT = np.asarray(jax.vmap(test_fn)(thetaT, yT), np.float64)
    fR = np.asarray(jax.vmap(test_fn)(*sample_joint(k_ref, num_chains)), np.float64)
    moved = _moved_fraction(theta0, thetaT)
    d = fT - f0
    z_paired = d.mean(0) / np.maximum(d.std(0, ddof=1) / np.sqrt(num_chains), 1e-300)
    se = np.sqrt((fT.var(0, ddof=1) + fR.var(0, ddof=1)) / num_chains)
    z_ref = (fT.mean(0) - fR.mean(0)) / np.maximum(se, 1e-300)
    lines = _nonfinite("f(start)", f0) + _nonfinite("f(simulator)", fT)
    lines += _nonfinite("f(joint)", fR) + ([] if moved > 0 else [_STUCK])
    bad = np.flatnonzero(~((np.abs(z_paired) <= n_sigma) & (np.abs(z_ref) <= n_sigma)))
    lines += [
        f"  f[{i}]: joint {fR.mean(0)[i]:.4g} simulator {fT.mean(0)[i]:.4g} "
        f"z {z_ref[i]:+.1f} (paired z {z_paired[i]:+.1f})"
        for i in bad[:8]
    ]
    report = StationarityReport(f0.mean(0), fT.mean(0), z_paired, z_ref, moved, tuple(lines))
    if lines:
        raise AssertionError(
            f"Geweke test failed: the successive-conditional simulator left the joint "
            f"after {num_iters} rounds ({num_chains} chains, {n_sigma} SE):\n" + "\n".join(lines)
        )
    return report
