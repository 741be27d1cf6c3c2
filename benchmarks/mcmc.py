"""Effective samples per second and per gradient: ppl.mcmc kernels vs NumPyro's HMC / NUTS.

Eight schools (non-centered, posteriordb data), 1 chain. Each sampler runs through
``numpyro.infer.MCMC`` (driver included); a first run compiles, then ``--rounds`` timed runs
repeat it with other keys, interleaved across samplers. NumPyro 0.22's driver re-jits its
collection loop on every ``run`` (``tests/mcmc/test_recompilation.py``), so a run's wall time
is mostly XLA compilation: JAX's own compile-duration events (tracing, lowering, backend
compilation) are subtracted to give the run time with compilation excluded. ESS = ArviZ
bulk ESS, minimum over all parameters; gradient evaluations = the sum of the
``num_steps`` extra field over the draws (warm-up excluded). "Pure" times ppl's pure HMC
kernel under ``jax.lax.scan`` at the adapted step size. ``--xla-small-loops`` adds the same
table from a child process run with XLA's CPU flag that compiles while loops into single
kernels. Writes ``benchmarks/MCMC_RESULTS.md``.

    python -m benchmarks.mcmc [--quick] [--rounds N] [--xla-small-loops]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import HMC, MCMC, NUTS
from numpyro.infer.util import initialize_model

import ppl
from benchmarks.harness import compile_seconds, start_compile_clock
from models import posteriordb

HERE = Path(__file__).parent
SMALL_LOOPS = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1000000000"


def eight_schools(y, sigma):
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([8]))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    numpyro.sample("y", dist.Normal(mu + tau * theta_trans, sigma), obs=y)


def load():
    data, _ = posteriordb.load("eight_schools-eight_schools_noncentered")
    return jnp.array(data["y"], jnp.float32), jnp.array(data["sigma"], jnp.float32)


def min_ess(samples: dict) -> float:
    ess = az.ess(az.convert_to_dataset({k: np.asarray(v)[None] for k, v in samples.items()}))
    return min(float(ess[k].min()) for k in ess.data_vars)


def samplers():
    return {
        "NumPyro NUTS": lambda: NUTS(eight_schools),
        "ppl NUTS": lambda: ppl.mcmc.NUTS(eight_schools),
        "NumPyro HMC(num_steps=10)": lambda: HMC(
            eight_schools, num_steps=10, trajectory_length=None
        ),
        "ppl HMC(num_steps=10)": lambda: ppl.mcmc.HMC(eight_schools, num_steps=10),
        "ppl MALA": lambda: ppl.mcmc.MALA(eight_schools),
    }


def timed_run(mcmc, key, data):
    """(wall s, compile s, min ESS, gradient evaluations) of one ``MCMC.run``."""
    start_compile_clock()
    t0 = time.perf_counter()
    mcmc.run(key, *data, extra_fields=("num_steps",))
    samples = jax.block_until_ready(mcmc.get_samples())
    wall = time.perf_counter() - t0
    compile_s = compile_seconds()
    grads = int(np.sum(np.asarray(mcmc.get_extra_fields()["num_steps"])))
    return wall, compile_s, min_ess(samples), grads


def bench_drivers(data, warmup, draws, rounds):
    """Per sampler: the medians over ``rounds`` interleaved timed runs."""
    made = {name: make() for name, make in samplers().items()}
    mcmcs, first = {}, {}
    for name, kernel in made.items():
        mcmcs[name] = MCMC(kernel, num_warmup=warmup, num_samples=draws, progress_bar=False)
        t0 = time.perf_counter()
        mcmcs[name].run(jax.random.PRNGKey(0), *data, extra_fields=("num_steps",))
        jax.block_until_ready(mcmcs[name].get_samples())
        first[name] = time.perf_counter() - t0
    runs = {name: [] for name in made}
    for r in range(rounds):
        for name, mcmc in mcmcs.items():
            runs[name].append(timed_run(mcmc, jax.random.PRNGKey(1 + r), data))
    rows = []
    for name, rs in runs.items():

        def med(f, rs=rs):
            return statistics.median(f(*x) for x in rs)

        rows.append(
            {
                "sampler": name,
                "first_call_s": first[name],
                "wall_s": med(lambda w, c, e, g: w),
                "compile_s": med(lambda w, c, e, g: c),
                "run_s": med(lambda w, c, e, g: w - c),
                "min_ess": med(lambda w, c, e, g: e),
                "grads": med(lambda w, c, e, g: g),
                "ess_per_s": med(lambda w, c, e, g: e / (w - c)),
                "ess_per_grad": med(lambda w, c, e, g: e / g),
                "us_per_iter": med(lambda w, c, e, g: (w - c) / (warmup + draws) * 1e6),
            }
        )
    step = float(mcmcs["ppl HMC(num_steps=10)"].last_state.adapt.step_size)
    return rows, step


def bench_pure_hmc(step_size, data, draws):
    """ppl's pure HMC kernel under lax.scan (no driver, no adaptation), same step size."""
    _, potential_fn, _, _ = initialize_model(
        jax.random.PRNGKey(0), eight_schools, model_args=data, dynamic_args=False
    )
    kernel = ppl.mcmc.hmc(lambda z: -potential_fn(z), step_size, 10)
    x0 = {"mu": jnp.zeros(()), "tau": jnp.zeros(()), "theta_trans": jnp.zeros(8)}

    @jax.jit
    def chain(key):
        def step(s, k):
            s, _ = kernel.step(k, s)
            return s, s.position

        return jax.lax.scan(step, kernel.init(x0), jax.random.split(key, draws))[1]

    jax.block_until_ready(chain(jax.random.PRNGKey(0)))
    t0 = time.perf_counter()
    positions = jax.block_until_ready(chain(jax.random.PRNGKey(1)))
    run = time.perf_counter() - t0
    burn = draws // 5
    ess = min_ess({k: v[burn:] for k, v in positions.items()})
    grads = 10 * (draws - burn)
    return {
        "sampler": "ppl hmc (pure, lax.scan)",
        "run_s": run,
        "min_ess": ess,
        "grads": grads,
        "ess_per_s": ess / run,
        "ess_per_grad": ess / grads,
        "us_per_iter": run / draws * 1e6,
    }


