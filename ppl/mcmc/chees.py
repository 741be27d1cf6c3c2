"""ChEES-HMC (Hoffman, Radul & Sountsov, 2021): HMC whose trajectory length is jittered each
iteration and, during warm-up, tuned across many parallel chains.

Three layers, all on BlackJAX (``blackjax.mcmc.hmc`` for the transition,
``blackjax.adaptation.chees_adaptation`` for the ChEES criterion, dual averaging, Adam on
log T, the ensemble mass matrix and its slow-direction length floor; the metric is
estimated in Stan's windows, diagonal or dense, by :mod:`ppl.mcmc.ensemble_metric`):

- :func:`chees`, a pure kernel: one HMC transition with ⌈u·T/ε⌉ leapfrog steps;
- :func:`chees_adaptation`, the pure many-chain warm-up (``lax.scan`` of :func:`chees_warmup`);
- :class:`ChEES`, a NumPyro ensemble kernel running that warm-up inside ``numpyro.infer.MCMC``.

BlackJAX's ``chees_adaptation(...).run`` is one ``lax.scan`` over the whole warm-up; here the
same iteration is exposed step by step (``chees_warmup``) so NumPyro's driver can call it
once per warm-up iteration (a test checks it reproduces BlackJAX's ``run`` under
BlackJAX's metric schedule, ``mass_matrix_windows=False``), plus two additions: the metric
is re-estimated in Stan's windows (the default), and chains that stop moving early in
warm-up, or are lost far below the others' log density (:mod:`ppl.mcmc.ensemble_rescue`),
restart from healthy ones.
BlackJAX is imported when something is built, so ``import ppl`` does not need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform
from numpyro.util import is_prng_key

from ..core.arguments import count
from . import ensemble_metric, ensemble_rescue
from .adapters import (
    ModelKernel,
    _leapfrog_step_size,
    _position,
    _potential_energy,
    _z_grad,
    unknown_field,
)
from .base import GradState, Info, Kernel
from .gradient import _grad_init

# warm-up rescue of chains that stopped moving (see ``chees_warmup``)
RESCUE_EVERY = 50
_RESCUE_SALT = 0x5EED

# Halton points over 30 bits: exact for the first 2³⁰ − 1 iterations (BlackJAX uses
# ⌈log₂(warm-up + sampling)⌉ bits, which gives the same points over that range).
HALTON_BITS = 30


def halton(i: jax.Array) -> jax.Array:
    """The (i+1)-th point of the base-2 Halton (van der Corput) sequence, in (0, 1): the
    quasi-random trajectory-length jitter ChEES-HMC shares across chains at iteration i.
    Example: ``[halton(jnp.int32(i)) for i in range(3)]`` = 0.5, 0.25, 0.75."""
    from blackjax.mcmc.dynamic_hmc import halton_sequence

    return halton_sequence(jnp.asarray(i, jnp.int32), HALTON_BITS)


def _num_steps(jitter, step_size, trajectory_length):
    # BlackJAX's integration_steps_fn: ⌈u · (T/ε)⌉, ≥ 1 for u > 0
    return jnp.asarray(jnp.ceil(jitter * (trajectory_length / step_size)), dtype=int)


def _hmc_transition(logdensity_fn, divergence_threshold):
    """BlackJAX's HMC transition over GradStates, returning BlackJAX's full ``HMCInfo``
    (the proposal and momentum feed the ChEES criterion)."""
    from blackjax.mcmc import hmc as bj_hmc

    kernel = bj_hmc.build_kernel(divergence_threshold=divergence_threshold)

    def transition(key, state, step_size, inverse_mass_matrix, num_steps):
        x, _ = ravel_pytree(state.position)
        inv_mass = jnp.asarray(inverse_mass_matrix, x.dtype)
        if inv_mass.ndim < 2:  # scalar or diagonal; a (d, d) matrix is a dense metric
            inv_mass = jnp.broadcast_to(inv_mass, x.shape)
        new, info = kernel(
            key, bj_hmc.HMCState(*state), logdensity_fn, step_size, inv_mass, num_steps
        )
        return _reject_non_finite(state, GradState(*new), info)

    return transition


def _reject_non_finite(state, new, info):
    """A proposal whose energy is not finite is a divergence, rejected. BlackJAX 1.7 maps
    only a NaN energy difference to rejection; with a dense metric the kinetic energy pᵀΣp/2
    of an overflowing momentum can round to −∞ (a sum of ±∞ terms), and such proposals
    (log density −1e260 on arma11's explosive region) were accepted with probability 1."""
    ok = jnp.isfinite(info.energy)
    new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
    info = info._replace(
        acceptance_rate=jnp.where(ok, info.acceptance_rate, 0.0),
        is_accepted=info.is_accepted & ok,
        is_divergent=info.is_divergent | ~ok,
    )
    return new, info


def chees(
    logdensity_fn: Callable,
    step_size: float | jax.Array,
    trajectory_length: float | jax.Array,
    inverse_mass_matrix: float | jax.Array = 1.0,
    jitter: float | jax.Array | None = None,
    divergence_threshold: float = 1000.0,
) -> Kernel:
    """Jittered-trajectory HMC, the transition of ChEES-HMC: a fresh momentum p ~ N(0, M),
    n = ⌈u·T/ε⌉ leapfrog steps of size ε (T = ``trajectory_length``), then an MH test;
    ``inverse_mass_matrix`` is a scalar or a diagonal over the flattened position.

    ``jitter=None`` draws u ~ U(0, 1] from the step's key, independently of the state: the
    kernel is a mixture over n of reversible HMC kernels, so it is reversible and composes
    with ``cycle``/``mixture``/``block`` (its state is a plain ``GradState``). A number
    u ∈ (0, 1] fixes n instead; drivers of many chains build the kernel each iteration with
    the shared Halton point ``u = halton(t)`` (as ChEES-HMC does) so every chain takes the
    same number of leapfrog steps and a ``vmap`` over chains wastes none. ``Info``:
    ``acceptance_rate`` = min(1, e^{−ΔH}), ``is_accepted``.

    Example::

        k = chees(lambda x: -0.5 * jnp.sum(x**2), step_size=0.3, trajectory_length=2.0)
        state, info = k.step(jax.random.key(0), k.init(jnp.zeros(3)))
    """
    _check_positive(step_size, "step_size", "chees")
    _check_positive(trajectory_length, "trajectory_length", "chees")
    if jitter is not None and not isinstance(jitter, jax.Array):
        if not 0 < float(jitter) <= 1:
            raise ValueError(f"chees: jitter must be None or in (0, 1], got {jitter!r}")
    init = _grad_init(logdensity_fn)
    transition = _hmc_transition(logdensity_fn, divergence_threshold)

    def step(key, state):
        u = jitter
        if jitter is None:
            key, k_jit = jax.random.split(key)
            u = 1.0 - jax.random.uniform(k_jit)  # (0, 1]
        n = _num_steps(u, step_size, trajectory_length)
        new, info = transition(key, state, step_size, inverse_mass_matrix, n)
        return new, Info(info.acceptance_rate, info.is_accepted)

    return Kernel(init, step)


def _check_positive(value, name, who):
    if isinstance(value, jax.core.Tracer):
        return
    if value is None:
        raise ValueError(f"{who}: {name} must be positive, got None")
    if not np.all(np.asarray(value) > 0):
        raise ValueError(f"{who}: {name} must be positive, got {value!r}")


class ChEESParameters(NamedTuple):
    """What the jittered HMC kernel uses: step size ε, trajectory length T and the inverse
    mass matrix over the flattened position (a (d, d) matrix when the warm-up estimated a
    dense one, else a diagonal); ``chees(logdensity_fn, *params)`` builds it."""

    step_size: jax.Array
    trajectory_length: jax.Array
    inverse_mass_matrix: jax.Array


class ChEESAdaptState(NamedTuple):
    """Warm-up state over all chains: BlackJAX's ``ChEESAdaptationState`` (dual averaging of
    log ε, Adam on log T, their moving averages), the ensemble moment accumulators of the
    metric (``welford``: BlackJAX's schedule only; ``moments``: the windows' and the length
    floor's) and the floor's eigen-estimate (None when not estimated), and the
    ``parameters`` the next iteration uses (the final ones after the last warm-up step), and
    per chain the iterations since it last accepted a move (``idle``, for the rescue)."""

    chees: Any
    welford: Any
    moments: Any
    eig: Any
    parameters: ChEESParameters
    idle: jax.Array


class ChEESWarmup(NamedTuple):
    """From :func:`chees_warmup`: ``start(step_size, states, trajectory_length=None,
    inverse_mass_matrix=None) -> ChEESAdaptState``; ``step(key, t, states, adapt) ->
    (states, adapt, hmc_info)``, one iteration of all chains (leading axis of ``states``);
    its parts ``update(t, states, new_states, hmc_info, adapt) -> adapt`` and
    ``rescue(key, t, states, adapt) -> (states, adapt)`` for drivers that take the chains'
    step themselves."""

    start: Callable
    step: Callable
    update: Callable
    rescue: Callable


def chees_warmup(
    logdensity_fn: Callable,
    num_warmup: int,
    learning_rate: float = 0.025,
    target_acceptance_rate: float = 0.651,
    decay_rate: float = 0.5,
    max_leapfrog_steps: int = 1000,
    adapt_mass_matrix: bool = True,
    mass_matrix_window_fraction: float = 0.5,
    length_floor: bool = True,
    divergence_threshold: float = 1000.0,
    dense_mass_matrix: bool = False,
    mass_matrix_windows: bool = True,
) -> ChEESWarmup:
    """ChEES-HMC's warm-up, one iteration at a time: all chains take one jittered HMC step
    with the shared Halton jitter u = halton(t); ε follows dual averaging of the chains'
    harmonic-mean acceptance toward ``target_acceptance_rate``; log T follows Adam
    (``learning_rate``, β₁ = 0, β₂ = 0.95, as TFP) on the ChEES criterion
    E[(‖x′ − x̄′‖² − ‖x − x̄‖²)²]/4 weighted by acceptance; and (``length_floor``) T is
    floored at (π/2)√λ_max of the ensemble covariance in the metric's whitened coordinates.
    With ``adapt_mass_matrix`` (the default) the inverse mass matrix is the pooled ensemble
    variance of each of Stan's doubling windows (:mod:`ppl.mcmc.ensemble_metric`: 75 / 25 /
    50 / 100 / 200 / 50 iterations for 500; the identity through the first), set at the
    window's end, where dual averaging and the moving averages of ε and T restart, and the
    length floor engages after the first window. ``dense_mass_matrix=True`` (opt-in) takes
    the window's pooled covariance instead, shrunk toward its diagonal by 5/(n + 5), as a
    dense metric. ``mass_matrix_windows=False`` is BlackJAX 1.7's schedule (diagonal only):
    the identity, then the pooled variance over the last ``mass_matrix_window_fraction`` of
    warm-up, with the floor over that part only. Measured on posteriordb (64 chains, 500
    warm-up iterations, 200 draws; ``tests/mcmc/test_posteriordb_chees.py``): BlackJAX's
    schedule leaves kilpisjarvi (intercept and slope correlated at 1 − 10⁻⁵) off by 162
    standard errors and earnings by 14 (R-hat 3.9); the windowed diagonal passes both and
    the 11 others. The floor must wait: from t = 0 (a dispersed start) it drove ε to 1e-6
    on low_dim_gauss_mix, and from half of warm-up kilpisjarvi's chains never spread along
    the ridge (z 150+). The dense metric crosses kilpisjarvi's ridge in 13–23 leapfrog steps
    (the diagonal one in 600–800) but mixes GP hyperparameters worse per draw (accel_gp,
    gp_pois_regr: R-hat 1.07–1.10), so it is not the default.
    The last iteration (t = ``num_warmup`` − 1) sets ``parameters`` to the moving averages.
    A warm-up addition (``rescue``): every 50 iterations a chain restarts at a random
    healthy chain's state if it is lost (log density far below the ensemble's median:
    :func:`ppl.mcmc.ensemble_rescue.lost_chains`; such a chain can keep moving for the whole
    run, e.g. at a huge noise scale) or, in the first half, has not accepted a move in 50
    iterations (no shared ε frees a chain stuck where every proposal fails, e.g. an
    explosive AR start). Either would also corrupt the ensemble mass matrix.

    Example::

        w = chees_warmup(logp, num_warmup=500)
        states = jax.vmap(chees(logp, 0.1, 0.1).init)(x0)
        adapt = w.start(0.1, states)
        states, adapt, _ = w.step(key, 0, states, adapt)
    """
    import optax
    from blackjax.adaptation import chees_adaptation as bj
    from blackjax.adaptation.mass_matrix import welford_algorithm
    from blackjax.adaptation.metric_buffers import MomentBlock, cgl_update_batch

    num_warmup = count(num_warmup, "num_warmup", "chees_warmup")
    max_leapfrog_steps = count(max_leapfrog_steps, "max_leapfrog_steps", "chees_warmup")
    if not 0.0 <= mass_matrix_window_fraction <= 1.0:
        raise ValueError(
            "chees_warmup: mass_matrix_window_fraction must be in [0, 1], "
            f"got {mass_matrix_window_fraction!r}"
        )
    if not 0.0 < target_acceptance_rate < 1.0:
        raise ValueError(
            "chees_warmup: target_acceptance_rate must be in (0, 1), "
            f"got {target_acceptance_rate!r}"
        )
    if dense_mass_matrix and adapt_mass_matrix and not mass_matrix_windows:
        raise ValueError(
            "chees_warmup: dense_mass_matrix=True needs mass_matrix_windows=True (the dense "
            "metric is estimated in Stan's windows)"
        )
    floor = adapt_mass_matrix and length_floor
    windowed = adapt_mass_matrix and mass_matrix_windows
    dense = windowed and dense_mass_matrix
    optim = optax.adam(learning_rate, b1=0.0, b2=0.95)
    init, update = bj.base(
        halton, lambda i: i + 1, optim, target_acceptance_rate, decay_rate, max_leapfrog_steps
    )
    wc_init, wc_update, _ = welford_algorithm(is_diagonal_matrix=True)
    window_start = int(mass_matrix_window_fraction * num_warmup) if adapt_mass_matrix else None
    transition = _hmc_transition(logdensity_fn, divergence_threshold)
    window_ends = ensemble_metric.window_ends(num_warmup)
    # with the windowed metric the length floor engages after the first window (docstring)
    floor_start = int(window_ends[0]) + 1

    def start(step_size, states, trajectory_length=None, inverse_mass_matrix=None):
        num_chains, num_dim = _flat_positions(states.position).shape
        step_size = jnp.asarray(step_size, jnp.result_type(float))
        state = init(jnp.asarray(0, jnp.int32), step_size)
        if trajectory_length is not None:
            state = state._replace(
                trajectory_length=jnp.asarray(trajectory_length, step_size.dtype)
            )
        imm = 1.0 if adapt_mass_matrix or inverse_mass_matrix is None else inverse_mass_matrix
        imm = jnp.broadcast_to(jnp.asarray(imm, step_size.dtype), (num_dim,))
        if dense:
            imm = jnp.eye(num_dim, dtype=step_size.dtype)
        welford = moments = eig = None
        if adapt_mass_matrix and not windowed:  # BlackJAX's schedule's variance estimate
            welford = wc_init(num_dim)
        if floor or windowed:
            moments = MomentBlock(jnp.zeros(()), jnp.zeros(num_dim), jnp.zeros((num_dim, num_dim)))
        if floor:
            eig = bj._eig_state_init(num_dim)
        params = ChEESParameters(step_size, state.trajectory_length, imm)
        idle = jnp.zeros(num_chains, jnp.int32)
        return ChEESAdaptState(state, welford, moments, eig, params, idle)

    threshold = ensemble_metric.diagonal_engagement_threshold

    def inverse_mass(adapt, num_dim):
        # fixed (identity unless given to ``start``), or set at the ends of the windows
        # (``ensemble_metric.end_window``)
        if adapt.welford is None:
            return adapt.parameters.inverse_mass_matrix
        return bj._diagonal_mass_matrix_or_fallback(adapt.welford, threshold(num_dim), num_dim)

    def consumed_length(length, step_size, welford, eig, num_dim, moments=None, t=None):
        if not floor:
            return length
        if windowed:
            engaged = ensemble_metric.engaged(moments, num_dim, dense)
            if t is not None:  # ``final`` (t = num_warmup - 1) is past floor_start
                engaged = engaged & (t >= floor_start)
        else:
            engaged = welford.sample_size >= threshold(num_dim)
        return bj._apply_length_floor(
            length, eig.lambda_max, engaged, True, max_leapfrog_steps, step_size
        )[0]

    def final(adapt, num_dim):
        c = adapt.chees
        step_size = jnp.exp(c.log_step_size_moving_average)
        length = jnp.exp(c.log_trajectory_length_moving_average)
        imm = inverse_mass(adapt, num_dim)
        if floor:
            eig = ensemble_metric.recompute_eig_state(
                adapt.moments, imm, adapt.eig, bj._LENGTH_FLOOR_FINAL_POWER_ITERATIONS
            )
            length = consumed_length(length, step_size, adapt.welford, eig, num_dim, adapt.moments)
        return ChEESParameters(step_size, length, imm)

    def step(key, t, states, adapt):
        new, info = _ensemble_step(transition, key, t, states, adapt.parameters)
        adapt = adapt_update(t, states, new, info, adapt)
        new, adapt = rescue(jax.random.fold_in(key, _RESCUE_SALT), t, new, adapt)
        return new, adapt, info

    def rescue(key, t, states, adapt):
        # every RESCUE_EVERY iterations of warm-up (which need not preserve the target), a
        # chain restarts at a random healthy chain's state when it is lost (log density far
        # below the others': ``ensemble_rescue.lost_chains``) or, in the first half, has not
        # moved for RESCUE_EVERY iterations (no shared ε frees a chain where every proposal
        # is rejected)
        num_dim = adapt.parameters.inverse_mass_matrix.shape[0]
        stuck = (adapt.idle >= RESCUE_EVERY) & (t < num_warmup // 2)
        restart = stuck | ensemble_rescue.lost_chains(states.logdensity, num_dim)
        restart = restart & ((t + 1) % RESCUE_EVERY == 0)
        states = ensemble_rescue.restart_from_healthy(key, states, restart)
        idle = jnp.where(restart & ~jnp.all(restart), 0, adapt.idle)
        return states, adapt._replace(idle=idle)

    def adapt_update(t, states, new, info, adapt):
        num_dim = adapt.parameters.inverse_mass_matrix.shape[0]
        imm = adapt.parameters.inverse_mass_matrix
        # BlackJAX's criterion reduces each leaf over its last axis only: hand it every
        # chain's position as one flat vector (a matrix-valued site, e.g. Dirichlet rows,
        # failed to broadcast)
        proposal, momentum, initial, criterion_imm = (
            _flat_positions(info.proposal.position),
            _flat_positions(info.proposal.momentum),
            _flat_positions(states.position),
            imm,
        )
        if imm.ndim == 2:  # BlackJAX whitens by a diagonal: hand it whitened coordinates
            to_white, velocity_to_white = ensemble_metric.whitening(imm)
            proposal, initial = to_white(proposal), to_white(initial)
            momentum = velocity_to_white(momentum)
            criterion_imm = jnp.ones(num_dim, imm.dtype)
        chees_state = update(
            adapt.chees,
            proposal,
            momentum,
            initial,
            info.acceptance_rate,
            info.is_divergent,
            criterion_imm,
        )
        idle = jnp.where(info.is_accepted, 0, adapt.idle + 1)
        adapt = adapt._replace(chees=chees_state, idle=idle)
        if adapt_mass_matrix:
            # BlackJAX's schedule: the last window_fraction of warm-up; windowed: every window
            in_window = (t >= window_start) | windowed
            x_new = _flat_positions(new.position)

            def fold(acc):
                return jax.lax.scan(lambda a, row: (wc_update(a, row), None), acc, x_new)[0]

            if not windowed:  # the Welford variance is BlackJAX's schedule's metric
                welford = jax.lax.cond(in_window, fold, lambda a: a, adapt.welford)
                adapt = adapt._replace(welford=welford)
            if floor or windowed:
                moments = jax.lax.cond(
                    in_window, lambda a: cgl_update_batch(a, x_new), lambda a: a, adapt.moments
                )
                adapt = adapt._replace(moments=moments)
            if floor:
                recompute = in_window & (t % bj._LENGTH_FLOOR_RECOMPUTE_INTERVAL == 0)
                if windowed:
                    recompute = recompute & ensemble_metric.engaged(moments, num_dim, dense)
                eig = jax.lax.cond(
                    recompute,
                    lambda e: ensemble_metric.recompute_eig_state(moments, imm, e),
                    lambda e: e,
                    adapt.eig,
                )
                adapt = adapt._replace(moments=moments, eig=eig)
        if windowed:
            adapt = jax.lax.cond(
                jnp.any(t == window_ends),
                lambda a: ensemble_metric.end_window(a, num_dim),
                lambda a: a,
                adapt,
            )
        c = adapt.chees
        next_imm = inverse_mass(adapt, num_dim)
        next_length = consumed_length(
            c.trajectory_length, c.step_size, adapt.welford, adapt.eig, num_dim, adapt.moments, t
        )
        params = ChEESParameters(c.step_size, next_length, next_imm)
        params = jax.lax.cond(
            t == num_warmup - 1, lambda a: final(a, num_dim), lambda a: params, adapt
        )
        return adapt._replace(parameters=params)

    return ChEESWarmup(start, step, adapt_update, rescue)


def _flat_positions(positions) -> jax.Array:
    """Every chain's position pytree (leading chain axis) as one flat vector: (C, d)."""
    return jax.vmap(lambda p: ravel_pytree(p)[0])(positions)


def _ensemble_step(transition, key, t, states, params: ChEESParameters):
    """All chains (leading axis) take one jittered HMC step with the shared jitter halton(t)."""
    num_chains = jax.tree.leaves(states.position)[0].shape[0]
    eps, length, imm = params
    n = _num_steps(halton(t), eps, length)
    keys = jax.random.split(key, num_chains)
    return jax.vmap(lambda k, s: transition(k, s, eps, imm, n))(keys, states)


def _initial_step_size(logdensity_fn, position, key):
    """NumPyro's reasonable leapfrog step size (one-step acceptance crossing 0.8) at one
    chain's position, identity mass matrix, from ε = 1."""
    flat, _ = ravel_pytree(position)
    find = _leapfrog_step_size(logdensity_fn)
    return find(
        jnp.asarray(1.0, flat.dtype), jnp.ones_like(flat), (position, None, None, None), key
    )


def chees_adaptation(
    rng_key: jax.Array,
    logdensity_fn: Callable,
    positions: Any,
    num_warmup: int,
    step_size: float | None = None,
    **warmup_options,
) -> tuple[GradState, ChEESParameters]:
    """Run ChEES-HMC's warm-up (:func:`chees_warmup`, options passed through) over the
    chains whose initial ``positions`` stack along the leading axis (≥ 2 chains; tens to
    hundreds is the intended use). ``step_size=None`` starts from NumPyro's reasonable
    step size at the first chain. Returns the chains' last states and the adapted
    :class:`ChEESParameters`; continue the shared jitter with ``halton(num_warmup + t)``.

    Example::

        states, params = chees_adaptation(key, logp, jnp.zeros((64, 3)), num_warmup=500)
        kernel = chees(logp, *params, jitter=halton(500))
        states, info = jax.vmap(kernel.step)(jax.random.split(key, 64), states)
    """
    num_warmup = count(num_warmup, "num_warmup", "chees_adaptation")
    leaves = jax.tree.leaves(positions)
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        raise ValueError(
            "chees_adaptation: positions must be a pytree of arrays sharing a leading chain axis"
        )
    (num_chains,) = sizes
    if num_chains < 2:
        raise ValueError(
            f"chees_adaptation: positions holds {num_chains} chain; the cross-chain "
            "adaptation needs at least 2 (tens to hundreds recommended)"
        )
    warmup = chees_warmup(logdensity_fn, num_warmup, **warmup_options)
    key_eps, key_run = jax.random.split(rng_key)
    if step_size is None:
        step_size = _initial_step_size(
            logdensity_fn, jax.tree.map(lambda x: x[0], positions), key_eps
        )
    states = jax.vmap(_grad_init(logdensity_fn))(positions)
    adapt = warmup.start(step_size, states)

    def body(carry, xs):
        key, t = xs
        states, adapt, _ = warmup.step(key, t, *carry)
        return (states, adapt), None

    ts = jnp.arange(num_warmup, dtype=jnp.int32)
    (states, adapt), _ = jax.lax.scan(
        body, (states, adapt), (jax.random.split(key_run, num_warmup), ts)
    )
    return states, adapt.parameters


class ChEESState(NamedTuple):
    """State of :class:`ChEES` over all chains: the iteration ``i``, the chains' states
    (leading axis; ``z`` is the unconstrained position), the shared adaptation state, each
    chain's last acceptance probability and divergence, its mean acceptance over the
    phase (warm-up or sampling), and
    one ``rng_key`` (NumPyro's ensemble-kernel convention), and each chain's leapfrog steps
    (gradient evaluations) in the last iteration, ``num_steps`` (the shared jittered count,
    as NumPyro's ``HMCState.num_steps``; collect it with ``extra_fields=("num_steps",)``)."""

    i: jax.Array
    inner: GradState
    adapt: ChEESAdaptState
    accept_prob: jax.Array
    diverging: jax.Array
    mean_accept_prob: jax.Array
    rng_key: jax.Array
    num_steps: jax.Array

    z = property(_position, doc="Each chain's unconstrained position.")
    potential_energy = property(_potential_energy, doc=_potential_energy.__doc__)
    z_grad = property(_z_grad, doc=_z_grad.__doc__)

    @property
    def adapt_state(self):
        """The step size, trajectory length and inverse mass matrix in use (shared, repeated
        per chain: NumPyro collects an ensemble kernel's fields along the chain axis), under
        NumPyro's names (``extra_fields=("adapt_state.step_size",)``)."""
        chains = jnp.shape(self.inner.logdensity)[:1]
        return jax.tree.map(
            lambda p: jnp.broadcast_to(p, chains + jnp.shape(p)), self.adapt.parameters
        )

    __getattr__ = unknown_field("ChEES's state", "potential_energy, z_grad, adapt_state")


class ChEES(ModelKernel):
    """ChEES-HMC on a NumPyro model: many chains take jittered-trajectory HMC steps
    (:func:`chees`, n = ⌈halton(t)·T/ε⌉ shared by all chains) and, during warm-up, ε, T
    and an inverse mass matrix are tuned from all chains at once (:func:`chees_warmup`:
    dual averaging toward ``target_accept_prob`` 0.651, Adam on the ChEES criterion, and
    the pooled ensemble variance of each of Stan's doubling windows as a diagonal metric;
    ``dense_mass=True``: the windows' pooled covariance as a dense metric, far fewer
    leapfrog steps on near-collinear posteriors; ``mass_matrix_windows=False``: BlackJAX
    1.7's schedule, the variance over the second half of warm-up).

    Cross-chain adaptation needs one kernel that sees every chain, so ``ChEES`` is a NumPyro
    *ensemble kernel* (``is_ensemble_kernel = True``, as ``numpyro.infer.AIES``/``ESS``):
    run it with ``chain_method="vectorized"`` and ``num_chains`` ≥ 2 (tens to hundreds);
    ``init`` then receives one key per chain and the state holds all chains along a leading
    axis, which NumPyro collects as (chains, draws, ...). The default
    ``chain_method="parallel"`` would hand each chain to its own copy of the kernel, with
    nothing to adapt across, so it is refused with an error saying what to pass.
    ``step_size=None`` starts from NumPyro's reasonable step size at the first chain;
    ``trajectory_length=None`` starts warm-up at one leapfrog step (BlackJAX) and must be
    given when ``num_warmup=0``. ``print_summary`` counts the ``diverging`` field. Chains
    share ε, so a chain started where every proposal fails cannot adapt its way out, and a
    chain lost far in the tails can drag on for the whole run: during warm-up such chains
    restart from healthy ones (see :func:`chees_warmup`); sampling is plain jittered HMC at
    the final parameters.

    Example::

        mcmc = MCMC(ppl.mcmc.ChEES(model), num_warmup=500, num_samples=500, num_chains=64,
                    chain_method="vectorized")
        mcmc.run(jax.random.key(0), data)
    """

    target_accept_prob = 0.651
    supports_mass_matrix = True
    adapts_mass_matrix = True

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        step_size: float | None = None,
        trajectory_length: float | None = None,
        target_accept_prob: float | None = None,
        learning_rate: float = 0.025,
        decay_rate: float = 0.5,
        max_leapfrog_steps: int = 1000,
        adapt_mass_matrix: bool | None = None,
        inverse_mass_matrix: jax.Array | None = None,
        init_strategy: Callable = init_to_uniform,
        divergence_threshold: float = 1000.0,
        dense_mass: bool = False,
        mass_matrix_windows: bool = True,
    ):
        super().__init__(
            model,
            potential_fn,
            step_size,
            True,
            target_accept_prob,
            init_strategy,
            adapt_mass_matrix,
            inverse_mass_matrix,
        )
        if step_size is not None:
            _check_positive(step_size, "step_size", "ChEES")
        if trajectory_length is not None:
            _check_positive(trajectory_length, "trajectory_length", "ChEES")
        self._trajectory_length = trajectory_length
        self._warmup_options = dict(
            learning_rate=learning_rate,
            target_acceptance_rate=self.target_accept_prob,
            decay_rate=decay_rate,
            max_leapfrog_steps=max_leapfrog_steps,
            adapt_mass_matrix=self._adapt_mass_matrix,
            divergence_threshold=divergence_threshold,
            dense_mass_matrix=dense_mass,
            mass_matrix_windows=mass_matrix_windows,
        )
        self._divergence_threshold = divergence_threshold

    @property
    def is_ensemble_kernel(self):
        return True

    @property
    def default_fields(self):
        return ("z", "diverging")

    def build(self, logdensity_fn, step_size, inverse_mass_matrix=1.0):
        """The pure jittered kernel (:func:`chees`, key-drawn jitter) at the given ε and the
        ``trajectory_length`` this adapter was built with."""
        return chees(
            logdensity_fn,
            step_size,
            self._trajectory_length,
            inverse_mass_matrix,
            divergence_threshold=self._divergence_threshold,
        )

    def get_diagnostics_str(self, state):
        eps, length, _ = state.adapt.parameters
        return (
            f"step size {float(eps):.2e}, T/eps {float(length / eps):.0f}. "
            f"acc. prob={float(jnp.mean(state.mean_accept_prob)):.2f}"
        )

    def refresh(self, state, model_args, model_kwargs):
        raise NotImplementedError("ChEES is an ensemble kernel; it cannot run inside Gibbs")

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if self._model is None and self._potential_fn is None:
            raise ValueError("ChEES has neither a `model` nor a `potential_fn`.")
        if is_prng_key(rng_key) or jnp.shape(rng_key)[0] < 2:
            raise ValueError(
                "ChEES adapts across chains: run it with MCMC(..., num_chains=N, "
                "chain_method='vectorized'), N >= 2 (tens to hundreds recommended); "
                "got a single chain's key (num_chains=1 or chain_method other than "
                "'vectorized')"
            )
        self._num_warmup = count(num_warmup, "num_warmup", "ChEES", minimum=0)
        if self._num_warmup == 0 and self._trajectory_length is None:
            raise ValueError("ChEES: num_warmup=0 needs a trajectory_length (nothing tunes it)")
        num_chains = jnp.shape(rng_key)[0]
        keys = jax.vmap(jax.random.split)(rng_key)
        key, key_init = keys[0, 0], keys[:, 1]
        if self._model is not None:
            init_params = self._setup(key_init, init_params, model_args, model_kwargs)
        if hasattr(init_params, "z"):  # ParamInfo
            init_params = init_params.z
        if init_params is None:
            raise ValueError("ChEES: valid `init_params` must be provided with `potential_fn`.")
        if not jax.tree.leaves(init_params):
            raise ValueError(
                "ChEES: the model has no latent sites to sample (its draws would be {});"
                " ppl.mcmc.NUTS or HMC run such a model"
            )
        if any(jnp.shape(x)[:1] != (num_chains,) for x in jax.tree.leaves(init_params)):
            raise ValueError(f"ChEES: init_params need a leading axis of num_chains={num_chains}")
        logdensity_fn = self._logdensity_fn(model_args, model_kwargs)
        first = jax.tree.map(lambda x: x[0], init_params)
        num_dim = ravel_pytree(first)[0].size
        key, key_eps = jax.random.split(key)
        step_size = self._step_size
        if step_size is None:
            step_size = _initial_step_size(logdensity_fn, first, key_eps)
        imm = self._inverse_mass_matrix
        inner = jax.vmap(_grad_init(logdensity_fn))(init_params)
        if self._num_warmup > 0:
            warmup = chees_warmup(logdensity_fn, self._num_warmup, **self._warmup_options)
            adapt = warmup.start(step_size, inner, self._trajectory_length, imm)
        else:
            eps = jnp.asarray(step_size, jnp.result_type(float))
            imm = jnp.broadcast_to(jnp.asarray(1.0 if imm is None else imm, eps.dtype), (num_dim,))
            length = jnp.asarray(self._trajectory_length, eps.dtype)
            params = ChEESParameters(eps, length, imm)
            adapt = ChEESAdaptState(None, None, None, None, params, jnp.zeros(num_chains, int))
        zeros = jnp.zeros(num_chains, jnp.result_type(float))
        self._sample_fn = self.sample
        return ChEESState(
            jnp.array(0),
            inner,
            adapt,
            zeros,
            zeros > 0,
            zeros,
            key,
            jnp.zeros(num_chains, jnp.int32),
        )

    def sample(self, state, model_args, model_kwargs):
        if self._sample_fn is None:
            raise RuntimeError("`init` must be called before `sample`.")
        logdensity_fn = self._logdensity_fn(model_args, model_kwargs)
        transition = _hmc_transition(logdensity_fn, self._divergence_threshold)
        rng_key, key = jax.random.split(state.rng_key)
        t = state.i

        inner, info = _ensemble_step(transition, key, t, state.inner, state.adapt.parameters)
        adapt = state.adapt
        if self._num_warmup > 0:
            warmup = chees_warmup(logdensity_fn, self._num_warmup, **self._warmup_options)

            def warm(args):
                new, adapt = args
                adapt = warmup.update(t, state.inner, new, info, adapt)
                return warmup.rescue(jax.random.fold_in(key, _RESCUE_SALT), t, new, adapt)

            inner, adapt = jax.lax.cond(t < self._num_warmup, warm, lambda a: a, (inner, adapt))
        i = t + 1
        n = jnp.where(t < self._num_warmup, i, i - self._num_warmup)
        accept = info.acceptance_rate
        mean_accept_prob = state.mean_accept_prob + (accept - state.mean_accept_prob) / n
        return ChEESState(
            i,
            inner,
            adapt,
            info.acceptance_rate,
            info.is_divergent,
            mean_accept_prob,
            rng_key,
            jnp.asarray(info.num_integration_steps, jnp.int32),
        )
