"""Issue 17's all-posteriors MCMC benchmark: min ESS per gradient evaluation and per second.

For each of the 14 posteriordb posteriors (models/posteriordb), float64: ppl NUTS, NumPyro
NUTS, BlackJAX NUTS (hand-written ``lax.scan`` driver on NumPyro's potential), ppl HMC
(10 leapfrog steps), ppl ChEES and ppl SMC. Every (posterior, sampler) runs in its own
subprocess under a time budget (an unfinished sampler is reported "over budget", keeping
the seeds it finished); diamonds' ChEES and SMC rows (> 7 and > 17 min on the shared
2-core CPU) are skipped unless ``--heavy``. In a subprocess the first seed's call
compiles (first-call time); every later seed is timed compile-free; all seeds count for
ESS, ESS per gradient and accuracy (``posteriordb.failures`` against the reference).
Writes ``benchmarks/mcmc_posteriordb.json`` and ``benchmarks/MCMC_POSTERIORDB.md``.

    python -m benchmarks.mcmc_posteriordb [--posteriors a,b] [--samplers s,t] [--seeds 3]
        [--budget 600] [--heavy] [--quick] [--merge] [--report]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).parent

# sampler key -> row label
SAMPLERS = {
    "nuts": "ppl NUTS",
    "numpyro_nuts": "NumPyro NUTS",
    "blackjax_nuts": "BlackJAX NUTS",
    "hmc": "ppl HMC (10 steps)",
    "chees": "ppl ChEES",
    "smc": "ppl SMC",
}
HEAVY = {("chees", "diamonds-diamonds"), ("smc", "diamonds-diamonds")}
# posteriordb.NAMES with the two slowest (measured in the battery) last
SLOW = ("mcycle_gp-accel_gp", "diamonds-diamonds")


def order():
    from models import posteriordb

    return tuple(n for n in posteriordb.NAMES if n not in SLOW) + SLOW


class Config(NamedTuple):
    chains: int = 4  # vectorized, NUTS/HMC rows
    warmup: int = 500
    draws: int = 500
    chees_chains: int = 64
    chees_warmup: int = 500
    chees_draws: int = 200
    smc_runs: int = 8  # vmapped independent runs, pooled
    smc_particles: int = 1000


QUICK = Config(4, 200, 200, 64, 200, 100, 8, 300)


# --------------------------------------------------------------------------- worker


class Draws(NamedTuple):
    """One run's output: draws by (chain, draw) (or particles over (1, n)), gradient and
    log-density evaluations (None: not counted), and for particles their ESS and weights."""

    samples: dict
    grads: float | None
    density_evals: float | None = None
    particle_ess: dict | None = None
    weights: object = None
    init_s: float = 0.0


def _kernel_driver(kernel, p, chains, warmup, draws, steps_fn=None):
    """A ``run(key) -> Draws`` of a NumPyro ``MCMCKernel`` (vectorized chains, as
    ``numpyro.infer.MCMC(chain_method="vectorized")`` drives it: ``kernel.init`` on a batch
    of keys, then ``kernel.sample`` on the batched state) under one jitted ``lax.scan``
    over warm-up + draws, compiled once for all seeds (``MCMC.run`` recompiles its loop on
    every call). Gradients: the state's ``num_steps`` summed over warm-up + sampling and
    chains where the state has one (a scalar counts for every chain), else
    ``steps_fn(state before the step)`` (leapfrog steps of all chains) if given, else None."""
    import jax
    import jax.numpy as jnp

    args, kwargs = p.args, p.kwargs

    @jax.jit
    def loop(state):
        post = jax.vmap(kernel.postprocess_fn(args, kwargs))

        def body(s, _):
            before = s
            s = kernel.sample(s, args, kwargs)
            n = getattr(s, "num_steps", None)
            if n is not None:
                n = jnp.sum(jnp.broadcast_to(n, (chains,)))
            else:
                n = jnp.zeros(()) if steps_fn is None else steps_fn(before)
            return s, (s.z, n)

        _, (zs, n) = jax.lax.scan(body, state, None, length=warmup + draws)
        zs = jax.tree.map(lambda a: a[warmup:], zs)
        samples = jax.vmap(post)(zs)  # (draw, chain, ...)
        return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), samples), n.sum()

    has_steps = []

    def run(key):
        t0 = time.perf_counter()
        state = jax.block_until_ready(
            kernel.init(jax.random.split(key, chains), warmup, None, args, kwargs)
        )
        t_init = time.perf_counter() - t0
        if not has_steps:
            has_steps.append(getattr(state, "num_steps", None) is not None or steps_fn is not None)
        samples, n = jax.block_until_ready(loop(state))
        return Draws(samples, float(n) if has_steps[0] else None, init_s=t_init)

    return run


def _blackjax_nuts(p, chains, warmup, draws):
    """BlackJAX's window adaptation + NUTS, vmapped over chains under one jit, on the
    unconstrained potential of ``numpyro.infer.util.initialize_model`` (init_to_uniform,
    as NumPyro's and ppl's NUTS)."""
    import blackjax
    import jax
    from numpyro.infer.util import initialize_model

    def init(key):
        keys = jax.random.split(key, chains)
        info, potential, post, _ = initialize_model(
            keys, p.model, model_args=p.args, model_kwargs=p.kwargs, dynamic_args=False
        )
        return info.z, potential, post

    _, potential, post = init(jax.random.PRNGKey(0))

    def logdensity(z):
        return -potential(z)

    @jax.jit
    def sample(keys, z0):
        def one(key, z):
            k_warm, k_draw = jax.random.split(key)
            adapt = blackjax.window_adaptation(blackjax.nuts, logdensity)
            (state, params), winfo = adapt.run(k_warm, z, num_steps=warmup)
            kernel = blackjax.nuts(logdensity, **params)

            def step(s, k):
                s, info = kernel.step(k, s)
                return s, (s.position, info.num_integration_steps)

            _, (zs, n) = jax.lax.scan(step, state, jax.random.split(k_draw, draws))
            return jax.vmap(post)(zs), winfo.info.num_integration_steps.sum() + n.sum()

        return jax.vmap(one)(keys, z0)

    def run(key):
        k_init, k_run = jax.random.split(key)
        t0 = time.perf_counter()
        z0 = jax.block_until_ready(init(k_init)[0])
        t_init = time.perf_counter() - t0
        samples, n = jax.block_until_ready(sample(jax.random.split(k_run, chains), z0))
        return Draws(samples, float(n.sum()), init_s=t_init)

    return run


def _smc(p, runs, particles, reference):
    """ppl SMC at its defaults, ``runs`` independent runs vmapped under one jit, pooled.
    ESS per reference key from the spread of the runs' means (as the battery); counts
    log-density evaluations of the tempered target (the default RWM moves take no
    gradients): per particle and stage, 1 for the reweighting, 1 for the move's start
    state and 1 per move step."""
    import jax
    import numpy as np

    from models import posteriordb
    from ppl import mcmc

    smc = mcmc.SMC(p.model, num_particles=particles)
    fn = jax.jit(jax.vmap(lambda k: smc.run(k, *p.args, **p.kwargs)))

    def run(key):
        res = jax.block_until_ready(fn(jax.random.split(key, runs)))
        w = np.exp(np.asarray(res.log_weights, np.float64))
        ess = {}
        for k in reference:
            x = posteriordb.draws(res.particles, k)
            means = np.sum(w * x, 1)
            var = np.sum(w * (x - means[:, None]) ** 2, 1).mean()
            ess[k] = float(var / (means.var(ddof=1) / runs))
        stages = np.asarray(res.num_stages)
        steps = np.asarray(res.stages.num_mcmc_steps)
        live = np.arange(steps.shape[1])[None, :] < stages[:, None]
        evals = particles * float(np.sum(np.where(live, steps + 2, 0)))
        pooled = jax.tree.map(lambda a: np.asarray(a).reshape((1, -1) + a.shape[2:]), res.particles)
        return Draws(pooled, 0.0, evals, ess, w.reshape(1, -1))

    return run


def make_runner(sampler, p, cfg: Config):
    """``run(key) -> Draws`` for ``sampler`` (a :data:`SAMPLERS` key) on posterior ``p``."""
    import numpyro.infer

    from ppl import mcmc
    from ppl.mcmc.chees import _num_steps as _chees_num_steps  # the formula its step uses

    c = cfg
    if sampler == "nuts":
        return _kernel_driver(mcmc.NUTS(p.model), p, c.chains, c.warmup, c.draws)
    if sampler == "numpyro_nuts":
        return _kernel_driver(numpyro.infer.NUTS(p.model), p, c.chains, c.warmup, c.draws)
    if sampler == "blackjax_nuts":
        return _blackjax_nuts(p, c.chains, c.warmup, c.draws)
    if sampler == "hmc":
        inner = _kernel_driver(mcmc.HMC(p.model, num_steps=10), p, c.chains, c.warmup, c.draws)

        def hmc(key):  # num_steps is 10 per iteration and chain
            d = inner(key)
            return (
                d
                if d.grads is not None
                else d._replace(grads=10.0 * c.chains * (c.warmup + c.draws))
            )

        return hmc
    if sampler == "chees":

        def chees_steps(s):  # the step's n = ⌈halton(t)·T/ε⌉, shared by all chains
            eps, length = s.adapt.parameters.step_size, s.adapt.parameters.trajectory_length
            return c.chees_chains * _chees_num_steps(mcmc.halton(s.i), eps, length)

        kernel = mcmc.ChEES(p.model)
        return _kernel_driver(kernel, p, c.chees_chains, c.chees_warmup, c.chees_draws, chees_steps)
    if sampler == "smc":
        return _smc(p, c.smc_runs, c.smc_particles, p.reference)
    raise ValueError(f"unknown sampler {sampler!r}; one of {sorted(SAMPLERS)}")


def measure(d: Draws, reference) -> dict:
    """ESS (ArviZ bulk, per reference key, chains pooled; particles: from the run spread),
    and the accuracy check against the reference."""
    import arviz as az
    import numpy as np

    from models import posteriordb

    if d.particle_ess is None:
        ess = {k: float(az.ess(np.asarray(posteriordb.draws(d.samples, k)))) for k in reference}
        rows = posteriordb.compare(d.samples, reference)
    else:
        ess = d.particle_ess
        rows = posteriordb.compare(d.samples, reference, ess=min(ess.values()), weights=d.weights)
    bad = posteriordb.failures(rows)
    key = min(ess, key=ess.get)
    rhat = [r.r_hat for r in rows if not math.isnan(r.r_hat)]
    return {
        "min_ess": ess[key],
        "min_ess_key": key,
        "max_abs_z": max(abs(r.z) for r in rows),
        "worst_sd_ratio": max((r.sd_ratio for r in rows), key=lambda s: abs(s - 1)),
        "max_r_hat": max(rhat) if rhat else None,
        "accurate": not bad,
        "failing": [str(r) for r in bad[:5]] + ([f"... {len(bad)} in all"] if len(bad) > 5 else []),
    }


def worker(name, sampler, seeds, cfg: Config, out: Path):
    """Run ``sampler`` on posterior ``name`` for ``seeds`` seeds; a JSON line per seed."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from models import posteriordb

    p = posteriordb.posterior(name)
    run = make_runner(sampler, p, cfg)
    for seed in range(seeds):
        t0 = time.perf_counter()
        d = run(jax.random.PRNGKey(seed))
        seconds = time.perf_counter() - t0 - d.init_s
        rec = {"seed": seed, "compiles": seed == 0, "seconds": seconds, "init_s": d.init_s}
        rec["grads"] = d.grads
        rec["density_evals"] = d.density_evals
        rec.update(measure(d, p.reference))
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"{name} {sampler} seed {seed}: {seconds:.1f} s, ESS {rec['min_ess']:.0f}", flush=True
        )


