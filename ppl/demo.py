"""End-to-end demo: hand-written objectives on a Gaussian mixture, trained with NumPyro's SVI.

Run it with ``python -m ppl demo`` (``--quick`` for the small mode used by the tests).

The model is a 3-component Gaussian mixture whose component locations are learned; the
guide gives every datum its own Categorical assignment. Two objectives are written by
hand below with :func:`ppl.objective`: an ELBO averaged over K particles and an IWAE
bound over the same K particles (both use :func:`ppl.particles`). Each is trained with
``numpyro.infer.SVI`` under several gradient strategies for the discrete site ``z``:

* ``reinforce``: score function, no baseline;
* ``reinforce(loo)``: score function with the leave-one-out baseline across particles
  (VIMCO for the IWAE);
* ``enum``: per-datum local expectation over the 3 assignments;
* ``mvd``: measure-valued derivative (for a Categorical it is the same local-expectation
  rule as ``enum``, so the two rows agree: a consistency check; shown for the ELBO).

For each run the table shows the objective estimated at the final parameters, the
exact ELBO there (q factorizes over data, so it is a finite sum), the exact log
marginal likelihood there, the gradient variance (sum over coordinates of the
variance of the SVI gradient across keys, at the final parameters and at the shared
initial ones) and the time per SVI step after compilation. Both objectives have the
same optimum, ``max log p(x; locs)`` (q = posterior), computed by EM for reference.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.scipy.special import logsumexp as jax_logsumexp
from numpyro.infer import SVI
from scipy.special import logsumexp

import ppl

NUM_COMPONENTS = 3
NUM_PARTICLES = 8
NUM_DATA = 20
LEARNING_RATE = 0.05
TRUE_LOCS = (-3.0, 0.0, 3.0)
INIT_LOCS = (-1.0, 0.0, 1.0)
LOG_WEIGHTS = -np.log(NUM_COMPONENTS)  # fixed, uniform mixture weights; unit scales


# -- data, model and guide ------------------------------------------------------------
def make_data(seed: int, num_data: int) -> np.ndarray:
    """Draw ``num_data`` points from the mixture at ``TRUE_LOCS`` (unit scales)."""
    rng = np.random.default_rng(seed)
    z = rng.integers(NUM_COMPONENTS, size=num_data)
    return (np.asarray(TRUE_LOCS)[z] + rng.standard_normal(num_data)).astype(np.float32)


def model(x):
    locs = numpyro.param("locs", jnp.asarray(INIT_LOCS))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(NUM_COMPONENTS)))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def guide(x):
    logits = numpyro.param("logits", jnp.zeros((x.shape[0], NUM_COMPONENTS)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=logits))


# -- the objectives, written by hand -------------------------------------------------
def log_weight(model, guide, *args, **kwargs):
    """One importance weight, log p(x, z) - log q(z) with z ~ q."""
    q = ppl.simulate(guide, *args, **kwargs)
    return ppl.density(model, q.values, *args, **kwargs) - q.log_prob


@ppl.objective
def elbo(model, guide, *args, **kwargs):
    """ELBO averaged over NUM_PARTICLES particles."""
    log_w = ppl.particles(log_weight, NUM_PARTICLES)(model, guide, *args, **kwargs)
    return jnp.mean(log_w)


@ppl.objective
def iwae(model, guide, *args, **kwargs):
    """IWAE bound: log of the average of NUM_PARTICLES importance weights."""
    log_w = ppl.particles(log_weight, NUM_PARTICLES)(model, guide, *args, **kwargs)
    return jax_logsumexp(log_w) - jnp.log(NUM_PARTICLES)


OBJECTIVES = {"elbo": elbo, "iwae": iwae}


def strategies() -> dict[str, Any]:
    """Strategies for the guide's discrete site ``z``, by table label."""
    return {
        "reinforce": ppl.reinforce(),
        "reinforce(loo)": ppl.reinforce(baseline="loo"),
        "enum": ppl.enum(),
        "mvd": ppl.mvd(),
    }


