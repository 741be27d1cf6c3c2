"""Draws against a posteriordb reference ``{param: {mean, sd, n, mcse_mean}}``.

The mean check is a z-score, z = (mean − mean_ref) / √(mcse_ref² + MCSE²), with MCSE from
ArviZ for chains (autocorrelation accounted for) or sd/√ESS for particles; the sd check
is the ratio sd/sd_ref (and a z-score of it, the reference sd's own error being
sd·√((κ − 1)/(4n)), κ the kurtosis of the draws).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import arviz as az
import numpy as np


class Row(NamedTuple):
    """One reference key: our mean and sd, the z-score of the mean, sd/sd_ref, z of the sd."""

    key: str
    mean: float
    sd: float
    z: float
    sd_ratio: float
    z_sd: float

    def __str__(self):
        return f"{self.key}: z={self.z:+.2f} sd ratio={self.sd_ratio:.3f} (z_sd={self.z_sd:+.2f})"


def draws(samples: dict, key: str) -> np.ndarray:
    """The draws of reference key ``key`` (Stan's 1-based ``site[i]`` or ``site[i,j]``;
    no brackets: the whole site), keeping the leading (chain, draw) axes."""
    site, _, index = key.partition("[")
    x = np.asarray(samples[site], np.float64)
    if not index:
        return x
    idx = tuple(int(i) - 1 for i in index.rstrip("]").split(","))
    return x[(..., *idx)]


def compare(samples: dict, reference: dict, ess=None, weights=None) -> list[Row]:
    """A :class:`Row` per reference key. ``samples[site]`` has leading (chain, draw) axes;
    for particles give ``ess`` (their effective sample size) and, if weighted,
    ``weights`` over those axes (normalized here; ESS defaults to Kish's 1/Σw²)."""
    w = None
    if weights is not None:
        w = np.asarray(weights, np.float64)
        w = w / w.sum()
        ess = 1.0 / np.sum(w**2) if ess is None else ess
    rows = []
    for key, r in reference.items():
        x = draws(samples, key)
        if w is None:
            mean, sd = x.mean(), x.std(ddof=1)
        else:
            mean = np.sum(w * x)
            sd = math.sqrt(np.sum(w * (x - mean) ** 2))
        kurt = np.mean((x - x.mean()) ** 4) / x.var() ** 2 if w is None else _wkurt(x, w)
        if ess is None:
            mcse, mcse_sd = float(az.mcse(x)), float(az.mcse(x, method="sd"))
        else:
            mcse, mcse_sd = sd / math.sqrt(ess), sd * math.sqrt((kurt - 1) / (4 * ess))
        ref_sd_se = r["sd"] * math.sqrt((kurt - 1) / (4 * r["n"]))
        z = (mean - r["mean"]) / math.hypot(mcse, r["mcse_mean"])
        z_sd = (sd - r["sd"]) / math.hypot(mcse_sd, ref_sd_se)
        rows.append(Row(key, float(mean), float(sd), float(z), float(sd / r["sd"]), float(z_sd)))
    return rows


def _wkurt(x, w):
    mean = np.sum(w * x)
    return np.sum(w * (x - mean) ** 4) / np.sum(w * (x - mean) ** 2) ** 2


def failures(rows: list[Row], z_max: float = 4.5, sd_tol: float = 0.10) -> list[Row]:
    """The rows whose mean is off by more than ``z_max`` combined SEs, or whose sd is off by
    more than both ``sd_tol`` relative and ``z_max`` SEs of the sd: the issue-17 criterion
    (means within 4.5 SEs, sds within 10%) where the draws resolve an sd to 10%, the
    sd's own MCSE where they cannot (a heavy tail: eight schools' tau)."""
    return [
        r
        for r in rows
        if abs(r.z) > z_max or (abs(r.sd_ratio - 1) > sd_tol and abs(r.z_sd) > z_max)
    ]
