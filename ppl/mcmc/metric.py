"""Euclidean metrics for ppl's leapfrog kernels (:func:`~ppl.mcmc.hmc`, :func:`~ppl.mcmc.nuts`):
the kinetic energy K(p) = ½ pᵀM⁻¹p over the flattened position, with momentum p ~ N(0, M).

The inverse mass matrix M⁻¹ is given as

- a scalar or a ``(d,)`` diagonal;
- a dense ``(d, d)`` matrix, in BlackJAX's conventions (``metrics.gaussian_euclidean``):
  with the lower Cholesky factor M⁻¹ = L Lᵀ the momentum is p = L⁻ᵀ ε, ε ~ N(0, I)
  (so Cov p = (L Lᵀ)⁻¹ = M), the velocity is M⁻¹p and K(p) = ½ (M⁻¹p)·p;
- NumPyro's structured form (``dense_mass=[("x", "y"), ...]``): a dict from tuples of site
  names to a dense or diagonal block, each block over the concatenation of its sites
  (in the tuple's order, each site flattened) of a dict position; the blocks must cover
  every site once. M⁻¹ is block diagonal after that permutation.

The flattened position is ``jax.flatten_util.ravel_pytree``'s (a dict's sites by sorted
name), as NumPyro and BlackJAX flatten it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
from jax.flatten_util import ravel_pytree


class Metric(NamedTuple):
    """A Gaussian Euclidean metric over flat arrays of size d: ``momentum(ε)`` maps a
    standard normal ε to p ~ N(0, M), ``velocity(p)`` = M⁻¹p, ``kinetic(p)`` = ½ pᵀM⁻¹p."""

    momentum: Callable[[jax.Array], jax.Array]
    velocity: Callable[[jax.Array], jax.Array]
    kinetic: Callable[[jax.Array], jax.Array]


def is_diagonal(inverse_mass_matrix: Any) -> bool:
    """Whether ``inverse_mass_matrix`` is a scalar or a diagonal (not dense, not structured)."""
    return not isinstance(inverse_mass_matrix, dict) and jnp.ndim(inverse_mass_matrix) < 2


def _matvec(a, b):
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)  # BlackJAX's ``linear_map``


def _array_metric(imm: jax.Array, size: int, dtype) -> Metric:
    imm = jnp.asarray(imm, dtype)
    if imm.ndim < 2:
        imm = jnp.broadcast_to(imm, (size,))
        return Metric(
            lambda eps: eps * (1 / jnp.sqrt(imm)),
            lambda p: imm * p,
            lambda p: 0.5 * jnp.dot(imm * p, p),
        )
    if imm.shape != (size, size):
        raise ValueError(
            f"a dense inverse mass matrix over {size} unconstrained coordinates must have"
            f" shape ({size}, {size}), got {imm.shape}"
        )
    # BlackJAX's ``_format_covariance(imm, is_inv=True)``: M^{1/2} = L⁻ᵀ, M⁻¹ = L Lᵀ
    tril = jsp.linalg.cholesky(imm, lower=True)
    mass_sqrt = jsp.linalg.solve_triangular(tril, jnp.identity(size, dtype), lower=True, trans=True)

    def velocity(p):
        return _matvec(imm, p)

    return Metric(
        lambda eps: _matvec(mass_sqrt, eps),
        velocity,
        lambda p: 0.5 * jnp.dot(velocity(p), p),
    )


def check_blocks(blocks, names) -> None:
    """A ``ValueError`` unless ``blocks`` (tuples of site names: NumPyro's ``dense_mass``
    list, or the keys of a structured inverse mass matrix) are tuples of names among
    ``names`` (the latent sites), none in two blocks. A site in no block is allowed here:
    NumPyro's adapter puts the sites ``dense_mass`` leaves out into one diagonal block."""
    names = set(names)
    seen: list[str] = []
    for key in blocks:
        if not isinstance(key, tuple) or not all(isinstance(k, str) for k in key):
            raise ValueError(
                f"structured mass matrix: blocks are tuples of site names, got {key!r}"
            )
        unknown = [k for k in key if k not in names]
        if unknown:
            raise ValueError(
                f"structured mass matrix: block {key} names sites {unknown} that are not"
                f" latent sites of the model (its latent sites: {sorted(names)})"
            )
        seen.extend(key)
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise ValueError(f"structured mass matrix: sites {twice} are in more than one block")


