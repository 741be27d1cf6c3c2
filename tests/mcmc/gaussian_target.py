"""A correlated 2-d Gaussian target N(M, S) with exact draws and exact first/second moments,
shared by the statistical kernel checks."""

import jax
import jax.numpy as jnp
import numpy as np

M = jnp.array([1.0, -2.0])
S = jnp.array([[1.0, 0.6], [0.6, 2.0]])
L = jnp.linalg.cholesky(S)
S_INV = jnp.linalg.inv(S)
EXACT = np.concatenate([M, M**2 + jnp.diag(S)])  # E[x], E[x²]


def logp(x):
    """Unnormalized log N(x; M, S)."""
    d = x - M
    return -0.5 * d @ S_INV @ d


def sample(key, n):
    """n exact draws, shape (n, 2)."""
    return M + jax.random.normal(key, (n, 2)) @ L.T
