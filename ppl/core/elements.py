"""Independent plates: the plates that enclose every sample site of model and guide.

Inside them the program is N independent problems (p and q both factorize over the
elements), so an importance-weighted bound is taken per element and summed, as NumPyro's
``RenyiELBO`` does: ``sum_i log (1/K) sum_k w_ik`` is a tighter bound on
``log p(x) = sum_i log p(x_i)`` than the joint ``log (1/K) sum_k prod_i w_ik``. A
subsampled independent plate is then unbiased for that sum: the per-element log weights are
taken without the plate's subsample scale, which multiplies the sum of the per-element
bounds. Subsampling in any other plate is refused by name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from .constructs import site_log_prob_array, site_log_prob_fixed


class Plates(NamedTuple):
    """The independent plates of a run: ``names`` (outermost first), their (subsample)
    ``shape``, and ``scale`` = prod size / subsample_size (1 without subsampling)."""

    names: tuple = ()
    shape: tuple = ()
    scale: float = 1.0

    def total(self, per_element) -> Any:
        """The objective from its per-element values: scale * sum."""
        total = jnp.sum(per_element)
        return total if self.scale == 1.0 else self.scale * total


NO_PLATES = Plates()


def independent_plates(*traces, who: str, joint: bool = False) -> Plates:
    """The plates common to every sample site of ``traces`` (model and guide runs; None
    entries skipped), as NumPyro's ``RenyiELBO`` finds them from the model's sites (here the
    guide's count too: a guide-only site outside the plate, e.g. an AutoGuide's joint
    latent, couples the elements). ``joint=True``: no plate is taken as independent.

    A subsampled plate that is not independent is a ``ValueError`` naming it and a sample
    site outside it: there a minibatch's scaled-up log weight inside a log-mean-exp is a
    biased estimate of the bound.
    """
    traces = [tr for tr in traces if tr is not None]
    stacks = [
        (name, {f.name: f for f in site.get("cond_indep_stack") or ()})
        for tr in traces
        for name, site in tr.items()
        if site["type"] == "sample"
    ]
    common = set() if joint or not stacks else set.intersection(*(set(s) for _, s in stacks))
    sizes = {}
    for tr in traces:
        for name, site in tr.items():
            if site["type"] == "plate":
                sizes.setdefault(name, (site["args"][0], site["args"][1]))
    for plate, (size, subsample_size) in sizes.items():
        if subsample_size is None or subsample_size >= size or plate in common:
            continue
        outside = next((name for name, s in stacks if plate not in s), None)
        if joint:
            where = "; this objective takes the log weight of the whole program"
            fix = ""
        else:
            where = " and does not enclose every sample site of model and guide"
            where += f" (site '{outside}' is outside it)" if outside is not None else ""
            fix = (
                "subsample only plates enclosing every sample site (a data plate: the "
                "bound is then per element of it, as NumPyro's RenyiELBO), "
            )
        raise ValueError(
            f"{who}: plate '{plate}' is subsampled ({subsample_size} of {size}){where}. This "
            "objective is nonlinear in the log weight: a minibatch's scaled-up log weight "
            "gives a biased estimate of it (not a bound on log p(x)); "
            f"{fix}use the full plate (no subsample_size), or an ELBO, ppl.objectives.elbo()"
        )
    if not common:
        return NO_PLATES
    first = stacks[0][1]
    names = tuple(sorted(common, key=lambda n: first[n].dim))
    scale = 1.0
    for n in names:
        size, subsample_size = sizes.get(n, (first[n].size, None))
        if subsample_size is not None and subsample_size < size:
            scale = scale * size / subsample_size
    return Plates(names, tuple(first[n].size for n in names), scale)


def trace_terms(trace, stl: bool = False) -> list:
    """``(name, lp, frames)`` of each sample site of a guide run: its log q per element
    (as :func:`~ppl.simulate` sums it); ``stl=True``: with the guide's parameters held fixed
    (``Simulation.log_prob_stl``)."""
    terms = []
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        lp = site_log_prob_array(site)
        if stl and not site["is_observed"]:
            lp = site_log_prob_fixed(site, "params")
            if lp is None:
                raise ValueError(
                    f"site '{name}': its log q with the guide's parameters held fixed is not "
                    "available (a transform without an inverse)"
                )
        terms.append((name, lp, site.get("cond_indep_stack")))
    return terms


def per_element(terms, plates: Plates, who: str) -> Any:
    """Sum of ``terms`` (``(name, lp, frames)``) per element of ``plates``: each ``lp`` is
    summed over its other dims; the plates' subsample scale is taken out (it multiplies
    the sum of the per-element bounds, :meth:`Plates.total`). Shape ``plates.shape``."""
    total = jnp.zeros(plates.shape)
    for name, lp, frames in terms:
        total = total + _reduce(name, jnp.asarray(lp), frames, plates, who)
    return total if plates.scale == 1.0 else total / plates.scale


def _reduce(name, lp, frames, plates, who):
    if not plates.names:
        return jnp.sum(lp)
    dims = {f.name: f.dim for f in frames or ()}
    if any(n not in dims for n in plates.names):
        missing = next(n for n in plates.names if n not in dims)
        raise ValueError(
            f"{who}: term '{name}' is not in plate '{missing}', which encloses every sample "
            "site; cannot take it per element"
        )
    depth = max(-dims[n] for n in plates.names)
    if lp.ndim < depth:
        lp = jnp.reshape(lp, (1,) * (depth - lp.ndim) + lp.shape)
    keep = [lp.ndim + dims[n] for n in plates.names]
    for n, size, axis in zip(plates.names, plates.shape, keep, strict=True):
        if lp.shape[axis] != size:
            raise ValueError(
                f"{who}: the log density of '{name}' has shape {lp.shape}, of size "
                f"{lp.shape[axis]} at the dim of plate '{n}' (size {size}, dim {dims[n]}); "
                "it must be per element of the plates enclosing every sample site"
            )
    lp = jnp.sum(lp, axis=tuple(a for a in range(lp.ndim) if a not in keep))
    order = sorted(keep)
    return jnp.transpose(lp, [order.index(a) for a in keep])
