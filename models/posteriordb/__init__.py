"""Fourteen posteriordb reference posteriors, shipped with the repository (BSD-3, see
README.md), as NumPyro models.

``load(name) -> (data, reference)``: the posteriordb data file (unchanged) and the
reference summary ``{param: {mean, sd, n, mcse_mean}}`` with Stan's 1-based indices.
``posterior(name)`` (or ``POSTERIORS[name]``) is a :class:`Posterior`: the model, its
arguments from the data (Stan's transformed data applied) and the reference;
``draws(samples, key)`` picks a reference key's draws, ``compare`` checks draws against it.

Example::

    p = posterior("arK-arK")
    mcmc = MCMC(NUTS(p.model), num_warmup=1000, num_samples=1000)
    mcmc.run(key, *p.args, **p.kwargs)
    rows = compare(mcmc.get_samples(group_by_chain=True), p.reference)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .gp import accel_gp, gp_pois_regr
from .reference import Row, compare, draws, failures
from .regression import (
    diamonds,
    eight_schools_noncentered,
    flat_linear_regression,
    kidscore_momiq,
    kilpisjarvi,
    low_dim_gauss_mix,
    sblrc_blr,
)
from .timeseries import ark, arma11, garch11, hmm_example

HERE = Path(__file__).parent


class Posterior(NamedTuple):
    """A posterior: run ``model(*args, **kwargs)``; ``reference`` as in :func:`load`.
    The data are float64 NumPy arrays (float32 in JAX unless x64 is enabled)."""

    name: str
    model: Callable
    args: tuple
    kwargs: dict
    reference: dict


def _a(x):
    return np.asarray(x, np.float64)


def _ark(d):
    y, K = _a(d["y"]), d["K"]
    lags = np.stack([y[K - k : len(y) - k] for k in range(1, K + 1)], axis=1)
    return {"lags": lags, "y": y[K:]}


def _design(*columns):
    return np.stack([np.ones_like(columns[0]), *columns], axis=1)


def _mesquite(d):
    logs = [np.log(_a(d[c])) for c in ("diam1", "diam2", "canopy_height", "total_height")]
    X = _design(*logs, np.log(_a(d["density"])), _a(d["group"]))
    return {"X": X, "y": np.log(_a(d["weight"]))}


def _diamonds(d):
    X = _a(d["X"])[:, 1:]
    return {"Xc": X - X.mean(axis=0), "Y": _a(d["Y"])}


def _accel(d):
    keys = ("Y", "Xgp_1", "slambda_1", "Xgp_sigma_1", "slambda_sigma_1")
    out = {k: _a(d[k]) for k in keys}
    out["slambda_1"], out["slambda_sigma_1"] = out["slambda_1"][:, 0], out["slambda_sigma_1"][:, 0]
    return out


def _pick(*keys):
    return lambda d: {k: _a(d[k]) for k in keys}


# name -> (model, data -> model kwargs)
_MODELS: dict[str, tuple[Callable, Callable]] = {
    "eight_schools-eight_schools_noncentered": (
        eight_schools_noncentered,
        _pick("y", "sigma"),
    ),
    "kidiq-kidscore_momiq": (kidscore_momiq, _pick("mom_iq", "kid_score")),
    "earnings-log10earn_height": (
        flat_linear_regression,
        lambda d: {"X": _design(_a(d["height"])), "y": np.log10(_a(d["earn"]))},
    ),
    "low_dim_gauss_mix-low_dim_gauss_mix": (low_dim_gauss_mix, _pick("y")),
    "arK-arK": (ark, _ark),
    "mesquite-logmesquite": (flat_linear_regression, _mesquite),
    "diamonds-diamonds": (diamonds, _diamonds),
    "kilpisjarvi_mod-kilpisjarvi": (
        kilpisjarvi,
        _pick("x", "y", "pmualpha", "psalpha", "pmubeta", "psbeta"),
    ),
    "sblrc-blr": (sblrc_blr, _pick("X", "y")),
    "gp_pois_regr-gp_pois_regr": (gp_pois_regr, _pick("x", "k")),
    "mcycle_gp-accel_gp": (accel_gp, _accel),
    "hmm_example-hmm_example": (hmm_example, _pick("y")),
    "garch-garch11": (garch11, _pick("y", "sigma1")),
    "arma-arma11": (arma11, _pick("y")),
}
NAMES = tuple(_MODELS)


def load(name: str) -> tuple[dict, dict]:
    """The data and reference of posterior ``name`` (one of :data:`NAMES`)."""
    if name not in _MODELS:
        raise ValueError(f"posteriordb: unknown posterior {name!r}; shipped: {NAMES}")
    data = json.loads((HERE / f"{name}.data.json").read_text())
    reference = json.loads((HERE / f"{name}.reference.json").read_text())
    return data, reference


@cache
def posterior(name: str) -> Posterior:
    """The :class:`Posterior` ``name``: model, its data arguments and the reference."""
    data, reference = load(name)
    model, prepare = _MODELS[name]
    return Posterior(name, model, (), prepare(data), reference)


def __getattr__(attr):  # POSTERIORS reads the data files on first use only
    if attr == "POSTERIORS":
        return {name: posterior(name) for name in NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "NAMES",
    "POSTERIORS",
    "Posterior",
    "Row",
    "accel_gp",
    "ark",
    "arma11",
    "compare",
    "diamonds",
    "draws",
    "eight_schools_noncentered",
    "failures",
    "flat_linear_regression",
    "garch11",
    "gp_pois_regr",
    "hmm_example",
    "kidscore_momiq",
    "kilpisjarvi",
    "load",
    "low_dim_gauss_mix",
    "posterior",
    "sblrc_blr",
]
