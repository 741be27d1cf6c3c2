"""A coin with an unknown bias class: the smallest model with a discrete latent.

z ~ Bernoulli(0.5); x_i | z ~ Bernoulli(0.2 + 0.6 z) for the four flips in ``DATA``.
Exact: p(x, z=1) = 0.8^3 0.2 / 2, p(x, z=0) = 0.2^3 0.8 / 2, posterior p(z=1 | x) = 16/17.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

DATA = jnp.array([1.0, 1.0, 0.0, 1.0])
JOINT_Z1 = 0.8**3 * 0.2 * 0.5
JOINT_Z0 = 0.2**3 * 0.8 * 0.5
POSTERIOR_Z1 = JOINT_Z1 / (JOINT_Z1 + JOINT_Z0)


def model(data):
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    with numpyro.plate("d", data.shape[0]):
        numpyro.sample("x", dist.Bernoulli(0.2 + 0.6 * z), obs=data)