def structured_indices(blocks, position: dict) -> list[np.ndarray]:
    """For each key (a tuple of site names) of ``blocks``, the indices of its coordinates in
    the flattened ``position``, in the block's order; a ``ValueError`` unless the blocks
    name every site of ``position`` exactly once."""
    if not isinstance(position, dict):
        raise ValueError(
            "a structured inverse mass matrix (a dict keyed by tuples of site names, NumPyro's"
            f" dense_mass=[...]) needs a dict position, got {type(position).__name__}"
        )
    names = sorted(position)
    check_blocks(blocks, names)
    missing = sorted(set(names) - {k for key in blocks for k in key})
    if missing:
        raise ValueError(f"structured mass matrix: sites {missing} are in no block")
    sizes = [int(jnp.size(position[k])) for k in names]
    offsets = dict(zip(names, np.cumsum([0] + sizes[:-1]), strict=True))
    sizes = dict(zip(names, sizes, strict=True))
    return [
        np.concatenate([np.arange(offsets[k], offsets[k] + sizes[k]) for k in key]).astype(np.int32)
        for key in blocks
    ]


def _structured_metric(blocks: dict, position: dict, dtype) -> Metric:
    indices = structured_indices(blocks, position)
    perm = np.concatenate(indices)
    inverse = np.argsort(perm)
    bounds = np.cumsum([0] + [len(i) for i in indices])
    parts = [
        _array_metric(blocks[key], len(idx), dtype)
        for key, idx in zip(blocks, indices, strict=True)
    ]

    def blockwise(fn_name):
        def apply(v):
            v = v[perm]
            out = [
                getattr(m, fn_name)(v[a:b])
                for m, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True)
            ]
            return jnp.concatenate(out)[inverse]

        return apply

    velocity = blockwise("velocity")
    return Metric(blockwise("momentum"), velocity, lambda p: 0.5 * jnp.dot(velocity(p), p))


def euclidean(inverse_mass_matrix: Any, position: Any) -> Metric:
    """The :class:`Metric` of ``inverse_mass_matrix`` (scalar, diagonal, dense, or NumPyro's
    structured dict) over the flattened ``position`` (a pytree; its values are not used).

    Example::

        metric = euclidean(jnp.array([[2.0, 0.9], [0.9, 1.0]]), jnp.zeros(2))
        p = metric.momentum(jax.random.normal(key, (2,)))  # p ~ N(0, M)
    """
    flat, _ = ravel_pytree(position)
    if isinstance(inverse_mass_matrix, dict):
        return _structured_metric(inverse_mass_matrix, position, flat.dtype)
    if jnp.ndim(inverse_mass_matrix) > 2:
        raise ValueError(
            "the inverse mass matrix must be a scalar, a diagonal (d,) or a dense (d, d)"
            f" matrix, got shape {jnp.shape(inverse_mass_matrix)}"
        )
    return _array_metric(inverse_mass_matrix, flat.size, flat.dtype)


def check_inverse_mass_matrix(inverse_mass_matrix: Any, who: str) -> None:
    """A user's dense (or structured) ``inverse_mass_matrix`` must be symmetric positive
    definite: its Cholesky factor would be NaN otherwise, and every momentum with it (every
    trajectory would diverge). Checked only on concrete values (not under a trace)."""
    if inverse_mass_matrix is None or is_diagonal(inverse_mass_matrix):
        return
    blocks = (
        inverse_mass_matrix if isinstance(inverse_mass_matrix, dict) else {"": inverse_mass_matrix}
    )
    for key, block in blocks.items():
        if isinstance(block, jax.core.Tracer) or np.ndim(block) < 2:
            continue
        a = np.asarray(block, np.float64)
        name = f" (block {key})" if key else ""
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"{who}: inverse_mass_matrix{name} must be square, got {a.shape}")
        if not np.allclose(a, a.T, rtol=1e-5, atol=1e-8 * np.abs(a).max()):
            raise ValueError(f"{who}: inverse_mass_matrix{name} is not symmetric")
        try:
            np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            raise ValueError(f"{who}: inverse_mass_matrix{name} is not positive definite") from None
