"""Sequential inference: each posterior becomes the next prior."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from .gmm import GMM
from .network import DistributionTransformer


def filter(  # noqa: A001 - the name the issue asks for; shadows the builtin only in this module
    dt: DistributionTransformer,
    prior,
    data_stream,
    mask=None,
    transition: Callable[[GMM], GMM] | None = None,
) -> GMM:
    """q_t = dt(T(q_{t-1}), z_t) for t = 1..T, q_0 = prior; returns the stacked posteriors.

    ``data_stream`` has shape (T, N, obs_dim) (or (T, N) when obs_dim is 1), ``mask``
    (T, N) marks valid observations. ``transition`` (e.g. :func:`linear_gaussian`) maps a
    posterior to the next step's prior for a moving latent; without it the latent is
    static. Runs as one ``lax.scan``; the result's batch shape is (T,).
    """
    if not isinstance(prior, GMM):
        prior = dt.encode_prior(prior)
    data_stream = jnp.asarray(data_stream)
    if data_stream.ndim == 2 and dt.obs_dim == 1:
        data_stream = data_stream[..., None]
    if data_stream.ndim != 3 or data_stream.shape[-1] != dt.obs_dim:
        raise ValueError(
            f"filter: data_stream must have shape (T, N, obs_dim={dt.obs_dim}), got "
            f"{data_stream.shape}"
        )
    if mask is None:
        mask = jnp.ones(data_stream.shape[:2], bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != data_stream.shape[:2]:
        raise ValueError(f"filter: mask has shape {mask.shape}, expected {data_stream.shape[:2]}")
    step_prior = (lambda q: q) if transition is None else transition

    def step(q, inputs):
        z, m = inputs
        post = dt(step_prior(q), z, m)
        return post, post

    _, posts = lax.scan(step, prior, (data_stream, mask))
    return posts


def linear_gaussian(A, Q_tril) -> Callable[[GMM], GMM]:
    """Exact GMM prediction through x' = A x + ε, ε ~ N(0, Q): μ_k ↦ A μ_k, Σ_k ↦ A Σ_k Aᵀ + Q."""
    A, Q_tril = jnp.atleast_2d(jnp.asarray(A)), jnp.atleast_2d(jnp.asarray(Q_tril))
    Q = Q_tril @ Q_tril.T

    def predict(q: GMM) -> GMM:
        cov = A @ q.scale_tril @ jnp.swapaxes(A @ q.scale_tril, -1, -2) + Q
        means = jnp.einsum("ij,...j->...i", A, q.means)
        return GMM(q.log_weights, means, jnp.linalg.cholesky(cov), validate=False)

    return predict