# --------------------------------------------------------------------------- driver


def _machine() -> dict:
    import arviz
    import blackjax
    import jax
    import numpyro

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "blackjax": blackjax.__version__,
        "arviz": arviz.__version__,
        "commit": commit,
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_one(name, sampler, seeds, budget, quick) -> dict:
    """``sampler`` on ``name`` in a fresh subprocess within ``budget`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs.jsonl"
        cmd = [sys.executable, "-m", "benchmarks.mcmc_posteriordb", "--one", name]
        cmd += ["--sampler", sampler, "--seeds", str(seeds), "--out", str(out)]
        cmd += ["--quick"] if quick else []
        t0 = time.perf_counter()
        status, error = "ok", None
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=HERE.parent)
            if r.returncode:
                status, error = "error", r.stderr.strip().splitlines()[-1:] or ["?"]
                error = error[0][-300:]
        except subprocess.TimeoutExpired:
            status = "over budget"
        elapsed = time.perf_counter() - t0
        runs = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return {
        "status": status,
        "error": error,
        "budget_s": budget,
        "elapsed_s": elapsed,
        "runs": runs,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posteriors", default=None, help="comma-separated (default: all 14)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per (posterior, sampler)")
    ap.add_argument("--heavy", action="store_true", help="include diamonds' ChEES and SMC")
    ap.add_argument("--quick", action="store_true", help="short runs; writes *_quick files")
    ap.add_argument("--merge", action="store_true", help="update the existing JSON's posteriors")
    ap.add_argument("--report", action="store_true", help="only rewrite the Markdown from the JSON")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--sampler", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cfg = QUICK if a.quick else Config()
    if a.one:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        return worker(a.one, a.sampler, a.seeds, cfg, Path(a.out))

    suffix = "_quick" if a.quick else ""
    js, md = HERE / f"mcmc_posteriordb{suffix}.json", HERE / f"MCMC_POSTERIORDB{suffix}.md"
    from .mcmc_posteriordb_report import report

    if a.report:
        md.write_text(report(json.loads(js.read_text())))
        return None

    names = a.posteriors.split(",") if a.posteriors else list(order())
    samplers = a.samplers.split(",")
    data = json.loads(js.read_text()) if a.merge and js.exists() else {"posteriors": {}}
    t_start = time.time()
    data.update(
        machine=_machine(),
        config=cfg._asdict(),
        quick=a.quick,
        seeds=a.seeds,
        budget_s=a.budget,
        heavy=a.heavy,
        load_start=_load(),
        started=time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_start)),
    )
    for name in names:
        old = data["posteriors"].get(name, {}).get("samplers", {})
        post = {"load_start": _load(), "samplers": dict(old)}
        for s in samplers:
            if (s, name) in HEAVY and not a.heavy:
                post["samplers"][s] = {"status": "skipped", "runs": []}
                continue
            post["samplers"][s] = run_one(name, s, a.seeds, a.budget, a.quick)
            r = post["samplers"][s]
            print(
                f"{name} {s}: {r['status']} {r['elapsed_s']:.0f} s, {len(r['runs'])} runs",
                flush=True,
            )
        post["load_end"] = _load()
        data["posteriors"][name] = post
        data.update(
            load_end=_load(),
            finished=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            total_s=time.time() - t_start,
        )
        js.write_text(json.dumps(data, indent=1))
        md.write_text(report(data))
    print(md.read_text())
    return data


if __name__ == "__main__":
    main()
