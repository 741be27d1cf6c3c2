"""Convergence diagnostics of an ``MCMC`` run that speak up: split R-hat and bulk / tail
ESS per site (ArviZ), divergences where the kernel reports them, and one warning with the
numbers and a concrete hint when the run has not mixed."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np


class MixingWarning(UserWarning):
    """An MCMC run whose draws have not mixed (R-hat too large or ESS too small)."""


class SiteDiagnostics(NamedTuple):
    """One site's worst element: split R-hat, bulk ESS, tail ESS."""

    rhat: float
    ess_bulk: float
    ess_tail: float


class Diagnostics(NamedTuple):
    """Per-site diagnostics of a run; ``ok`` means every site has R-hat ≤ ``rhat_max`` and
    bulk and tail ESS ≥ ``ess_min`` and no step diverged; ``message`` says why not."""

    sites: dict
    num_divergences: int | None
    ok: bool
    message: str


def diagnose(mcmc, rhat_max: float = 1.01, ess_min: float = 100.0, warn: bool = True):
    """Diagnose a finished ``numpyro.infer.MCMC`` (any kernel; R-hat needs ≥ 2 chains) and,
    with ``warn=True``, emit one :class:`MixingWarning` naming the worst sites, their
    numbers and what to try. Divergences are counted when the run collected the
    ``diverging`` extra field (NumPyro's HMC/NUTS by default).

    Example::

        mcmc.run(key, data)
        report = ppl.mcmc.diagnose(mcmc)  # warns if R-hat > 1.01 or ESS < 100
    """
    import arviz as az

    draws = mcmc.get_samples(group_by_chain=True)
    num_chains = next(iter(draws.values())).shape[0] if draws else 0
    sites = {}
    for name, value in draws.items():
        value = np.asarray(value, np.float64)
        if value.ndim < 2 or value.shape[1] < 4 or not np.issubdtype(value.dtype, np.floating):
            continue
        flat = value.reshape(value.shape[:2] + (-1,))
        rhat, bulk, tail = [], [], []
        for j in range(flat.shape[-1]):
            x = flat[..., j]
            if np.ptp(x) == 0:  # a constant element (e.g. a fixed deterministic)
                continue
            rhat.append(float(az.rhat(x)) if num_chains > 1 else float("nan"))
            bulk.append(float(az.ess(x, method="bulk")))
            tail.append(float(az.ess(x, method="tail")))
        if bulk:
            sites[name] = SiteDiagnostics(
                float(np.nanmax(rhat)) if num_chains > 1 else float("nan"), min(bulk), min(tail)
            )
    divergences = None
    extra = mcmc.get_extra_fields()
    if "diverging" in extra:
        divergences = int(np.sum(np.asarray(extra["diverging"])))
    problems = []
    bad_rhat = {n: d.rhat for n, d in sites.items() if d.rhat > rhat_max}
    bad_ess = {n: min(d.ess_bulk, d.ess_tail) for n, d in sites.items()}
    bad_ess = {n: e for n, e in bad_ess.items() if e < ess_min}
    if bad_rhat:
        worst = sorted(bad_rhat.items(), key=lambda kv: -kv[1])[:3]
        problems.append(
            f"split R-hat > {rhat_max} at " + ", ".join(f"'{n}' ({r:.3f})" for n, r in worst)
        )
    if bad_ess:
        worst = sorted(bad_ess.items(), key=lambda kv: kv[1])[:3]
        problems.append(f"ESS < {ess_min:g} at " + ", ".join(f"'{n}' ({e:.0f})" for n, e in worst))
    if divergences:
        problems.append(f"{divergences} divergent transitions")
    message = ""
    if problems:
        message = "MCMC has not mixed: " + "; ".join(problems) + ". Try: " + _hint(mcmc.sampler)
        if warn:
            warnings.warn(message, MixingWarning, stacklevel=2)
    return Diagnostics(sites, divergences, not problems, message)


def _hint(sampler) -> str:
    """What to try, for the kernel that ran: a path-length-adaptive sampler after a
    fixed-length or local one; otherwise longer warm-up and a better geometry."""
    from .adapters import HMC, MALA, NUTS, RandomWalk

    tips = ["more warm-up and draws"]
    if isinstance(sampler, (HMC, MALA, RandomWalk)):
        kind = "fixed-length HMC" if isinstance(sampler, HMC) else type(sampler).__name__
        tips.append(f"ppl.mcmc.NUTS (path length adapted per step) instead of {kind}")
    elif isinstance(sampler, NUTS):
        tips.append("a higher target_accept_prob (smaller steps) if transitions diverge")
    tips.append(
        "a non-centred parameterization (numpyro.infer.reparam.LocScaleReparam) for "
        "funnel-shaped hierarchies, or standardized predictors for correlated coefficients"
    )
    return "; ".join(tips) + "."
