"""Distribution helpers shared by the strategies: unwrapping and gradient-safe log densities.

NumPyro's ``Bernoulli(logits=l).log_prob`` (and ``Binomial(logits=...)``) has a wrong
gradient at exactly ``l = 0`` under jax 0.10 (it differentiates ``max(l, 0)`` with a
one-sided rule). Zero-initialized logits are the most common start, so every score
term, enumeration weight and density term in ppl goes through :func:`log_prob`, which
computes those families as ``y l - n softplus(l)`` with the derivative y - n sigmoid(l)
(a custom jvp), and exactly at l = +-inf (log probability 0 or -inf, never NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions.util import sum_rightmost

_WRAPPERS = (dist.ExpandedDistribution, dist.Independent, dist.MaskedDistribution)


def base_distribution(fn: dist.Distribution) -> dist.Distribution:
    """Strip ``expand`` / ``to_event`` / ``mask`` wrappers."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn


def site_shape(site) -> tuple:
    """A sample site's value shape: ``sample_shape`` (NumPyro's keyword) + the
    distribution's batch and event shape."""
    sample_shape = (site.get("kwargs") or {}).get("sample_shape") or ()
    return tuple(sample_shape) + tuple(site["fn"].shape())


def is_reparameterized(fn: dist.Distribution) -> bool:
    return bool(getattr(fn, "has_rsample", False))


def site_log_density(site):
    """Unscaled log density of one traced sample site, per batch element.

    A transformed site that kept its intermediates (NumPyro records them when it samples)
    is scored from them, never by inverting the value: flows that only define the forward
    map (e.g. ``AutoBNAFNormal``) work.
    """
    if site.get("intermediates"):
        return site["fn"].log_prob(site["value"], site["intermediates"])
    return log_prob(site["fn"], site["value"])


def _categorical_log_prob(fn, value):
    """NumPyro's Categorical ``log_prob`` (the same gather of the same normalized logits)
    without first broadcasting the logits to the value's batch shape: an enumerated
    transition's value has the states on a dim of their own, and NumPyro's copy of the
    logits along it costs O(S) per entry (O(T S^3) for a chain of T steps)."""
    log_pmf, batch_shape = _aligned_log_pmf(fn, value)
    ndim = len(batch_shape)
    index = jnp.reshape(value, (1,) * (ndim - jnp.ndim(value)) + jnp.shape(value))
    lp = jnp.take_along_axis(log_pmf, index[..., None], axis=-1)[..., 0]
    lp = jnp.broadcast_to(lp, batch_shape)
    if fn._validate_args:  # as NumPyro's ``validate_sample``
        lp = jnp.where(fn._validate_sample(value), lp, -jnp.inf)
    return lp


def _aligned_log_pmf(fn, value):
    """A Categorical's normalized log pmf, with size-1 batch dims prepended up to the
    batch shape it shares with ``value`` (returned too), not broadcast to it."""
    if isinstance(fn, dist.CategoricalProbs):
        log_pmf = fn.logits  # NumPyro's log of the probabilities
    else:
        log_pmf = fn.logits - jax.nn.logsumexp(fn.logits, axis=-1, keepdims=True)
    batch_shape = jax.lax.broadcast_shapes(jnp.shape(value), tuple(fn.batch_shape))
    pad = (1,) * (len(batch_shape) + 1 - jnp.ndim(log_pmf))
    return jnp.reshape(log_pmf, pad + jnp.shape(log_pmf)), batch_shape


