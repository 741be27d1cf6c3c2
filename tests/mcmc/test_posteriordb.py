"""The posteriordb battery (slow; issue 17): every sampler of :data:`SAMPLERS`, at default
settings and the same run length for every posterior, matches each of the 14 posteriordb
reference posteriors (models/posteriordb): each reference mean within 4.5 combined
standard errors √(mcse_ref² + MCSE²) and each sd within 10% (or, where the draws cannot
resolve an sd to 10%, within 4.5 of its standard errors; see
``models.posteriordb.failures``). Runs in float64 (gp_pois_regr's 1e-10 jitter needs it).

A sampler is ``f(posterior, key) -> {site: draws with leading (chain, draw) axes}`` (MCSE
from ArviZ), or a :class:`Particles` (draws over (1, n) and their effective sample size,
optionally weights) for population samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from models import posteriordb
from ppl import mcmc

pytestmark = pytest.mark.slow

NUM_CHAINS, NUM_WARMUP, NUM_DRAWS = 4, 500, 500


class Particles(NamedTuple):
    """A population sampler's output: ``samples`` over leading (1, n) axes, their ESS and
    optional (unnormalized) weights over those axes."""

    samples: dict
    ess: float
    weights: object = None


def run_nuts(p: posteriordb.Posterior, key) -> dict:
    """ppl's NUTS at its defaults in ``numpyro.infer.MCMC``, vectorized chains."""
    m = MCMC(
        mcmc.NUTS(p.model),
        num_warmup=NUM_WARMUP,
        num_samples=NUM_DRAWS,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(key, *p.args, **p.kwargs)
    return m.get_samples(group_by_chain=True)


SMC_RUNS, SMC_PARTICLES = 8, 1000


def run_smc(p: posteriordb.Posterior, key) -> Particles:
    """ppl's SMC at its defaults, SMC_RUNS independent runs (vmapped) pooled. Resampled
    particles are correlated, so their ESS comes from the spread of the runs' means: per
    reference key, ESS = sd² / (var of the run means / SMC_RUNS); the smallest is used."""
    smc = mcmc.SMC(p.model, num_particles=SMC_PARTICLES)
    run = jax.jit(jax.vmap(lambda k: smc.run(k, *p.args, **p.kwargs)))
    res = run(jax.random.split(key, SMC_RUNS))
    w = np.exp(np.asarray(res.log_weights, np.float64))  # (runs, particles), normalized
    ess = np.inf
    for key in p.reference:
        x = posteriordb.draws(res.particles, key)
        means = np.sum(w * x, 1)
        var = np.sum(w * (x - means[:, None]) ** 2, 1).mean()
        ess = min(ess, var / (means.var(ddof=1) / SMC_RUNS))
    pooled = jax.tree.map(lambda a: np.asarray(a).reshape((1, -1) + a.shape[2:]), res.particles)
    return Particles(pooled, float(ess), w.reshape(1, -1))


SAMPLERS: dict[str, Callable] = {"nuts": run_nuts, "smc": run_smc}


def check(sampler: Callable, p: posteriordb.Posterior, seed: int = 0) -> tuple[list, list]:
    """The rows of ``sampler`` on posterior ``p`` (float64) and the failing ones."""
    with jax.enable_x64(True):
        out = sampler(p, jax.random.key(seed))
    if isinstance(out, Particles):
        rows = posteriordb.compare(out.samples, p.reference, ess=out.ess, weights=out.weights)
    else:
        rows = posteriordb.compare(out, p.reference)
    return rows, posteriordb.failures(rows)


@pytest.mark.parametrize("name", posteriordb.NAMES)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_matches_reference(sampler, name):
    rows, bad = check(SAMPLERS[sampler], posteriordb.posterior(name))
    assert not bad, f"{sampler} on {name}: " + "; ".join(map(str, bad))


def planted_eight_schools(y, sigma):
    """Eight schools with one planted error: mu ~ N(0, 2.5) instead of N(0, 5)."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([len(y)]))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", mu + tau * theta_trans)
    numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def test_battery_detects_a_planted_prior_error():
    """Power: the same run on eight schools with mu's prior sd halved fails the check."""
    p = posteriordb.posterior("eight_schools-eight_schools_noncentered")
    _, bad = check(run_nuts, p._replace(model=planted_eight_schools))
    assert "mu" in {row.key for row in bad}, bad
