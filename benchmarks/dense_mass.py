"""``dense_mass``: ppl's NUTS / HMC vs NumPyro's NUTS on a correlated 5-d Gaussian.

The target of ``tests/mcmc/test_dense_mass.py``: correlation 0.99 between every pair of
coordinates, scales 0.1 … 10 (condition number ≈ 500 once the diagonal is whitened).
Each sampler runs through ``numpyro.infer.MCMC`` with 2 vectorized chains, 1000 warm-up
iterations and 1000 draws, once per seed after one uncounted run that compiles (NumPyro's
driver re-jits its loop on every run: JAX's compile-duration events are subtracted from
every run's wall time, as in ``benchmarks/mcmc.py``). Reported per sampler, median over
seeds: min ESS over the 5 coordinates (``numpyro.diagnostics.effective_sample_size``),
ESS per gradient evaluation (``num_steps`` summed over the draws, warm-up excluded), ESS
per second, and the whitened spectrum of the adapted inverse mass matrix (eigenvalues of
Σ^(-1/2) M⁻¹ Σ^(-1/2), all 1 for the exact covariance; for a diagonal M⁻¹ that of
diag(M⁻¹)).

    python -m benchmarks.dense_mass [--seeds N]

Prints the table; ``benchmarks/DENSE_MASS_RESULTS.md`` records a run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import HMC, MCMC, NUTS

import ppl
from benchmarks.harness import compile_seconds, start_compile_clock

D = 5
SCALES = np.array([0.1, 0.3, 1.0, 3.0, 10.0])
COV = SCALES[:, None] * (np.full((D, D), 0.99) + 0.01 * np.eye(D)) * SCALES[None, :]
TRIL = np.linalg.cholesky(COV)
MEAN = np.array([1.0, -2.0, 3.0, 0.0, 5.0])


def gaussian():
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(MEAN), scale_tril=jnp.asarray(TRIL)))


def samplers():
    return {
        "NumPyro NUTS dense": lambda: NUTS(gaussian, dense_mass=True),
        "ppl NUTS dense": lambda: ppl.mcmc.NUTS(gaussian, dense_mass=True),
        "NumPyro NUTS diag": lambda: NUTS(gaussian),
        "ppl NUTS diag": lambda: ppl.mcmc.NUTS(gaussian),
        "NumPyro HMC(8) dense": lambda: HMC(
            gaussian, num_steps=8, trajectory_length=None, dense_mass=True
        ),
        "ppl HMC(8) dense": lambda: ppl.mcmc.HMC(gaussian, num_steps=8, dense_mass=True),
    }


def inverse_mass(mcmc) -> np.ndarray:
    """The adapted M⁻¹ per chain, (chains, d, d): NumPyro's one-entry dict unwrapped, a
    diagonal made a matrix."""
    imm = mcmc.last_state.adapt_state.inverse_mass_matrix
    if isinstance(imm, dict):
        (imm,) = imm.values()
    imm = np.asarray(imm, np.float64)
    return imm if imm.ndim == 3 else np.stack([np.diag(v) for v in imm])


def whitened_spectrum(imm) -> np.ndarray:
    if not np.all(np.isfinite(imm)):
        return np.full(D, np.nan)
    w = np.linalg.inv(TRIL)
    return np.linalg.eigvalsh(w @ imm @ w.T)


def one_run(mcmc, key):
    start_compile_clock()
    t0 = time.perf_counter()
    mcmc.run(key, extra_fields=("num_steps", "diverging"))
    draws = np.asarray(jax.block_until_ready(mcmc.get_samples(group_by_chain=True))["x"])
    wall = time.perf_counter() - t0
    run_s = wall - compile_seconds()
    ess = float(np.min(effective_sample_size(np.asarray(draws, np.float64))))
    grads = int(np.sum(np.asarray(mcmc.get_extra_fields()["num_steps"])))
    spectra = [whitened_spectrum(m) for m in inverse_mass(mcmc)]
    diverging = mcmc.get_extra_fields()["diverging"]  # None: ppl's HMC does not report it
    divergences = -1 if diverging is None else int(np.sum(np.asarray(diverging)))
    return dict(
        ess=ess,
        grads=grads,
        run_s=run_s,
        spectra=spectra,
        imm=inverse_mass(mcmc),
        divergences=divergences,
        mean_error=float(np.max(np.abs(draws.mean((0, 1)) - MEAN) / SCALES)),
    )


def main(seeds: int = 5):
    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, devices {jax.devices()}")
    results = {name: [] for name in samplers()}
    mcmcs = {
        name: MCMC(
            make(),
            num_warmup=1000,
            num_samples=1000,
            num_chains=2,
            chain_method="vectorized",
            progress_bar=False,
        )
        for name, make in samplers().items()
    }
    for mcmc in mcmcs.values():  # compile (not counted)
        mcmc.run(jax.random.key(1000), extra_fields=("num_steps", "diverging"))
    for seed in range(seeds):  # interleaved across samplers
        for name, mcmc in mcmcs.items():
            r = one_run(mcmc, jax.random.key(seed))
            results[name].append(r)
            spectra = [np.round(v, 2).tolist() for v in r["spectra"]]
            print(
                f"seed {seed} {name}: min ESS {r['ess']:.0f}, grads {r['grads']},"
                f" run {r['run_s']:.2f} s, divergences {r['divergences']}, max |mean error|/sd"
                f" {r['mean_error']:.3f}, spectra {spectra}",
                flush=True,
            )
    print(
        "| sampler | min ESS | grads | ESS/grad (×1e3) | ESS/s | per-seed ESS/grad (×1e3)"
        " | whitened spectrum of M⁻¹ (seed 0, chain 0) |"
    )
    print("|---|---|---|---|---|---|---|")
    med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
    for name, rs in results.items():
        per_seed = " ".join(f"{1e3 * r['ess'] / r['grads']:.2f}" for r in rs)
        spectrum = " ".join(f"{v:.2f}" for v in rs[0]["spectra"][0])
        print(
            f"| {name} | {med(rs, lambda r: r['ess']):.0f} | {med(rs, lambda r: r['grads'])}"
            f" | {med(rs, lambda r: 1e3 * r['ess'] / r['grads']):.2f}"
            f" | {med(rs, lambda r: r['ess'] / r['run_s']):.0f} | {per_seed} | {spectrum} |"
        )
    np.set_printoptions(precision=4, suppress=True)
    print("exact covariance:\n", COV)
    for name in ("NumPyro NUTS dense", "ppl NUTS dense"):
        print(f"{name}, seed 0, chain 0 adapted M⁻¹:\n", results[name][0]["imm"][0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    main(parser.parse_args().seeds)