# -- exact references (numpy, float64) ------------------------------------------------
def _log_joint_table(locs, x) -> np.ndarray:
    """log p(x_n, z_n = c) for every datum n and component c: shape (N, C)."""
    x = np.asarray(x, np.float64)[:, None]
    locs = np.asarray(locs, np.float64)
    return LOG_WEIGHTS - 0.5 * np.log(2 * np.pi) - 0.5 * (x - locs) ** 2


def exact_elbo(params: dict, x) -> float:
    """The ELBO at ``params``, summed exactly over every datum's assignments."""
    logits = np.asarray(params["logits"], np.float64)
    log_q = logits - logsumexp(logits, axis=-1, keepdims=True)
    table = _log_joint_table(params["locs"], x)
    return float(np.sum(np.exp(log_q) * (table - log_q)))


def log_marginal(locs, x) -> float:
    """log p(x; locs), the value both objectives reach when q is the exact posterior."""
    return float(np.sum(logsumexp(_log_joint_table(locs, x), axis=-1)))


def em_locs(x, num_iters: int = 500) -> np.ndarray:
    """Maximum-likelihood locations by EM, started where SVI starts (``INIT_LOCS``)."""
    x = np.asarray(x, np.float64)
    locs = np.asarray(INIT_LOCS, np.float64)
    for _ in range(num_iters):
        table = _log_joint_table(locs, x)
        r = np.exp(table - logsumexp(table, axis=-1, keepdims=True))
        locs = (r * x[:, None]).sum(0) / r.sum(0)
    return locs


# -- training -------------------------------------------------------------------------
class GradientRecord(NamedTuple):
    grad: Any


def record_gradient() -> optax.GradientTransformation:
    """An optax stage that keeps the last raw gradient in its state (updates unchanged).

    Chained in front of the optimizer, it lets us read the gradient that ``SVI.update``
    computed, so the gradient variance is measured with the very same compiled step.
    """

    def init(params):
        return GradientRecord(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        return updates, GradientRecord(updates)

    return optax.GradientTransformation(init, update)


def _recorded_gradient(svi_state):
    _, (_, opt_state) = svi_state.optim_state  # (step, (params, optax state))
    return opt_state[0].grad


def _probe(update, state, x, keys) -> tuple[float, float, float]:
    """Objective estimate (mean, se) and gradient variance at ``state``'s parameters.

    Runs the compiled SVI step from ``state`` with each key in turn, keeping none of the
    updates: each call returns the loss (the negated objective estimate) and leaves the
    gradient in the optimizer state. Gradient variance = sum over coordinates.
    """
    values, grads = [], []
    for k in keys:
        probe, loss = update(state._replace(rng_key=k), x)
        values.append(-float(loss))
        leaves = jax.tree.leaves(_recorded_gradient(probe))
        grads.append(np.concatenate([np.ravel(g) for g in leaves]))
    values = np.asarray(values, np.float64)
    grad_var = float(np.var(np.asarray(grads, np.float64), axis=0, ddof=1).sum())
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))), grad_var


def train(objective, strategy, x, *, steps, learning_rate, num_grad_keys, key) -> dict:
    """Train with ``SVI``: objective, gradient variance (at init and at the end), speed."""
    guide_s = ppl.strategy(guide, {"z": strategy})
    optim = optax.chain(record_gradient(), optax.adam(learning_rate))
    svi = SVI(model, guide_s, optim, loss=objective)
    k_init, k_probe = jax.random.split(key)
    state = svi.init(k_init, x)
    update = jax.jit(svi.update)
    probe_keys = np.asarray(jax.random.split(k_probe, num_grad_keys))

    t0 = time.perf_counter()
    jax.block_until_ready(update(state, x))  # compiles
    compile_s = time.perf_counter() - t0
    _, _, grad_var_init = _probe(update, state, x, probe_keys)

    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state, x)
    jax.block_until_ready(state)
    ms_per_step = 1e3 * (time.perf_counter() - t0) / steps

    estimate, stderr, grad_var = _probe(update, state, x, probe_keys)
    params = svi.get_params(state)
    return {
        "objective": objective.name,
        "strategy": None,  # filled by the caller
        "estimate": estimate,
        "stderr": stderr,
        "exact_elbo": exact_elbo(params, x),
        "log_marginal": log_marginal(params["locs"], x),
        "grad_var": grad_var,
        "grad_var_init": grad_var_init,
        "ms_per_step": ms_per_step,
        "compile_s": compile_s,
        "num_steps": steps,
        "locs": np.asarray(params["locs"]).tolist(),
    }


