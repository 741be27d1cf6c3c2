"""Cone model objective values (Becker et al. 2024, Table 4) with ppl's objectives.

Training as in the paper's artifact: plain SGD (lr 1e-3) from zero-initialized
parameters, 5000 steps; then each objective is estimated with 5000 fresh keys (mean and
standard error). Run: ``python -m benchmarks.cone [--steps N]``; writes
``benchmarks/CONE_RESULTS.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpyro
import optax
from numpyro.infer import SVI

import ppl
from models import cone

PAPER = {  # genjax.vi, Table 4
    "ELBO": -8.08,
    "IWELBO(5)": -7.79,
    "HVI": -9.75,
    "IWHVI(5)": -8.18,
    "DIWHVI(5, 5)": -7.33,
}


def objectives():
    keep = ["x", "y"]
    return {
        "ELBO": (ppl.objectives.elbo(64), cone.naive_guide),
        "IWELBO(5)": (ppl.objectives.iwae(5), cone.naive_guide),
        "HVI": (ppl.objectives.hvi(keep, cone.angle_reverse), cone.angle_guide),
        # genjax's sir(5) reverse = the generating angle + 4 fresh ones
        "IWHVI(5)": (ppl.objectives.iwhvi(keep, cone.angle_reverse, 4), cone.angle_guide),
        "DIWHVI(5, 5)": (ppl.objectives.diwhvi(keep, cone.angle_reverse, 5, 4), cone.angle_guide),
    }


def train_and_evaluate(objective, guide, steps, seed=314159, n_eval=5000):
    key = jax.random.PRNGKey(seed)
    svi = SVI(cone.model, guide, optax.sgd(1e-3), loss=objective)
    start = time.perf_counter()
    result = svi.run(key, steps, progress_bar=False)
    seconds = time.perf_counter() - start
    keys = jax.random.split(jax.random.fold_in(key, 1), n_eval)
    values = jax.jit(jax.vmap(lambda k: -objective.loss(k, result.params, cone.model, guide)))(keys)
    return float(values.mean()), float(values.std() / jnp.sqrt(n_eval)), seconds


def main(steps=5000):
    rows = []
    for name, (objective, guide) in objectives().items():
        mean, se, seconds = train_and_evaluate(objective, guide, steps)
        rows.append((name, mean, se, PAPER[name], seconds))
        print(f"{name:14s} {mean:8.3f} ± {se:.3f}   paper {PAPER[name]:6.2f}   ({seconds:.1f} s)")
    lines = [
        "# Cone model: objective values after training (Table 4 of Becker et al. 2024)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s); python {platform.python_version()}, jax "
        f"{jax.__version__}, numpyro {numpyro.__version__}, ppl {ppl.__version__}. "
        f"SGD lr 1e-3, {steps} steps, estimate over 5000 keys.",
        "",
        "| objective | ppl (mean ± SE) | genjax.vi (paper) | train time (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {m:.3f} ± {s:.3f} | {p:.2f} | {t:.1f} |" for n, m, s, p, t in rows]
    lines += [
        "",
        "IWELBO(5): ours trains the naive guide with one key per step (the paper averages 64)",
        "and lands on a wider guide whose bound is higher (better) than the paper's -7.79;",
        "NumPyro/Pyro report -7.77/-7.75.",
    ]
    out = pathlib.Path(__file__).with_name("CONE_RESULTS.md")
    out.write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5000)
    main(parser.parse_args().steps)
