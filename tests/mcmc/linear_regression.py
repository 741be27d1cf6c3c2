"""A Normal–Normal linear regression shared by the Geweke and SBC checks:
theta ~ N(0, I₂), y_j ~ N(theta₁ + theta₂·x_j, noise²), with exact joint draws."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearRegression(NamedTuple):
    x: jax.Array
    logjoint: object  # (theta, y, noise=1.0) -> log p(theta, y), unnormalized
    sample_data: object  # (key, theta) -> y
    sample_joint: object  # (key, n) -> (theta (n, 2), y (n, len(x)))


def linear_regression(x) -> LinearRegression:
    def logjoint(theta, y, noise=1.0):
        mean = theta[0] + theta[1] * x
        return -0.5 * jnp.sum(theta**2) - 0.5 * jnp.sum(((y - mean) / noise) ** 2)

    def sample_data(key, theta):
        return theta[0] + theta[1] * x + jax.random.normal(key, x.shape)

    def sample_joint(key, n):
        k1, k2 = jax.random.split(key)
        theta = jax.random.normal(k1, (n, 2))
        return theta, jax.vmap(sample_data)(jax.random.split(k2, n), theta)

    return LinearRegression(x, logjoint, sample_data, sample_joint)