def support_log_prob(fn: dist.Distribution, value, dim: int, masked=0.0):
    """``log_prob(fn, value)`` where ``value`` is ``fn``'s enumerated support on batch dim
    ``dim`` (``arange(S)`` there, size 1 elsewhere: the value NumPyro's ``enum`` gives a
    site), with ``masked`` in place of the log density of the elements a ``mask`` hides.
    For a Categorical the states already lie on the event axis, so the result is that
    axis moved to ``dim``: no gather, and no scatter in its gradient (an O(T S^2) scatter
    for a chain of T steps); and it is not broadcast along the dims where only ``value``
    has size > 1 (the same support at every step of a chain: a homogeneous transition
    stays (S, S), not (T, S, S)), so its shape broadcasts with ``log_prob``'s without
    always equalling it. Other families: :func:`log_prob`."""
    if isinstance(fn, dist.ExpandedDistribution):
        lp = support_log_prob(fn.base_dist, value, dim, masked)
        return jnp.broadcast_to(lp, jax.lax.broadcast_shapes(tuple(fn.batch_shape), lp.shape))
    if isinstance(fn, dist.MaskedDistribution):
        lp = support_log_prob(fn.base_dist, value, dim, masked)  # the support is feasible
        if fn._mask is True:
            return lp
        return jnp.where(fn._mask, lp, jnp.asarray(masked, jnp.result_type(lp)))
    if not isinstance(fn, (dist.CategoricalProbs, dist.CategoricalLogits)):
        return log_prob(fn, value)
    log_pmf, batch_shape = _aligned_log_pmf(fn, value)
    ndim = len(batch_shape)
    states = log_pmf.shape[-1]
    if not (-ndim <= dim < 0) or log_pmf.shape[dim - 1] != 1 or batch_shape[dim] != states:
        return log_prob(fn, value)  # parameters that vary along the site's own dim
    return jnp.swapaxes(log_pmf, dim - 1, -1)[..., 0]


def log_prob(fn: dist.Distribution, value):
    """``fn.log_prob(value)`` with correct gradients for logits-parameterized families."""
    if isinstance(fn, dist.ExpandedDistribution):
        lp = log_prob(fn.base_dist, value)
        shape = jax.lax.broadcast_shapes(
            tuple(fn.batch_shape), jnp.shape(value)[: jnp.ndim(value) - fn.event_dim]
        )
        return jnp.broadcast_to(lp, shape)
    if isinstance(fn, dist.Independent):
        return sum_rightmost(log_prob(fn.base_dist, value), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.MaskedDistribution):
        mask = fn._mask
        if mask is False:
            return jnp.zeros(jnp.shape(fn.base_dist.log_prob(value)))
        if mask is True:
            return log_prob(fn.base_dist, value)
        safe = jnp.where(
            jnp.reshape(mask, jnp.shape(mask) + (1,) * fn.event_dim),
            value,
            fn.base_dist.support.feasible_like(value),
        )
        return jnp.where(mask, log_prob(fn.base_dist, safe), 0.0)
    if isinstance(fn, dist.BernoulliLogits):
        return _y_logits(value, fn.logits, 1.0)
    if isinstance(fn, (dist.CategoricalProbs, dist.CategoricalLogits)):
        return _categorical_log_prob(fn, value)
    if isinstance(fn, dist.BinomialLogits):
        n = fn.total_count
        log_comb = gammaln(n + 1) - gammaln(value + 1) - gammaln(n - value + 1)
        return log_comb + _y_logits(value, fn.logits, n)
    return fn.log_prob(value)


@jax.custom_jvp
def _y_logits(y, logits, n):
    """y l - n softplus(l), as (n - y)(-l) - n softplus(-l) where l > 0 and with 0 * l = 0:
    exact at l = +-inf (log probability -inf or 0, never NaN from 0 * inf or inf - inf).
    Derivative in l (y and n are constants): y - n sigmoid(l), exact at 0."""
    return _y_logits_and_slope(y, logits, n)[0]


def _y_logits_and_slope(y, logits, n):
    e = jnp.exp(-jnp.abs(logits))  # shared by softplus(-|l|) and sigmoid(l)
    flip = logits > 0
    a = jnp.where(flip, -logits, logits)  # -|l|
    count = jnp.where(flip, n - y, y)
    value = jnp.where(count == 0, 0.0, count * a) - n * jnp.log1p(e)
    sigmoid = jnp.where(logits >= 0, 1.0, e) / (1.0 + e)
    return value, y - n * sigmoid


@_y_logits.defjvp
def _y_logits_jvp(primals, tangents):
    value, slope = _y_logits_and_slope(*primals)
    return value, slope * tangents[1]


def num_elements(fn: dist.Distribution, value) -> int:
    """Number of conditionally independent scalar choices in a site's value."""
    base = base_distribution(fn)
    return int(max(1, jnp.size(value) // max(1, _event_size(base))))


def _event_size(fn: dist.Distribution) -> int:
    size = 1
    for d in fn.event_shape:
        size *= d
    return size