def measure(quick: bool, rounds: int) -> dict:
    warmup, draws = (200, 500) if quick else (1000, 4000)
    data = load()
    load_before = os.getloadavg()
    rows, step = bench_drivers(data, warmup, draws, rounds)
    rows.append(bench_pure_hmc(step, data, draws + draws // 4))
    return {
        "rows": rows,
        "step": step,
        "warmup": warmup,
        "draws": draws,
        "rounds": rounds,
        "load": [load_before, os.getloadavg()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def table(res: dict) -> list[str]:
    ref = {r["sampler"]: r for r in res["rows"]}["NumPyro NUTS"]
    lines = [
        "| sampler | run s (compile excl.) | µs/iter | wall s (incl. compile) | first call s "
        "| min ESS | grad evals | ESS/s | ESS/grad ×1000 | ESS/s vs NumPyro NUTS "
        "| ESS/grad vs NumPyro NUTS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        wall = f"{r['wall_s']:.2f}" if "wall_s" in r else "n/a"
        first = f"{r['first_call_s']:.2f}" if "first_call_s" in r else "n/a"
        lines.append(
            f"| {r['sampler']} | {r['run_s']:.3f} | {r['us_per_iter']:.0f} | {wall} | {first} "
            f"| {r['min_ess']:.0f} | {r['grads']:.0f} | {r['ess_per_s']:.0f} "
            f"| {1000 * r['ess_per_grad']:.1f} | {r['ess_per_s'] / ref['ess_per_s']:.2f} "
            f"| {r['ess_per_grad'] / ref['ess_per_grad']:.2f} |"
        )
    (b1, b5, b15), (a1, a5, a15) = res["load"]
    lines += [
        "",
        f"Load average (1/5/15 min) {b1:.2f}/{b5:.2f}/{b15:.2f} before, "
        f"{a1:.2f}/{a5:.2f}/{a15:.2f} after; XLA_FLAGS=`{res['xla_flags'] or '(unset)'}`.",
    ]
    return lines


def main(quick: bool = False, rounds: int = 3, small_loops: bool = False):
    res = measure(quick, rounds)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# MCMC: effective samples per second and per gradient evaluation",
        "",
        f"Generated by `python -m benchmarks.mcmc` on {stamp}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax "
        f"{jax.__version__}, numpyro {numpyro.__version__}; eight schools (non-centered), "
        f"1 chain, {res['warmup']} warm-up + {res['draws']} draws; medians over "
        f"{res['rounds']} timed runs per sampler (other keys than the compiling first call), "
        "interleaved across samplers. ESS = ArviZ bulk ESS, minimum over parameters; grad "
        "evals = sum of the `num_steps` extra field over the draws (warm-up excluded).",
        "",
        "NumPyro 0.22's `MCMC.run` re-jits its collection loop on every run, for every "
        "kernel, so most of a run's wall time is XLA compilation. *Run s* subtracts the "
        "compile time JAX reports for the run (its `/jax/core/compile/*` duration events: "
        "tracing, lowering to MLIR, backend compilation): it is the run time with "
        "compilation excluded (warm-up + draws + the driver's work), and ESS/s and µs/iter "
        "use it.",
        "",
        *table(res),
    ]
    if small_loops:
        env = {**os.environ, "XLA_FLAGS": SMALL_LOOPS}
        cmd = [sys.executable, "-m", "benchmarks.mcmc", "--child", "--rounds", str(rounds)]
        out = subprocess.run(
            cmd + (["--quick"] if quick else []), env=env, capture_output=True, text=True
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        child = json.loads(out.stdout.strip().splitlines()[-1])
        lines += [
            "",
            "## With XLA's small-while-loop compilation",
            "",
            "XLA's CPU runtime runs the body of a `while` loop op by op (one thunk each), "
            "except loops whose bytes accessed stay under a 1 kB threshold, which it "
            f"compiles into one kernel; `XLA_FLAGS={SMALL_LOOPS}` raises the threshold so "
            "the NUTS trajectory loops compile whole. The flag is process-wide (set before "
            "JAX starts), so it speeds NumPyro's kernels as much as ppl's:",
            "",
            *table(child),
        ]
    lines += [
        "",
        f"The pure-kernel row reuses ppl HMC's adapted step size ({res['step']:.3f}) with no "
        "driver and no adaptation (first fifth of the chain dropped, its gradients not "
        "counted); it is not like for like. One chain: the ESS of a fixed-length HMC depends "
        "strongly on the adapted step size (a near-periodic trajectory mixes badly; ppl's HMC "
        "jitters ε by ±20%, NumPyro's does not), so treat ratios between samplers as "
        "indicative.",
        "",
    ]
    md = "\n".join(lines)
    print(md)
    if not quick:
        (HERE / "MCMC_RESULTS.md").write_text(md)
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--xla-small-loops", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.quick, args.rounds)))
    else:
        main(args.quick, args.rounds, args.xla_small_loops)
