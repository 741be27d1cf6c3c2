"""Two posteriordb reference posteriors, shipped with the repository (BSD-3, see README.md).

``load(name) -> (data, reference)``: the posteriordb data file (unchanged) and the
reference summary ``{param: {mean, sd, n, mcse_mean}}`` with Stan's 1-based indices.
``eight_schools_noncentered(y, sigma)`` is that posterior's Stan model in NumPyro.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpyro
import numpyro.distributions as dist

HERE = Path(__file__).parent
NAMES = ("eight_schools-eight_schools_noncentered", "low_dim_gauss_mix-low_dim_gauss_mix")


def load(name: str) -> tuple[dict, dict]:
    """The data and reference of posterior ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"posteriordb: unknown posterior {name!r}; shipped: {NAMES}")
    data = json.loads((HERE / f"{name}.data.json").read_text())
    reference = json.loads((HERE / f"{name}.reference.json").read_text())
    return data, reference


def eight_schools_noncentered(y, sigma):
    """posteriordb's ``eight_schools_noncentered``: theta = mu + tau * theta_trans."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([8]))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", mu + tau * theta_trans)
    numpyro.sample("y", dist.Normal(theta, sigma), obs=y)
