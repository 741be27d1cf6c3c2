"""Observed data checked against its distribution (NaN, support) where it is concrete.

The check runs in Python on concrete values, at trace time: inside ``jax.jit`` it sees the
data closed over by the traced function (``SVI.run`` closes over its arguments) and
costs nothing in the compiled step; values that are tracers are skipped.
"""

from __future__ import annotations

import jax
import numpy as np
from numpyro.distributions import (
    BernoulliLogits,
    BernoulliProbs,
    MaskedDistribution,
    Unit,
    constraints,
)
from numpyro.distributions.constraints import _Dependent


def _concrete(x) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check_observed(trace, where: str, supports: str = "fixed") -> None:
    """Raise ``ValueError`` for the first observed site of the NumPyro ``trace`` whose
    concrete value is NaN or outside its distribution's support, naming ``where``, the
    site, the first bad index and the value there. Masked-out elements (``handlers.mask``,
    ``obs_mask``) are not checked; traced values and masks are skipped.

    ``supports="fixed"`` checks only supports without parameters (``real``,
    ``positive``, ``boolean``, ``nonnegative_integer``, ``unit_interval``, ``simplex``,
    ...): with concrete latent values a parameterized support (``Uniform(0, s)``) may
    depend on them, and an observation outside it is a zero likelihood, not bad data.
    ``supports="concrete"`` also checks parameterized supports whose parameters are
    concrete: for traces whose latent values are tracers (under ``jax.eval_shape`` or
    ``jit``), where a concrete parameter cannot depend on them.
    """
    if supports not in ("fixed", "concrete"):
        raise ValueError(
            f"check_observed: supports must be 'fixed' or 'concrete', got {supports!r}"
        )
    for name, site in trace.items():
        if site["type"] == "sample" and site["is_observed"]:
            _check_site(name, site, where, supports)


def _check_site(name, site, where, supports):
    fn, value = site["fn"], site["value"]
    if isinstance(fn, Unit) or not _concrete(value):
        return
    mask = _mask(fn)
    if mask is None:
        return
    fn = _unmasked(fn)
    with jax.ensure_compile_time_eval():
        value = np.asarray(value)
        if value.dtype == object or not (
            np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_
        ):
            return
        event = tuple(fn.event_shape)
        batch_ndim = value.ndim - len(event)
        if batch_ndim < 0 or value.shape[batch_ndim:] != event:
            return  # a value that does not fit the site: reported by the shape checks
        try:
            batch = np.broadcast_shapes(
                value.shape[:batch_ndim], tuple(fn.batch_shape), np.shape(mask)
            )
        except ValueError:
            return  # likewise (a guide value of another plate size, or data of another size)
        value = np.broadcast_to(value, batch + event)
        batch_ndim = len(batch)
        mask = np.broadcast_to(mask, batch)
        if np.issubdtype(value.dtype, np.inexact):
            nan = np.isnan(value)
            if nan.ndim > batch_ndim:
                nan = nan.reshape(batch + (-1,)).any(-1)
            _raise_first(nan & mask, value, name, where, fn, "is NaN", batch_ndim)
        support = fn.support
        if isinstance(support, _Dependent) or (supports == "fixed" and not _fixed(support)):
            return
        try:
            inside = support(value)
        except Exception:  # a support that cannot judge this value's shape or dtype
            return
        if not _concrete(inside):
            return
        outside = ~np.asarray(inside, bool)
        if outside.ndim > batch_ndim:
            outside = outside.reshape(outside.shape[:batch_ndim] + (-1,)).any(-1)
        outside = np.broadcast_to(outside, batch)
        soft = (outside & mask).any() and _soft_labels(fn, value, mask, batch_ndim)
        if soft and not _base(fn)._validate_args:
            return  # NumPyro, validation off: its cross-entropy, y log p + (1 - y) log(1 - p)
        what = f"is outside the support of {type(_base(fn)).__name__} ({_name(support)})"
        if soft:
            what += (
                " (soft labels in [0, 1]: NumPyro with validation on scores them -inf; with "
                "numpyro.enable_validation(False) NumPyro and ppl score them by the "
                "cross-entropy y log p + (1 - y) log(1 - p))"
            )
        _raise_first(outside & mask, value, name, where, fn, what, batch_ndim)


def _soft_labels(fn, value, mask, batch_ndim) -> bool:
    """A Bernoulli observed at values in [0, 1] (e.g. grey-level pixels of a VAE), which
    NumPyro scores by its cross-entropy formula where its validation is off."""
    if not isinstance(_base(fn), (BernoulliProbs, BernoulliLogits)):
        return False
    if not np.issubdtype(value.dtype, np.floating):
        return False
    inside = (value >= 0) & (value <= 1)
    if inside.ndim > batch_ndim:
        inside = inside.reshape(inside.shape[:batch_ndim] + (-1,)).all(-1)
    return bool(np.all(inside | ~mask))


def _raise_first(bad, value, name, where, fn, what, batch_ndim):
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    element = value[index]
    text = np.array2string(np.asarray(element), threshold=6, precision=6)
    count = int(bad.sum())
    raise ValueError(
        f"{where}: observed site '{name}' {what}: value {text} at index {index} "
        f"({count} of {bad.size} element{'s' if bad.size != 1 else ''}); "
        "fix the data or mask those elements (numpyro.handlers.mask, obs_mask)"
    )


def _mask(fn):
    """The concrete mask of a (possibly masked) distribution: True, a bool array, or
    None when it is traced or nested where it cannot be located."""
    mask = np.asarray(True)
    while isinstance(fn, MaskedDistribution):
        m = fn._mask
        if not _concrete(m):
            return None
        mask = mask & np.asarray(m, bool)
        fn = fn.base_dist
    inner = fn
    while hasattr(inner, "base_dist"):
        inner = inner.base_dist
        if isinstance(inner, MaskedDistribution):
            return None
    return mask


def _base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _unmasked(fn):
    while isinstance(fn, MaskedDistribution):
        fn = fn.base_dist
    return fn


_SINGLETONS = tuple(c for c in vars(constraints).values() if isinstance(c, constraints.Constraint))


def _fixed(constraint) -> bool:
    """Whether ``constraint`` is one of NumPyro's parameter-free constraints."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return any(constraint is c for c in _SINGLETONS)


def _name(constraint) -> str:
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return type(constraint).__name__.lstrip("_")
