"""Gaussian mixtures as pytrees and as token sets; constrained variables through bijections."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ExpTransform, SigmoidTransform, Transform, biject_to

_NORM_TOL = 1e-4


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _tril_indices(d: int):
    return np.tril_indices(d, -1)


def token_size(dim: int) -> int:
    """Length of one component token for a ``dim``-dimensional GMM: 1 + dim + dim(dim+1)/2."""
    return 1 + dim + dim * (dim + 1) // 2


class GMM(eqx.Module):
    """q(x) = Σ_k w_k N(x; μ_k, L_k L_kᵀ), with batch dims in front of the component axis.

    ``log_weights`` (..., K) normalized (logsumexp 0), ``means`` (..., K, D),
    ``scale_tril`` (..., K, D, D) lower-triangular with a positive diagonal. Shapes are
    always checked; values are checked when concrete (not under ``jit``/``vmap``), raising
    ``ValueError`` naming the problem. Use :meth:`from_logits` for unnormalized weights.
    """

    log_weights: jax.Array
    means: jax.Array
    scale_tril: jax.Array

    def __init__(self, log_weights, means, scale_tril, *, validate: bool = True):
        log_weights, means, scale_tril = (
            jnp.asarray(log_weights),
            jnp.asarray(means),
            jnp.asarray(scale_tril),
        )
        if validate:
            _check(log_weights, means, scale_tril)
        self.log_weights, self.means, self.scale_tril = log_weights, means, scale_tril

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_logits(cls, logits, means, scale_tril, *, validate: bool = True) -> GMM:
        """A GMM whose weights are softmax(logits): w_k = exp(l_k) / Σ_j exp(l_j)."""
        logits = jnp.asarray(logits)
        if validate and _concrete(logits) and not bool(jnp.all(jnp.isfinite(logits))):
            raise ValueError(f"GMM: logits contain NaN or inf: {logits}")
        return cls(jax.nn.log_softmax(logits, -1), means, scale_tril, validate=validate)

    @classmethod
    def from_distribution(cls, d: dist.Distribution) -> GMM:
        """The GMM of a ``MixtureSameFamily`` of ``MultivariateNormal`` (or of one MVN)."""
        if isinstance(d, dist.MultivariateNormal):
            return cls(
                jnp.zeros(d.batch_shape + (1,)), d.loc[..., None, :], d.scale_tril[..., None, :, :]
            )
        if isinstance(d, dist.MixtureSameFamily):
            comp = d.component_distribution
            if not isinstance(comp, dist.MultivariateNormal):
                raise TypeError(
                    "GMM.from_distribution: the mixture's components must be MultivariateNormal, "
                    f"got {type(comp).__name__}"
                )
            mix = d.mixing_distribution
            if not isinstance(mix, dist.CategoricalLogits | dist.CategoricalProbs):
                raise TypeError(
                    "GMM.from_distribution: mixing distribution must be Categorical, got "
                    f"{type(mix).__name__}"
                )
            logits = mix.logits if isinstance(mix, dist.CategoricalLogits) else jnp.log(mix.probs)
            loc = jnp.broadcast_to(comp.loc, comp.batch_shape + comp.event_shape)
            tril = jnp.broadcast_to(comp.scale_tril, comp.batch_shape + comp.event_shape * 2)
            return cls.from_logits(logits, loc, tril)
        raise TypeError(
            "GMM.from_distribution expects MixtureSameFamily(Categorical, MultivariateNormal) or "
            f"MultivariateNormal, got {type(d).__name__}"
        )

    @classmethod
    def from_tokens(cls, tokens, dim: int, *, jitter: float = 0.0) -> GMM:
        """Inverse of :meth:`tokens`: weights by softmax, diag(L) = exp(log diag) + jitter."""
        tokens = jnp.asarray(tokens)
        if tokens.shape[-1] != token_size(dim):
            raise ValueError(
                f"GMM.from_tokens: tokens have length {tokens.shape[-1]}, a {dim}-d GMM needs "
                f"{token_size(dim)} (1 weight + {dim} mean + {dim * (dim + 1) // 2} Cholesky)"
            )
        logits, means = tokens[..., 0], tokens[..., 1 : 1 + dim]
        log_diag = tokens[..., 1 + dim : 1 + 2 * dim]
        rows, cols = _tril_indices(dim)
        tril = jnp.zeros(tokens.shape[:-1] + (dim, dim), tokens.dtype)
        tril = tril.at[..., rows, cols].set(tokens[..., 1 + 2 * dim :])
        idx = np.arange(dim)
        tril = tril.at[..., idx, idx].set(jnp.exp(log_diag) + jitter)
        return cls(jax.nn.log_softmax(logits, -1), means, tril, validate=False)

    # -- views --------------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        """K, the number of mixture components."""
        return self.means.shape[-2]

    @property
    def dim(self) -> int:
        """D, the dimension of the variable."""
        return self.means.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch dimensions (in front of the component axis)."""
        return self.means.shape[:-2]

    def tokens(self) -> jax.Array:
        """(..., K, 1 + D + D(D+1)/2): per component [log w_k, μ_k, log diag L_k, lower L_k]."""
        d = self.dim
        rows, cols = _tril_indices(d)
        idx = np.arange(d)
        log_diag = jnp.log(self.scale_tril[..., idx, idx])
        lower = self.scale_tril[..., rows, cols]
        return jnp.concatenate([self.log_weights[..., None], self.means, log_diag, lower], -1)

    def to_distribution(self, scalar: bool = False) -> dist.MixtureSameFamily:
        """``MixtureSameFamily(Categorical(log w), MultivariateNormal(μ, scale_tril=L))``.

        ``scalar=True`` (D = 1 only): a mixture of ``Normal`` with event shape () instead.
        """
        if scalar:
            if self.dim != 1:
                raise ValueError(f"scalar=True needs a 1-d GMM, this one has D={self.dim}")
            return dist.MixtureSameFamily(
                dist.Categorical(logits=self.log_weights),
                dist.Normal(self.means[..., 0], self.scale_tril[..., 0, 0]),
            )
        return dist.MixtureSameFamily(
            dist.Categorical(logits=self.log_weights),
            dist.MultivariateNormal(self.means, scale_tril=self.scale_tril),
        )

    def log_prob(self, x) -> jax.Array:
        """log q(x) = logsumexp_k [log w_k + log N(x; μ_k, L_k L_kᵀ)]; x has shape (..., D)."""
        comp = dist.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return jax.nn.logsumexp(self.log_weights + comp.log_prob(jnp.asarray(x)[..., None, :]), -1)

    def sample(self, key, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Draws of shape sample_shape + batch_shape + (D,)."""
        return self.to_distribution().sample(key, sample_shape)

    def mean(self) -> jax.Array:
        """E[x] = Σ_k w_k μ_k."""
        return jnp.sum(jnp.exp(self.log_weights)[..., None] * self.means, -2)

    def covariance(self) -> jax.Array:
        """Cov[x] = Σ_k w_k (L_k L_kᵀ + μ_k μ_kᵀ) − E[x] E[x]ᵀ."""
        w = jnp.exp(self.log_weights)[..., None, None]
        second = self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)
        second = second + self.means[..., :, None] * self.means[..., None, :]
        m = self.mean()
        return jnp.sum(w * second, -3) - m[..., :, None] * m[..., None, :]

    def marginal(self, dims) -> GMM:
        """The GMM of the coordinates ``dims`` (an int or a sequence of ints), x_dims.

        A Gaussian mixture's marginal is the mixture of the component marginals: same
        weights, means μ_k[dims], covariances Σ_k[dims, dims] (re-factored by Cholesky).
        """
        idx = np.atleast_1d(np.asarray(dims))
        cov = self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)
        sub = cov[..., idx[:, None], idx[None, :]]
        return GMM(self.log_weights, self.means[..., idx], jnp.linalg.cholesky(sub), validate=False)

    def guide(self, site: str, transform=None, scalar: bool | None = None):
        """A NumPyro guide sampling ``site`` from this GMM (through ``transform`` if given).

        ``scalar`` (default: D = 1) gives the site event shape () instead of (D,).
        """
        scalar = self.dim == 1 if scalar is None else scalar
        d = (
            self.to_distribution(scalar)
            if transform is None
            else constrained(self, transform, scalar=scalar)
        )

        def gmm_guide(*args, **kwargs):
            return numpyro.sample(site, d)

        return gmm_guide


def _check(log_weights, means, scale_tril) -> None:
    if means.ndim < 2:
        raise ValueError(f"GMM: means must have shape (..., K, D), got {means.shape}")
    *batch, k, d = means.shape
    if log_weights.shape != (*batch, k):
        raise ValueError(
            f"GMM: log_weights has shape {log_weights.shape}, expected {(*batch, k)} to match "
            f"means {means.shape} (K={k} components)"
        )
    if scale_tril.shape != (*batch, k, d, d):
        raise ValueError(
            f"GMM: scale_tril has shape {scale_tril.shape}, expected {(*batch, k, d, d)} to match "
            f"means {means.shape} (D={d})"
        )
    if not all(_concrete(a) for a in (log_weights, means, scale_tril)):
        return
    if not bool(jnp.all(~jnp.isnan(log_weights))):
        raise ValueError(f"GMM: log_weights contain NaN: {log_weights}")
    total = jax.nn.logsumexp(log_weights, -1)
    if not bool(jnp.all(jnp.abs(total) < _NORM_TOL)):
        w = jnp.exp(total)
        raise ValueError(
            f"GMM: weights are not normalized (sum of exp(log_weights) = {w}); "
            "use GMM.from_logits to normalize"
        )
    if not bool(jnp.all(jnp.isfinite(means))):
        raise ValueError(f"GMM: means contain NaN or inf: {means}")
    if not bool(jnp.all(jnp.isfinite(scale_tril))):
        raise ValueError("GMM: scale_tril contains NaN or inf")
    upper = jnp.triu(scale_tril, 1)
    if bool(jnp.any(upper != 0)):
        raise ValueError(
            "GMM: scale_tril is not lower-triangular (nonzero entries above the diagonal, max "
            f"|entry| {float(jnp.max(jnp.abs(upper)))})"
        )
    diag = jnp.diagonal(scale_tril, axis1=-2, axis2=-1)
    if not bool(jnp.all(diag > 0)):
        raise ValueError(
            "GMM: scale_tril must have a positive diagonal; smallest diagonal entry "
            f"{float(diag.min())}"
        )


_NAMED = {"log": ExpTransform, "logit": SigmoidTransform}


def as_transform(transform) -> Transform:
    """A numpyro Transform from unconstrained ℝᴰ to the variable's space.

    Accepts a Transform, a constraint (``biject_to(constraint)``), or ``"log"`` (x = exp z,
    positive variables) / ``"logit"`` (x = sigmoid z, variables in (0, 1)).
    """
    if isinstance(transform, Transform):
        return transform
    if isinstance(transform, str):
        if transform not in _NAMED:
            raise ValueError(f"unknown transform {transform!r}; expected one of {sorted(_NAMED)}")
        return _NAMED[transform]()
    if isinstance(transform, constraints.Constraint):
        return biject_to(transform)
    raise TypeError(
        f"transform must be a numpyro Transform, a constraint, 'log' or 'logit'; got {transform!r}"
    )


def constrained(gmm: GMM, transform, scalar: bool = False) -> dist.TransformedDistribution:
    """p(x) = q(T⁻¹x) |det ∂T⁻¹/∂x|: the GMM on ℝᴰ pushed through the bijection T.

    ``transform`` as in :func:`as_transform` (e.g. ``"log"`` for a positive variable whose
    log is modelled by the GMM); ``scalar=True`` for a 1-d GMM on a scalar variable.
    """
    return dist.TransformedDistribution(gmm.to_distribution(scalar), as_transform(transform))