def num_steps(quick: bool) -> int:
    """Number of SVI steps per run."""
    return 400 if quick else 1000


def run(quick: bool = False, seed: int = 0) -> list[dict]:
    """Train every (objective, strategy) pair; return one row (a dict) per run.

    Full mode: the ELBO under all four strategies and the IWAE under reinforce,
    reinforce(loo) (VIMCO) and enum (its mvd row would repeat enum's). ``quick`` (for
    the tests): the ELBO under reinforce, reinforce(loo) and enum, fewer steps and keys.
    Each row also carries ``optimum`` = max log p(x; locs) (EM) and ``exact`` (the exact
    value of the row's objective at its final parameters, ``None`` where not tractable).
    """
    num_grad_keys = 50 if quick else 100
    if quick:
        runs = [("elbo", name) for name in ("reinforce", "reinforce(loo)", "enum")]
    else:
        runs = [("elbo", name) for name in strategies()]
        runs += [("iwae", name) for name in ("reinforce", "reinforce(loo)", "enum")]
    x = make_data(seed, NUM_DATA)
    optimum = log_marginal(em_locs(x), x)
    rows = []
    for oname, sname in runs:
        row = train(
            OBJECTIVES[oname],
            strategies()[sname],
            x,
            steps=num_steps(quick),
            learning_rate=LEARNING_RATE,
            num_grad_keys=num_grad_keys,
            key=jax.random.PRNGKey(seed),
        )
        row["strategy"] = sname
        row["optimum"] = optimum
        row["exact"] = row["exact_elbo"] if oname == "elbo" else None
        row["num_grad_keys"] = num_grad_keys
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`run` as a plain-text table."""
    header = (
        f"{'objective':<9} {'strategy':<15} {'final estimate':>17} {'exact':>9} "
        f"{'log p(x)':>9} {'grad var':>10} {'(at init)':>10} {'ms/step':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        exact = "-" if r["exact"] is None else f"{r['exact']:.3f}"
        est = f"{r['estimate']:.3f} ± {r['stderr']:.3f}"
        lines.append(
            f"{r['objective']:<9} {r['strategy']:<15} {est:>17} {exact:>9} "
            f"{r['log_marginal']:>9.3f} {r['grad_var']:>10.3g} {r['grad_var_init']:>10.3g} "
            f"{r['ms_per_step']:>8.2f}"
        )
    return "\n".join(lines)


NOTES = """\
final estimate: mean ± standard error of the objective over {keys} keys at the final
  parameters; exact: the ELBO there, by enumeration (the IWAE's expectation couples
  K x N choices); log p(x): exact log marginal likelihood there (ELBO <= IWAE <= log p(x)).
optimum of both objectives: max_locs log p(x; locs) = {optimum:.3f} (EM, q = posterior).
grad var: sum over coordinates of the variance of the SVI gradient over the same keys,
  at the final parameters and at the shared initial parameters; ms/step: after compilation."""
MVD_NOTE = "mvd on a Categorical is the same local-expectation rule as enum (identical rows)."


def main(quick: bool = False) -> list[dict]:
    """Run the demo and print its table."""
    t0 = time.perf_counter()
    mode = " (quick)" if quick else ""
    print(
        f"ppl demo{mode}: {NUM_COMPONENTS}-component Gaussian mixture, {NUM_DATA} data, "
        f"per-datum Categorical guide,\n{NUM_PARTICLES} particles, hand-written objectives, "
        f"numpyro SVI + Adam({LEARNING_RATE}), {num_steps(quick)} steps\n"
    )
    rows = run(quick=quick)
    print(format_table(rows))
    print()
    print(NOTES.format(keys=rows[0]["num_grad_keys"], optimum=rows[0]["optimum"]))
    if any(r["strategy"] == "mvd" for r in rows):
        print(MVD_NOTE)
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f} s")
    return rows
