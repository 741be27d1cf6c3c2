"""Compare SMC particles with a posteriordb reference using independent replicate runs.

Resampling duplicates particles and moves start from the duplicates, so the Monte Carlo
error of one run's mean is not sd/√N: it is estimated from the spread of the weighted means
across R independent runs (leading axis), SE = sd_runs/√R for the mean of the runs.
"""

import math

import numpy as np


def compare_replicates(particles, log_weights, reference):
    """[(param, z of the mean, sd ratio)] for ``particles[site]`` of shape (R, N, ...) and
    normalized ``log_weights`` (R, N) against ``{param: {mean, sd, mcse_mean}}`` (Stan's
    1-based indices); z combines the replicate SE with the reference's MCSE."""
    w = np.exp(np.asarray(log_weights, np.float64))
    rows = []
    for key, r in reference.items():
        site, _, index = key.partition("[")
        x = np.asarray(particles[site], np.float64)
        x = x[..., int(index[:-1]) - 1] if index else x
        mean = (w * x).sum(1)
        sd = np.sqrt((w * (x - mean[:, None]) ** 2).sum(1))
        se = math.hypot(mean.std(ddof=1) / math.sqrt(len(mean)), r["mcse_mean"])
        rows.append((key, float((mean.mean() - r["mean"]) / se), float(sd.mean() / r["sd"])))
    return rows
