"""Validate the posteriordb transcriptions (models/posteriordb) with NumPyro's own NUTS.

For each posterior: ``numpyro.infer.NUTS`` at its defaults, float64, ``--chains`` chains
(sequential) of ``--warmup`` + ``--draws``; every reference key's mean within 4.5 combined
standard errors (ArviZ MCSE and the reference's) and sd within 10%. Prints a table (not a
test: a disagreement here means a transcription bug).

    python -m benchmarks.posteriordb_check [--only NAME ...] [--chains 4] [--draws 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpyro  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from models import posteriordb  # noqa: E402


def check(name, chains, warmup, draws, seed=0):
    p = posteriordb.posterior(name)
    mcmc = MCMC(
        NUTS(p.model),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(seed), *p.args, extra_fields=("diverging",), **p.kwargs)
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    seconds = time.perf_counter() - t0
    rows = posteriordb.compare(samples, p.reference)
    divergences = int(mcmc.get_extra_fields()["diverging"].sum())
    return rows, seconds, divergences


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(
        f"NumPyro {numpyro.__version__} NUTS, JAX {jax.__version__}, float64, {platform.node()}"
        f" ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), {a.chains} chains x"
        f" ({a.warmup} + {a.draws})"
    )
    print("| posterior | max abs z (mean) | worst sd ratio | divergences | seconds | failing |")
    print("|---|---|---|---|---|---|")
    for name in a.only or posteriordb.NAMES:
        rows, seconds, div = check(name, a.chains, a.warmup, a.draws, a.seed)
        worst_z = max(rows, key=lambda r: abs(r.z))
        worst_sd = max(rows, key=lambda r: abs(r.sd_ratio - 1))
        bad = ", ".join(str(r) for r in posteriordb.failures(rows)) or "-"
        print(
            f"| {name} | {abs(worst_z.z):.2f} ({worst_z.key}) | {worst_sd.sd_ratio:.3f}"
            f" ({worst_sd.key}) | {div} | {seconds:.0f} | {bad} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
